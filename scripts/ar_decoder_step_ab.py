"""What running each decoding step of the AR baseline as one C++ call (``pyprune_C::decoder_step``) gives its
greedy decoding.

    python scripts/ar_decoder_step_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]
                                         [--batch-size 1]

Whole greedy decoding of the first test sentences by RUN_DIR's AR baseline on
the packed kernel (as ``pyprune deer evaluate`` decodes it), each step's
decoder blocks run as Python modules (packed linears, the attention kernel,
LayerNorms; the anchor) against one ``decoder_step`` call a step (the same ops
in C++, in the same order), interleaved in one process. Prints median ms per
sentence, the ratio, and how many outputs stay the same (all should: the
results are the same bits).
"""
from pyprune.deer.baseline import AutoregressiveBaseline
from _deer_ab import ar_baseline, interleaved, print_ab, setup

FUSED = AutoregressiveBaseline._fused_step


def use_fused(on: bool) -> None:
    AutoregressiveBaseline._fused_step = FUSED if on else (lambda *args: None)


def main() -> None:
    import torch
    args, deer, sources = setup(__doc__, lambda p: p.add_argument("--batch-size", type=int, default=1),
                                dtype_option=True)
    baseline = ar_baseline(args.run, deer, args.dtype)
    if baseline is None:
        raise SystemExit(f"{args.run} has no AR baseline")

    def decode(name, on):
        use_fused(on)
        try:
            return baseline.generate_ids(sources, batch_size=args.batch_size)
        finally:
            use_fused(True)

    with torch.inference_mode():
        for on in (True, False):
            decode("autoregressive", on)                                   # warm-up
        times, outputs = interleaved(decode, ["autoregressive"], (False, True), args.rounds, len(sources))
    print_ab(["autoregressive"], (False, True), times, outputs, ("Python blocks", "decoder_step"),
             dtype=args.dtype, batch=args.batch_size)


if __name__ == "__main__":
    main()
