"""Compacted (ratio 2) against original models, forward:
    pytest bench/test_pruning_bench.py --benchmark-only [--bench-device cuda]
"""
import pytest
import torch

from pyprune.benchmarks import pruning
from pyprune.pruning import compact, extract, importance, model_spec


@pytest.mark.parametrize("model_name", list(pruning.MODELS))
@pytest.mark.parametrize("variant", ["full", "compacted"])
def test_compacted_forward(record, device, model_name, variant):
    try:
        model = pruning.MODELS[model_name]().to(device)
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    if variant == "compacted":
        model = compact(model, extract(model_spec(model), importance.magnitude(model), pruning.RATIO))
    ids = torch.randint(0, model.config.vocab_size, (pruning.BATCH, pruning.TOKENS), device=device)
    record.extra_info.update(model=model_name, variant=variant)

    def forward():
        with torch.inference_mode():
            model(input_ids=ids)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    record.pedantic(forward, warmup_rounds=1, rounds=5, iterations=1)
