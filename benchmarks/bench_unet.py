"""Forward time of the `cifar10` U-Net: this package against diffusers' UNet2DModel holding the same weights.

Our model gets random weights, is exported with `ddim.checkpoint.export_diffusers` and read back by diffusers, so
both networks compute the same function (the max difference is reported). Per batch size, every variant is warmed
up, then the variants run one forward each in turn, round after round (interleaved, so machine noise hits all
alike), and the median is reported. Variants: ours eager (NCHW), ours channels_last, ours `torch.compile`
(inductor, freezing on: weights constant-folded, as for inference), diffusers eager (NCHW) and diffusers
channels_last. float32, `torch.inference_mode`, `--threads` intra-op threads for every variant. Writes its
section of BENCHMARKS.md.

    python benchmarks/bench_unet.py [--batches 1 8 32] [--threads 2] [--seconds 60]
        [--compile-batches 8] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

from ddim.benchmarking import interleaved, machine, write_report
from ddim.checkpoint import export_diffusers
from ddim.models import PRESETS, UNet


def build(threads: int):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ours = UNet(PRESETS["cifar10"]).eval()
    with tempfile.TemporaryDirectory() as d:
        export_diffusers(ours, d)
        theirs = UNet2DModel.from_pretrained(d).eval()
    return ours, theirs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="batch sizes B of x [B, 3, 32, 32]")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (this machine: 2 cores)")
    p.add_argument("--seconds", type=float, default=60.0, help="timing budget per batch size after warm-up")
    p.add_argument("--min-rounds", type=int, default=3, help="at least this many interleaved rounds per batch")
    p.add_argument("--compile-batches", type=int, nargs="*", default=[8],
                   help="batch sizes that also time torch.compile (each costs minutes of compiling on 2 cores)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    ours, theirs = build(args.threads)
    ours_cl = UNet(ours.config).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl = ours_cl.to(memory_format=torch.channels_last)
    theirs_cl = type(theirs).from_config(theirs.config).eval()
    theirs_cl.load_state_dict(theirs.state_dict())
    theirs_cl = theirs_cl.to(memory_format=torch.channels_last)
    variants = {
        "ddim": lambda x, t: ours(x, t),
        "ddim channels_last": lambda x, t: ours_cl(x.contiguous(memory_format=torch.channels_last), t),
        "diffusers": lambda x, t: theirs(x, t).sample,
        "diffusers channels_last": lambda x, t: theirs_cl(x.contiguous(memory_format=torch.channels_last), t).sample,
    }
    if args.compile_batches:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(ours, dynamic=False)

    rows, compile_s = [], {}
    for batch in args.batches:
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        variants.pop("ddim compile", None)
        if batch in args.compile_batches:
            variants["ddim compile"] = lambda x, t: compiled(x, t)
        with torch.inference_mode():
            ref = variants["diffusers"](x, t)
            err = {}
            for name, fn in variants.items():  # warm up (and compile), checking every variant computes the same
                t0 = time.perf_counter()
                err[name] = (fn(x, t) - ref).abs().max().item()
                if name == "ddim compile":
                    compile_s[batch] = time.perf_counter() - t0
            times = interleaved({name: (lambda fn=fn: fn(x, t)) for name, fn in variants.items()}, args.min_rounds,
                                seconds=args.seconds, warmup=False)     # warmed up above
            rounds = len(times["ddim"])
        med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        # Best-of ratio too: on a shared machine the fastest round is the one least disturbed by others.
        best = min(times["ddim"]) / min(times["diffusers"])
        rows.append((batch, rounds, med, err, best))
        print(f"batch {batch:3d} ({rounds} rounds): " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
              + f"; ratio ddim/diffusers {med['ddim'] / med['diffusers']:.2f} (best-of {best:.2f}); max |diff| "
              + f"{max(err.values()):.1e}", flush=True)

    names = [n for n in ("ddim", "ddim channels_last", "ddim compile", "diffusers", "diffusers channels_last")
             if any(n in row[2] for row in rows)]
    has_compile = "ddim compile" in names
    body = [
        "## U-Net forward, `cifar10` preset vs diffusers UNet2DModel (`benchmarks/bench_unet.py`)",
        "",
        f"Machine: {machine()}. float32, x [B, 3, 32, 32], `torch.inference_mode`, {args.threads} threads, same "
        f"weights in both (exported with `export_diffusers`); median of interleaved rounds (about "
        f"{args.seconds:.0f} s of rounds per batch size, at least {args.min_rounds})."
        + (" `ddim compile` = `torch.compile(model, dynamic=False)` with inductor freezing, NCHW input, timed at "
           f"B in {args.compile_batches} only; compile + first call took "
           f"{', '.join(f'{v:.0f} s (B={b})' for b, v in compile_s.items())}." if compile_s else "")
        + f" Total run {time.perf_counter() - start:.0f} s. Goal: ratio ddim/diffusers <= 1.",
        "",
        "| batch | rounds | " + " | ".join(f"{n} (ms)" for n in names)
        + " | ddim / diffusers | same, best-of rounds | ddim channels_last / diffusers"
        + (" | ddim compile / diffusers" if has_compile else "") + " | max abs diff |",
        "|" + "---:|" * (len(names) + 6 + has_compile),
    ]
    for batch, rounds, med, err, best in rows:
        ratios = [med["ddim"] / med["diffusers"], best, med["ddim channels_last"] / med["diffusers"]]
        if has_compile:
            ratios.append(med["ddim compile"] / med["diffusers"] if "ddim compile" in med else float("nan"))
        body.append(f"| {batch} | {rounds} | " + " | ".join(f"{med[n]:.1f}" if n in med else "-" for n in names)
                    + " | "
                    + " | ".join(("-" if r != r else f"{r:.2f}") for r in ratios) + f" | {max(err.values()):.1e} |")
    print(f"total {time.perf_counter() - start:.0f} s\n\n" + "\n".join(body))
    if not args.no_write:
        write_report(__file__, "bench_unet", "\n".join(body))


if __name__ == "__main__":
    main()
