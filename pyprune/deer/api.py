"""``Deer``: a DEER model with its tokenizer and pruning controller, ready to generate, save and load."""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import fields
from typing import Optional, Sequence

import torch

from .._validation import fail
from ..io import atomic_torch_save
from ..pruning import DEFAULT_KEEP, BlockMovementPruning
from .generate import generate_ids
from .model import DeerConfig, DeerModel, inference_copy, special_ids

FORMAT = "pyprune-deer-1"
CHECKPOINT = "checkpoint.pt"


class Deer:
    """DEER model + tokenizer + (optional) dynamic block pruning.

    ``generate(sources, max_iter, adaptive, keep, batch_size)`` decodes
    strings; ``keep`` selects one of the trained sub-networks, compacted (FFN
    neurons and dead heads removed, block-sparse attention projections) so
    that a smaller keep ratio is also faster.

    ``blank_penalty`` maps each keep ratio to the CTC blank penalty its
    drafts are decoded with: training tracks, as a moving average, the
    penalty that makes the drafts of each batch as long as its references
    (``observe_length_penalty``); a keep ratio not trained yet has 0.
    ``edit_penalty`` maps each keep ratio to its editor's (deletion,
    insertion) penalties, chosen on validation sentences after training
    (``pyprune.deer.calibrate``); (0, 0) until then.
    """

    # Weight of the running blank penalty against each new batch's (an average over about ten batches).
    PENALTY_DECAY = 0.9

    def __init__(self, model: DeerModel, tokenizer, pruning: Optional[BlockMovementPruning] = None) -> None:
        self.model, self.tokenizer, self.pruning = model, tokenizer, pruning
        self.blank_penalty: dict[float, float] = {}
        self.edit_penalty: dict[float, tuple[float, float]] = {}
        self._subnetworks: dict = {}

    # ------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, path: str, vocab: Optional[Sequence[int]] = None, prune: bool = True,
                      keep_ratios: Sequence[float] = DEFAULT_KEEP, **config) -> "Deer":
        """A new DEER model on the pretrained encoder in local directory `path` (never a hub name)."""
        import transformers
        if not os.path.isdir(path):
            fail("path", "a local directory holding a BERT/RoBERTa/XLM-R model", repr(path))
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        encoder = transformers.AutoModel.from_pretrained(path, add_pooling_layer=False)
        return cls.from_encoder(encoder, tokenizer, vocab=vocab, prune=prune, keep_ratios=keep_ratios, **config)

    @classmethod
    def from_encoder(cls, encoder, tokenizer, vocab: Optional[Sequence[int]] = None, prune: bool = True,
                     keep_ratios: Sequence[float] = DEFAULT_KEEP, **config) -> "Deer":
        known = {f.name for f in fields(DeerConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            fail("config", f"DeerConfig fields {sorted(known)}", unknown)
        deer_config = DeerConfig(**{**special_ids(tokenizer), **config, "vocab": list(vocab or [])})
        model = DeerModel(encoder, deer_config)
        pruning = BlockMovementPruning(encoder, keep_ratios) if prune else None
        return cls(model, tokenizer, pruning)

    @property
    def keep_ratios(self) -> list[float]:
        return list(self.pruning.keep_ratios) if self.pruning is not None else [1.0]

    # ------------------------------------------------------------ draft length
    def penalty(self, keep: float = 1.0) -> float:
        """The blank penalty of keep ratio `keep` (0 before training has observed it)."""
        return self.blank_penalty.get(self._keep(keep), 0.0)

    def decoding(self, keep: float = 1.0, blank_penalty: Optional[float] = None,
                 deletion_penalty: Optional[float] = None, insertion_penalty: Optional[float] = None) -> dict:
        """``generate_ids``' penalty arguments for keep ratio `keep`: the trained ones, except those given."""
        keep = self._keep(keep)
        deletion, insertion = self.edit_penalty.get(keep, (0.0, 0.0))
        return {"blank_penalty": self.penalty(keep) if blank_penalty is None else blank_penalty,
                "deletion_penalty": deletion if deletion_penalty is None else deletion_penalty,
                "insertion_penalty": insertion if insertion_penalty is None else insertion_penalty}

    def observe_length_penalty(self, keep: float, penalty: float) -> None:
        """Fold one training batch's length-matching blank penalty into keep ratio `keep`'s running one."""
        keep = self._keep(keep)
        old = self.blank_penalty.get(keep)
        self.blank_penalty[keep] = penalty if old is None else \
            self.PENALTY_DECAY * old + (1 - self.PENALTY_DECAY) * penalty

    def _keep(self, keep: float) -> float:
        if self.pruning is None:
            if keep != 1.0:
                fail("keep", "1.0 (this model was trained without pruning)", keep)
            return 1.0
        return self.pruning.keep_ratio(keep)

    # ------------------------------------------------------------ sub-networks
    def clear_cache(self) -> None:
        """Forget compacted sub-networks (call after the weights or scores change)."""
        self._subnetworks = {}

    @torch.inference_mode(False)    # the cached copies outlive a caller's inference mode: ordinary tensors
    def sub_network(self, keep: float = 1.0, dtype: Optional[torch.dtype] = None, packed: bool = False) -> DeerModel:
        """The model at keep ratio `keep`, compacted, in eval mode (cached until ``clear_cache``); `dtype`: a
        copy in that floating-point type for inference (e.g. ``torch.bfloat16``; the model itself is not cast);
        `packed`: a copy whose linear layers run on the packed-blocks CPU kernel where it can
        (``inference_copy``: float32 or bfloat16 on the CPU), for decoding only."""
        keep = self._keep(keep)
        if packed:
            if (keep, dtype, "packed") not in self._subnetworks:
                self._subnetworks[keep, dtype, "packed"] = inference_copy(self.sub_network(keep, dtype))
            return self._subnetworks[keep, dtype, "packed"]
        if dtype is not None and dtype != self.model.output_bias.dtype:
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                fail("dtype", "a floating-point torch.dtype (e.g. torch.bfloat16)", dtype)
            if (keep, dtype) not in self._subnetworks:
                self._subnetworks[keep, dtype] = inference_copy(self.sub_network(keep), dtype, packed=False)
            return self._subnetworks[keep, dtype]
        if self.pruning is None:
            return self.model.eval()
        if keep not in self._subnetworks:
            with torch.no_grad():
                if keep == 1.0:
                    with self.pruning.detached() as encoder:
                        small = copy.deepcopy(encoder)
                else:
                    small = self.pruning.compact(keep)
                sub = DeerModel(small, self.model.config)
                heads = {k: v for k, v in self.model.state_dict().items() if not k.startswith("encoder.")}
                missing, unexpected = sub.load_state_dict(heads, strict=False)
                assert not unexpected and all(k.startswith("encoder.") for k in missing)
                sub.to(self.model.output_bias.device)
            self._subnetworks[keep] = sub.eval()
        return self._subnetworks[keep]

    # ------------------------------------------------------------ text in, text out
    def encode(self, texts: Sequence[str], name: str = "sources") -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            fail(name, "a list of strings", type(texts).__name__)
        if len(texts) == 0:
            return []
        return self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        if len(ids) == 0:
            return []
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    def generate(self, sources: Sequence[str], max_iter: int = 2, adaptive: bool = True, keep: float = 1.0,
                 batch_size: int = 32, blank_penalty: Optional[float] = None,
                 dtype: Optional[torch.dtype] = None, deletion_penalty: Optional[float] = None,
                 insertion_penalty: Optional[float] = None, packed: bool = True) -> list[str]:
        """Translate/generate for each source string: CTC draft, then up to `max_iter` edit iterations.
        `blank_penalty`, `deletion_penalty`, `insertion_penalty`: see ``generate_ids`` (None: the trained
        ones of `keep`, ``decoding``); `dtype`: compute in this floating-point type; `packed`: linear layers
        on the packed-blocks CPU kernel where it runs, else torch's (``sub_network``)."""
        ids = self.encode(sources)
        model = self.sub_network(keep, dtype, packed)
        return self.decode(generate_ids(model, ids, max_iter=max_iter, adaptive=adaptive, batch_size=batch_size,
                                        **self.decoding(keep, blank_penalty, deletion_penalty, insertion_penalty)))

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        encoder = self.model.encoder
        return {"format": FORMAT, "deer": self.model.config.to_dict(), "encoder_config": encoder.config.to_dict(),
                "keep_ratios": self.keep_ratios if self.pruning is not None else None,
                "model": self.model.state_dict(),
                "pruning": self.pruning.state_dict() if self.pruning is not None else None,
                "pruning_steps": self.pruning.steps if self.pruning is not None else 0,
                **self._penalty_state()}

    def _penalty_state(self) -> dict:
        return {"blank_penalty": dict(self.blank_penalty),
                "edit_penalty": {k: list(v) for k, v in self.edit_penalty.items()}}

    def save(self, path: str, extra: Optional[dict] = None) -> None:
        """Write `path`/checkpoint.pt atomically (and the tokenizer once, beside it)."""
        os.makedirs(path, exist_ok=True)
        tokenizer_dir = os.path.join(path, "tokenizer")
        if not os.path.isdir(tokenizer_dir):
            staging = tempfile.mkdtemp(dir=path, prefix=".tokenizer.tmp-")
            try:
                self.tokenizer.save_pretrained(staging)
                os.rename(staging, tokenizer_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        atomic_torch_save({**self.state(), **(extra or {})}, os.path.join(path, CHECKPOINT))

    def save_penalties(self, path: str) -> None:
        """Rewrite `path`/checkpoint.pt with this model's decoding penalties, the rest of it as it was."""
        file = os.path.join(path, CHECKPOINT)
        state = torch.load(file, map_location="cpu", weights_only=False)
        state.update(self._penalty_state())
        atomic_torch_save(state, file)

    @classmethod
    def load(cls, path: str, map_location: str = "cpu") -> tuple["Deer", dict]:
        """(model, the whole checkpoint dict) from a directory written by ``save``."""
        import transformers
        file = os.path.join(path, CHECKPOINT)
        if not os.path.isfile(file):
            fail("path", f"a DEER checkpoint directory (with {CHECKPOINT})", repr(path))
        state = torch.load(file, map_location=map_location, weights_only=False)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            fail("path", f"a checkpoint of format {FORMAT!r}",
                 repr(state.get("format")) if isinstance(state, dict) else type(state).__name__)
        config = dict(state["encoder_config"])
        encoder_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
        encoder = transformers.AutoModel.from_config(encoder_config, add_pooling_layer=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
        model = DeerModel(encoder, DeerConfig(**state["deer"]))
        pruning = None
        if state["keep_ratios"] is not None:
            pruning = BlockMovementPruning(encoder, state["keep_ratios"])
            pruning.load_state_dict(state["pruning"])
            pruning.steps = state["pruning_steps"]
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(f"path: checkpoint does not match its own configuration: {error}") from None
        deer = cls(model, tokenizer, pruning)
        deer.blank_penalty = {float(k): float(v) for k, v in state.get("blank_penalty", {}).items()}
        deer.edit_penalty = {float(k): (float(d), float(i)) for k, (d, i) in state.get("edit_penalty", {}).items()}
        return deer, state
