"""DeepCache's speed-up on the `cifar10` network (Ho et al.'s 35.7M-parameter U-Net, 32x32), the size it was
designed for.

There are no trained cifar10 weights on this machine, so this measures speed only (quality is measured on the
embedded model by `deepcache_quality.py`): seeded random weights, S DDIM steps from one x_T, images/s for each
cache interval N, rounds interleaved in one process, for float32 and the bf16 + channels_last path. The cached
calls run only the top level of the U-Net; the speed-up is bounded by 1 / (1/N + (1 - 1/N) * shallow share).
Writes the `deepcache_speed` section of BENCHMARKS.md.

    python benchmarks/deepcache_speed.py [--batch 8] [--steps 20] [--intervals 1 2 3 4 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddim import NoiseSchedule
from ddim.benchmarking import interleaved, machine, write_report
from ddim.checkpoint import LoadedModel
from ddim.config import SampleConfig
from ddim.generate import make_sampler, sample_batch
from ddim.models import PRESETS, UNet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    model = UNet(PRESETS["cifar10"]).eval()
    loaded = LoadedModel(model, NoiseSchedule.linear(), "eps", model.config)
    x_T = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    paths = {"float32": {}, "bf16 + channels_last": dict(dtype="bfloat16", channels_last=True)}
    runs = {}
    for name, switches in paths.items():
        for N in args.intervals:
            cfg = SampleConfig(steps=args.steps, cache_interval=N, **switches)
            runs[name, N] = (make_sampler(loaded, cfg), cfg)
    with torch.no_grad():
        for sampler, cfg in runs.values():                       # warm-up: first calls, allocations
            sample_batch(sampler, x_T, SampleConfig(steps=2, cache_interval=cfg.cache_interval))
        times = interleaved({k: (lambda s=s, c=c: sample_batch(s, x_T, c)) for k, (s, c) in runs.items()},
                            args.rounds, warmup=False, on_time=lambda k, s: print(k, f"{s:.2f} s", flush=True))
    lines = ["## DeepCache speed on the cifar10 network (`benchmarks/deepcache_speed.py`)", "",
             f"Machine: {machine()}. `cifar10` preset, seeded random weights (speed only), batch {args.batch}, "
             f"S = {args.steps} DDIM steps, median of {args.rounds} interleaved rounds. Total run "
             f"{time.perf_counter() - start:.0f} s.", "",
             "| switches | cache interval N | images/s | speed-up |", "|---|---:|---:|---:|"]
    for name in paths:
        base = statistics.median(times[name, 1])
        for N in args.intervals:
            t = statistics.median(times[name, N])
            lines.append(f"| {name} | {N} | {args.batch / t:.3f} | {base / t:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_report(__file__, "deepcache_speed", text)


if __name__ == "__main__":
    main()
