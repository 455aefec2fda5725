"""DEER decoding at batch 1: each step pyprune changed, against its anchor, interleaved in one process.

At batch 1 on a CPU, a pass over MiniLM's 42 MB of fp32 layer weights
(larger than a 32 MB L3) is expected to cost mostly their read from memory,
not arithmetic; the first row measures what reading them once instead of
twice gives:

- CTC draft (source to CTC logits): the source, then the CTC slots (``encode_source`` +
  ``decode_target``: the encoder's weights read twice; the anchor) against
  both in one pass (``encode_with_target``).
- fill: an edit iteration's word prediction with vocabulary logits at every
  position (anchor) against at the placeholders only (``fill_words``).
- autoregressive baseline: greedy decoding gathering its output rows from
  the word embeddings at every step (anchor) against keeping them.
- on the CPU, whole decoding (DEER at keep 1 with two edit iterations, and
  the AR baseline) with every linear layer on torch's GEMM (anchor) against
  the packed-blocks kernel (``pack_for_inference``).

Model: a run directory (``--run``, as ``pyprune deer train`` writes it) or, by
default, the packaged MiniLM with untrained heads and a 3-layer baseline
(timing depends on shapes; an untrained baseline decodes up to its length
limit). Sentences: the first ``--sentences`` of the default corpus's test
split, one at a time. Each round times every variant once over all
sentences, the variants alternating; the table gives the median round.
"""
from __future__ import annotations

import torch

from .common import cli, environment, environment_line, interleaved_median_ms


def _models(run):
    import transformers
    from pyprune.deer.api import Deer
    from pyprune.deer.baseline import AutoregressiveBaseline
    from pyprune.deer.cli import _data_dir, _load_baseline
    from pyprune.data.parallel import read_split
    from pyprune.deer.train import target_vocabulary
    from pyprune.models import minilm_path
    if run:
        deer, _ = Deer.load(run)
        baseline = _load_baseline(run, deer)
        if baseline is None:
            raise SystemExit(f"--run: {run} has no baseline.pt (train with --baseline-steps)")
        return deer, baseline
    torch.manual_seed(0)
    path = minilm_path()
    pairs = read_split(_data_dir("default"), "train")
    vocab = target_vocabulary(transformers.AutoTokenizer.from_pretrained(path), [t for _, t in pairs])
    deer = Deer.from_backbone(path, vocab=vocab, prune=False, slots="copy")
    c = deer.model.config
    encoder = transformers.AutoModel.from_pretrained(path, add_pooling_layer=False)
    baseline = AutoregressiveBaseline(encoder, deer.model.restricted_vocab(), c.pad_id, c.bos_id, c.eos_id,
                                      layers=3, max_length=deer.model.max_positions)
    return deer, baseline.eval()


def run(device: str = "cpu", run_dir: str = "", sentences: int = 30, rounds: int = 7) -> dict:
    from pyprune.data.parallel import read_split
    from pyprune.deer.cli import _data_dir
    deer, baseline = _models(run_dir)
    pairs = read_split(_data_dir("default"), "test")[:sentences]
    rows = measure(deer, baseline, deer.encode([s for s, _ in pairs]), rounds, device)
    return {"environment": environment(device), "model": run_dir or "MiniLM-L6, untrained heads",
            "sentences": len(pairs), "rounds": rounds, "rows": rows}


