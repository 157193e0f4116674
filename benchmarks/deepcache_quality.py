"""DeepCache on the embedded digits model: images/s and quality for cache intervals N = 1..5 (1 = off, exact).

For each S and N: the same per-sample x_T, DDIM eta = 0, the classifier Frechet distance of `--n` samples (the
digits classifier's features, not FID), the RMS distance to the N = 1 samples, and images/s measured in the same
process (rounds alternate, 1 thread by default so that another job may share the machine). Seed-to-seed noise:
the N = 1 distance with another seed. Written to BENCHMARKS.md (section `deepcache`).

    python benchmarks/deepcache_quality.py --n 500 --steps 20 50 --intervals 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import machine, write_section

from ddim.config import SampleConfig
from ddim.evaluation import classifier_metric, generate_samples
from ddim.generate import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50, 100])
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model()
    metric = classifier_metric()
    rows = []
    for S in args.steps:
        exact = None
        for N in args.intervals:
            cfg = SampleConfig(steps=S, cache_interval=N, batch_size=250)
            t0 = time.perf_counter()
            with torch.no_grad():
                x = generate_samples(loaded, args.n, cfg)
            secs = time.perf_counter() - t0
            exact = x if N == 1 else exact
            rms = ((x - exact) ** 2).mean().sqrt().item() if exact is not None else float("nan")
            rows.append((S, N, metric.distance(x), rms, args.n / secs))
            print(rows[-1], flush=True)
        noise = metric.distance(generate_samples(loaded, args.n, SampleConfig(steps=S, seed=1, batch_size=250)))
        rows.append((S, "seed 1", noise, float("nan"), float("nan")))
    lines = ["## DeepCache on the embedded model (`benchmarks/deepcache_quality.py`)", "",
             f"Machine: {machine()}; {args.threads} thread(s). DDIM eta = 0, {args.n} samples per cell from the same "
             "x_T; classifier Frechet distance (not FID), its seed-to-seed noise in the `seed 1` rows (N = 1, "
             "another seed), RMS distance to the exact (N = 1) samples in [-1, 1] units.", "",
             "| S | cache interval N | classifier FD | RMS vs N = 1 | images/s | speed-up |", "|---:|---|---:|---:|---:|---:|"]
    base = {S: r[4] for r in rows for S in [r[0]] if r[1] == 1}
    for S, N, fd, rms, ips in rows:
        speed = f"{ips / base[S]:.2f}x" if ips == ips else "-"
        lines.append(f"| {S} | {N} | {fd:.2f} | {rms:.4f} | {ips:.1f} | {speed} |" if ips == ips
                     else f"| {S} | {N} | {fd:.2f} | - | - | - |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("deepcache", text)


if __name__ == "__main__":
    main()
