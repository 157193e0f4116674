"""Does the fast path change the samples? Measured on the embedded digits model, against the float32 eager path.

Two measurements, both written to BENCHMARKS.md (section `fast_path_quality`):

1. Agreement: the same x_T (seeded per sample) sampled at S = 50, eta = 0 by float32 eager and by each fast
   variant (channels_last, bf16 autocast, fp16 autocast, torch.compile): max and mean |difference| in [-1, 1]
   units, and the share of uint8 pixels that come out different. This is the tolerance docs/PERFORMANCE.md states.
2. Quality: the classifier Frechet distance (the digits classifier's features, not FID) and the confident share of
   `--n` samples for float32 and for bf16, each with two seeds. The fast path keeps quality when its distance from
   float32 (same seed) is within the float32 path's own seed-to-seed difference.

    python benchmarks/fast_path_quality.py                 # n = 1000, about 15 minutes on 2 CPU cores
    python benchmarks/fast_path_quality.py --n 200 --no-write
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ddim.benchmarking import machine, write_report
from ddim.generate import initial_noise, load_model, network, sample_generators
from ddim.images import to_uint8
from ddim.metrics.classifier import evaluate_digits, load_digits_classifier
from ddim.sampling import DDIMSampler

VARIANTS = {  # name: network() arguments
    "float32 channels_last": dict(dtype="float32", channels_last=True),
    "bfloat16 autocast": dict(dtype="bfloat16"),
    "bfloat16 + channels_last": dict(dtype="bfloat16", channels_last=True),
    "float16 autocast": dict(dtype="float16"),
    "float32 torch.compile": dict(dtype="float32", compile=True),
}


def sample(loaded, n: int, seed: int, steps: int, batch: int, **net) -> torch.Tensor:
    fn = network(loaded.model, **net)
    sampler = DDIMSampler(fn, loaded.schedule, loaded.prediction)
    shape = (loaded.config.in_channels, loaded.config.image_size, loaded.config.image_size)
    out = []
    for i in range(0, n, batch):
        x_T = initial_noise(shape, sample_generators(seed, range(i, min(n, i + batch))))
        out.append(sampler.sample(x_T, steps=steps, eta=0.0).clamp(-1, 1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="samples per quality run")
    ap.add_argument("--n-agree", type=int, default=64, help="samples for the agreement table")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps S")
    ap.add_argument("--batch", type=int, default=250, help="batch size")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()

    loaded = load_model()
    loaded.model.eval()
    t0 = time.perf_counter()
    ref = sample(loaded, args.n_agree, 0, args.steps, args.batch)
    rows = []
    for name, net in VARIANTS.items():
        try:
            x = sample(loaded, args.n_agree, 0, args.steps, args.batch, **net)
        except Exception as e:  # e.g. an op without an fp16 CPU kernel: report it, keep going
            rows.append(f"| {name} | failed: {type(e).__name__}: {str(e)[:80]} | | | |")
            continue
        d = (x - ref).abs()
        levels = (to_uint8(x).int() - to_uint8(ref).int()).abs()
        rows.append(f"| {name} | {d.max():.2e} | {d.mean():.2e} | {100 * (levels > 0).float().mean():.2f}% | "
                    f"{100 * (levels > 1).float().mean():.2f}% |")
        print(rows[-1], file=sys.stderr)

    classifier = load_digits_classifier()
    quality = {}
    for dtype in ("float32", "bfloat16"):
        for seed in (0, 1):
            r = evaluate_digits(sample(loaded, args.n, seed, args.steps, args.batch, dtype=dtype), classifier)
            quality[dtype, seed] = r
            print(dtype, seed, r["frechet_distance_classifier"], r["confident_share"], file=sys.stderr)
    fd = {k: v["frechet_distance_classifier"] for k, v in quality.items()}
    noise = abs(fd["float32", 0] - fd["float32", 1])
    shift = max(abs(fd["bfloat16", s] - fd["float32", s]) for s in (0, 1))

    lines = [
        "## Fast path vs float32 on the embedded model (`benchmarks/fast_path_quality.py`)", "",
        f"Machine: {machine()}. Embedded digits model (16x16), S = {args.steps}, eta = 0, same per-sample x_T "
        f"(seed 0) for every variant. Total run {time.perf_counter() - t0:.0f} s.", "",
        f"Agreement with float32 eager over {args.n_agree} samples (pixels in [-1, 1]; a uint8 level is 0.0078):", "",
        "| variant | max abs diff | mean abs diff | uint8 pixels that differ | ... by more than one level |",
        "|---|---:|---:|---:|---:|", *rows, "",
        f"Quality over {args.n} samples each (classifier Frechet distance: the digits classifier's features, "
        "not Inception's; lower is better):", "",
        "| path | seed | classifier Frechet distance | confident share (> 0.9) |", "|---|---:|---:|---:|",
        *[f"| {d} | {s} | {fd[d, s]:.2f} | {100 * quality[d, s]['confident_share']:.1f}% |"
          for d in ("float32", "bfloat16") for s in (0, 1)], "",
        f"float32 seed-to-seed difference: {noise:.2f}; largest bf16-vs-float32 difference at the same seed: "
        f"{shift:.2f} -> bf16 quality is {'within' if shift <= noise else 'outside'} run-to-run noise.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_report(__file__, "fast_path_quality", text)


if __name__ == "__main__":
    main()