def measure(deer, baseline, source_ids, rounds: int, device: str = "cpu") -> list[dict]:
    """The table's rows for `deer` (its keep-1 network) and `baseline` on token-id sources; raises
    AssertionError where a step's two variants give different results."""
    from pyprune.deer.generate import fill_words
    from pyprune.ops import apply_ins_words
    model = deer.sub_network(1.0).to(device)
    baseline = baseline.to(device)
    c = model.config
    sources = [torch.tensor([ids], device=device) for ids in source_ids]
    # Fill inputs: each source with every other content token a placeholder (what an edit iteration fills).
    holes = [s.clone() for s in sources]
    for h in holes:
        h[:, 1:-1:2] = c.mask_id

    def ctc_two_passes(s):
        lengths = s.ne(c.pad_id).sum(1)
        cache = model.encode_source(s)
        return cache, model.vocab_logits(model.decode_target(cache, model.ctc_slots(s, lengths)))

    def ctc_one_pass(s):
        lengths = s.ne(c.pad_id).sum(1)
        cache, h = model.encode_with_target(s, model.ctc_slots(s, lengths))
        return cache, model.vocab_logits(h)

    caches = [model.encode_source(s) for s in sources]

    def fill_everywhere(i):
        logits = model.vocab_logits(model.decode_target(caches[i], holes[i]))
        return apply_ins_words(holes[i], None, model.to_tokens(logits[..., 1:].argmax(-1) + 1), None, c.mask_id)[0]

    def fill_placeholders(i):
        return fill_words(model, caches[i], holes[i])

    kept_logits = baseline._logits

    def gathered_logits(h):
        baseline.__dict__.pop("_output_cache", None)       # the rows gathered afresh, as before they were kept
        return kept_logits(h)

    def ar(logits):
        def decode(s):
            baseline._logits = logits
            try:
                return baseline.generate_ids([s[0].tolist()], batch_size=1)
            finally:
                del baseline._logits
        return decode

    steps = [("CTC draft", "source and slots: two passes", ctc_two_passes, "one pass", ctc_one_pass, sources),
             ("fill", "logits at every position", fill_everywhere, "at the placeholders", fill_placeholders,
              range(len(sources))),
             ("autoregressive greedy", "output rows gathered per step", ar(gathered_logits), "kept", ar(kept_logits),
              sources)]
    if device == "cpu":                                  # the packed-blocks kernel runs on the CPU only
        steps += _packed_steps(deer, model, baseline, ar(kept_logits), sources)
    rows = []
    with torch.inference_mode():
        for name, anchor_name, anchor, ours_name, ours, inputs in steps:
            for a, b in zip(map(anchor, inputs), map(ours, inputs)):     # same results, and a warm-up
                a, b = (x[-1] if isinstance(x, tuple) else x for x in (a, b))
                if isinstance(a, list):
                    same = a == b
                elif a.is_floating_point():                 # CTC logits: the same sums in another order
                    same = torch.allclose(a, b, rtol=1e-4, atol=1e-4)
                else:
                    same = torch.equal(a, b)
                if not same:
                    raise AssertionError(f"{name}: the two variants disagree")
            passes = [lambda fn=fn: [fn(x) for x in inputs] for fn in (anchor, ours)]
            anchor_ms, ours_ms = (ms / len(sources) for ms in interleaved_median_ms(passes, device, rounds))
            rows.append({"step": name, "anchor": anchor_name, "anchor_ms": anchor_ms, "pyprune": ours_name,
                         "pyprune_ms": ours_ms, "speedup": anchor_ms / ours_ms})
    return rows


def _packed_steps(deer, model, baseline, ar_decode, sources) -> list:
    """Whole decoding with every linear layer on torch's GEMM (anchor) against the packed-blocks kernel
    (``pack_for_inference``), DEER at keep 1 with two edit iterations and the AR baseline alike."""
    from pyprune.deer.generate import generate_ids
    from pyprune.deer.model import inference_copy
    packed_model, packed_baseline = inference_copy(model), inference_copy(baseline)
    if packed_model.output_layer is None or packed_baseline.output_layer is None:
        return []                                        # the cpp extension is not built: nothing to compare
    penalties = deer.decoding(1.0)

    def deer_decode(m):
        return lambda s: generate_ids(m, [s[0].tolist()], max_iter=2, batch_size=1, **penalties)

    return [("DEER decoding (keep 1, 2 iterations)", "torch linear layers", deer_decode(model), "packed kernel",
             deer_decode(packed_model), sources),
            ("autoregressive decoding", "torch linear layers", ar_decode, "packed kernel",
             lambda s: packed_baseline.generate_ids([s[0].tolist()], batch_size=1), sources)]


def format_table(result: dict) -> str:
    env = result["environment"]
    lines = [f"{environment_line(env, backends=False)} | "
             f"{result['model']} | batch 1, ms per sentence over {result['sentences']} test sentences, "
             f"median of {result['rounds']} interleaved rounds", "",
             "| step | anchor | ms | pyprune | ms | speed-up |", "|---|---|---:|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['step']} | {r['anchor']} | {r['anchor_ms']:.1f} | {r['pyprune']} | "
                     f"{r['pyprune_ms']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    def arguments(parser):
        parser.add_argument("--run", default="", help="a DEER run directory (default: untrained MiniLM heads)")
        parser.add_argument("--sentences", type=int, default=30)
        parser.add_argument("--rounds", type=int, default=7)
    return cli("deer", __doc__, argv, run, format_table, arguments,
               lambda a: {"run_dir": a.run, "sentences": a.sentences, "rounds": a.rounds})
