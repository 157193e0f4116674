"""Reconstruction through inversion for every method (Table 2's protocol): eq. 13 with each solver, eq. 13 with
fixed-point refinement, and the exact BDIA and EDICT, unguided and guided, in float32 and float64.

The first --n digits are encoded with S steps and decoded with S steps of the same method; the per-dimension
MSE has pixels in [0, 1] (`ddim.evaluation.reconstruction_mse`, computed in float64 here so that roundoff
shows). Guided rows use the class-conditional embedded model with each digit's own label. Network calls are
counted by the sampler (`DDIMSampler.last_nfe`: encode + decode); seconds are per image for both walks, on
this machine's CPU with one thread. Prints a markdown table (docs/RESULTS.md keeps a copy) and, with --plot,
draws MSE vs S.

    python benchmarks/inversion.py [--n 16] [--steps 10 20 50 100] [--dtypes float32 float64] [--plot out.png]
        [--transfer out.png [--transfer-steps 50]]

--transfer draws class transfer of the first ten digits (0-9) on the class-conditional model: rows are the
inputs, the round trip to their own class through DDIM inversion and through BDIA, then the transfer to the
next class (digit d -> d + 1 mod 10, decoded with guidance 2) through DDIM, BDIA and EDICT.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # ddim from a checkout

from ddim import DDIMSampler  # noqa: E402
from ddim.generate import load_model  # noqa: E402
from ddim.images import digits_images  # noqa: E402

# (label, invert options, solver) for each method
METHODS = [("ddim", {}, "ddim"), ("ddim + refine 1", {"refine": 1}, "ddim"),
           ("ddim + refine 2", {"refine": 2}, "ddim"), ("plms", {}, "plms"), ("dpm++2m", {}, "dpm++2m"),
           ("unipc", {}, "unipc"), ("bdia", {}, "bdia"), ("edict", {}, "edict")]


def mse(x0: torch.Tensor, rec: torch.Tensor) -> float:
    return (((rec.double().clamp(-1, 1) - x0.double()) / 2) ** 2).mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS])
    p.add_argument("--models", nargs="+", default=["digits", "digits-cond:1", "digits-cond:3"],
                   help="model[:guidance] (digits: unconditional; digits-cond with a guidance weight)")
    p.add_argument("--plot", default=None, help="a PNG of MSE vs S (one panel per model and guidance)")
    p.add_argument("--transfer", default=None, help="a PNG of class transfer through DDIM and exact inversion")
    p.add_argument("--transfer-steps", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.transfer:
        transfer(args.transfer, args.transfer_steps)
        return
    x_all, labels = digits_images(16)
    x_all, labels = x_all[:args.n], labels[:args.n]
    rows = []
    models = [(None, None) if m == "digits" else (m.split(":")[0], float(m.split(":")[1])) for m in args.models]
    for name, w in models:
        loaded = load_model(name) if name else load_model()
        sampler = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction)
        cond = {} if w is None else {"y": labels, "guidance": w}
        for dtype in args.dtypes:
            loaded.model.to(getattr(torch, dtype))
            x0 = x_all.to(getattr(torch, dtype))
            for label, opts, solver in [m for m in METHODS if m[0] in args.methods]:
                for S in args.steps:
                    t0 = time.perf_counter()
                    z = sampler.invert(x0, S, solver=solver, refine=opts.get("refine", 0), **cond)
                    calls = sampler.last_nfe
                    rec = sampler.sample(z, S, solver=solver, **cond)
                    calls += sampler.last_nfe
                    sec = (time.perf_counter() - t0) / len(x0)
                    rows.append(dict(model=name or "digits", w=w, dtype=dtype, method=label, S=S,
                                     mse=mse(x_all, rec), calls=calls, sec=sec))
                    print(f"{rows[-1]['model']:>11} w={w or '-'} {dtype} {label:>15} S={S:<4d} "
                          f"MSE {rows[-1]['mse']:.3e} calls {calls} s/img {sec:.3f}", file=sys.stderr, flush=True)
    print(table(rows, args.steps))
    if args.plot:
        plot(rows, args.plot)


def transfer(path: str, steps: int) -> None:
    from ddim.images import save_image_grid
    loaded = load_model("digits-cond")
    sampler = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction)
    x0, labels = (v[:10] for v in digits_images(16))
    with torch.no_grad():
        grid = [x0]
        for solver in ("ddim", "bdia"):
            grid.append(sampler.transfer(x0, labels, labels, steps, solver=solver))
        for solver in ("ddim", "bdia", "edict"):
            grid.append(sampler.transfer(x0, labels, (labels + 1) % 10, steps, guidance=2.0, solver=solver))
    save_image_grid(torch.cat(grid), Path(path), nrow=10, scale="auto")
    print(f"wrote {path}: inputs; round trip via ddim, bdia; transfer d -> d + 1 via ddim, bdia, edict")


def table(rows: list[dict], steps: list[int]) -> str:
    head = "| model | w | dtype | method | " + " | ".join(f"S = {S}" for S in steps) + \
        " | calls at S = 10 | s/img at S = 10 |"
    lines = [head, "|---|---:|---|---|" + "---:|" * (len(steps) + 2)]
    keys = dict.fromkeys((r["model"], r["w"], r["dtype"], r["method"]) for r in rows)
    for key in keys:
        cells = {r["S"]: r for r in rows if (r["model"], r["w"], r["dtype"], r["method"]) == key}
        ref = cells.get(10, cells[min(cells)])
        lines.append(f"| {key[0]} | {key[1] or '-'} | {key[2]} | {key[3]} | "
                     + " | ".join(f"{cells[S]['mse']:.1e}" for S in steps)
                     + f" | {ref['calls']} | {ref['sec']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = list(dict.fromkeys((r["model"], r["w"], r["dtype"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["S"], max(r["mse"], 1e-30)) for r in rows
                         if (r["model"], r["w"], r["dtype"]) == panel and r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{panel[0]}, w = {panel[1] or '-'}, {panel[2]}", fontsize=9)
        ax.set_xlabel("S")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("per-dimension MSE")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
