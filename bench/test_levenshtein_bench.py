"""Levenshtein labels, B=256, lengths 30-60, random deletions:
    pytest bench/test_levenshtein_bench.py --benchmark-only
"""
import pytest

from pyprune.benchmarks import levenshtein


@pytest.mark.parametrize("vocab", [30000, 50])
@pytest.mark.parametrize("provider", ["pyprune get_ins_targets + get_del_targets",
                                      "pyprune get_edit_targets (both, one pass)",
                                      "rapidfuzz Indel.editops, per pair"])
def test_labels(record, device, vocab, provider):
    x, y, xs, ys = levenshtein.make_pairs(256, 30, 60, vocab, device=device)
    calls = levenshtein.providers(x, y, xs, ys)
    if provider not in calls:
        pytest.skip("rapidfuzz not installed")
    record.extra_info.update(vocab=vocab, provider=provider, pairs=256)
    record.pedantic(calls[provider], warmup_rounds=2, rounds=11, iterations=1)
