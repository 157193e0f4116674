"""Few-step quality vs network calls on the class-conditional digits model (issue 22; docs/RESULTS.md).

Every cell samples the same n per-sample x_T (sample i from (seed, i), label i % 10, guidance 2), counts the
network calls one sample took (`DDIMSampler.last_nfe`) and scores the samples with the digits classifier's
Frechet distance (`ddim.evaluation.make_metric("classifier")`, the metric of the other tables) and, where
scikit-learn is there, the SVM judge's on-label share (`benchmarks/digits_quality.py`). Rows are named variants:
a solver, a grid and options (AFS, a guidance interval, a stochastic solver's settings). Each cell appends a CSV
row and saves its samples (cells.npz in --out) for pictures; a rerun skips the cells already in the CSV.

    python benchmarks/fewstep_quality.py --rows grids --n 200 --out runs/fewstep
    python benchmarks/fewstep_quality.py --rows samplers --n 200 --out runs/fewstep
    python benchmarks/fewstep_quality.py --rows afs-trailing --n 200 --out runs/fewstep
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from ddim import DDIMSampler
from ddim.evaluation import make_metric
from ddim.generate import initial_noise, load_model, sample_generators

FEW = (5, 3, 4, 6, 8, 10)                    # run in this order (pass by pass)
# name -> (sample() options, step counts). One-call solvers: calls = steps (afs: steps - 1); Heun-based churn
# 2 S - 1; restart 2 S - 1 + 2 k inner.
ROWS: dict[str, dict[str, tuple[dict, tuple[int, ...]]]] = {
    "grids": {
        "ddim-50 (uniform)": (dict(solver="ddim", skip="uniform"), (50,)),
        "dpm++2m trailing": (dict(solver="dpm++2m", skip="trailing"), FEW),
        "dpm++2m logsnr": (dict(solver="dpm++2m", skip="logsnr"), FEW),
        "dpm++2m uniform": (dict(solver="dpm++2m", skip="uniform"), FEW),
        "dpm++2m optimized": (dict(solver="dpm++2m", skip="optimized"), FEW),
    },
    "samplers": {
        "dpm++2m optimized + afs": (dict(solver="dpm++2m", skip="optimized", afs=True), tuple(k + 1 for k in FEW)),
        "ipndm optimized": (dict(solver="ipndm", skip="optimized"), FEW),
        "dpm++2m optimized + interval": (dict(solver="dpm++2m", skip="optimized", guidance_interval=(100, 600)), FEW),
        "dpm++2m-sde optimized": (dict(solver="dpm++2m-sde", skip="optimized"), FEW),
        "churn optimized": (dict(solver="churn", skip="optimized"), (3, 2, 4, 5)),
        "restart optimized (k 1, inner 1)": (dict(solver="restart", skip="optimized",
                                                   solver_options=dict(k=1, inner=1)), (2, 3, 4)),
    },
    "afs-trailing": {
        "dpm++2m trailing + afs": (dict(solver="dpm++2m", skip="trailing", afs=True), (6, 4, 5)),
    },
}


def svm_on_label(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """The SVM judge's share of samples classified as their label (None without scikit-learn)."""
    try:
        from digits_quality import fit_svm, judge
    except ImportError:
        return None
    global _SVM
    if "_SVM" not in globals():
        _SVM = fit_svm()[0]
    return float((judge(_SVM, x.flatten(1).numpy(), 0.9)[1] == y.numpy()).mean())


def report(out: Path, figures: Path | None) -> None:
    """Each cell's mean |x - x_DDIM-50| per pixel (the same x_T: how far from DDIM-50's own images, in [-1, 1]
    units) beside its FD; with `figures`, a 4 x 10 grid (a column per label) of the named best cells and DDIM-50."""
    from ddim.images import save_image_grid
    ref = np.load(out / "grids_ddim-50_(uniform)_50.npy").astype(np.float32)
    for table in sorted(out.glob("*.csv")):
        for r in csv.DictReader(table.open()):
            if r["row"] == "row":
                continue
            x = np.load(out / f"{table.stem}_{r['row'].replace(' ', '_')}_{r['steps']}.npy").astype(np.float32)
            print(f"{r['row']:34s} nfe {r['nfe']:>2s}  FD {float(r['fd']):8.2f}  on-label {r['svm_on_label']:>5s}  "
                  f"|x - ddim50| {np.abs(x - ref).mean():.3f}")
            name = {("grids", "ddim-50 (uniform)", "50"): "ddim50", ("grids", "dpm++2m trailing", "5"): "dpm2m_trailing_5",
                    ("grids", "dpm++2m trailing", "3"): "dpm2m_trailing_3",
                    ("samplers", "dpm++2m optimized + afs", "6"): "dpm2m_optimized_afs_5",
                    ("afs-trailing", "dpm++2m trailing + afs", "4"): "dpm2m_trailing_afs_3",
                    ("afs-trailing", "dpm++2m trailing + afs", "6"): "dpm2m_trailing_afs_5",
                    ("grids", "dpm++2m optimized", "5"): "dpm2m_optimized_5"}.get((table.stem, r["row"], r["steps"]))
            if figures is not None and name:
                save_image_grid(torch.from_numpy(x[:40]), figures / f"fewstep_{name}.png", nrow=10, scale="auto")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", choices=tuple(ROWS))
    p.add_argument("--report", action="store_true", help="no sampling: distances to DDIM-50 of every cell in --out")
    p.add_argument("--figures", default=None, help="with --report: write the best cells' grids here")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--out", default="runs/fewstep")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        return report(out, Path(args.figures) if args.figures else None)
    if args.rows is None:
        p.error("--rows is required unless --report")
    out.mkdir(parents=True, exist_ok=True)
    table = out / f"{args.rows}.csv"
    done = {(r["row"], int(r["steps"])) for r in csv.DictReader(table.open())} if table.exists() else set()
    loaded = load_model("digits-cond")
    sampler = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction)
    metric = make_metric("classifier", loaded)
    gens = sample_generators(args.seed, range(args.n))
    x_T = initial_noise((1, 16, 16), gens)
    y = torch.arange(args.n) % 10
    # Pass by pass (every row's first step count, then every row's second, ...): a cut-short run is still a table.
    cells = sorted(((j, name, opts, steps) for name, (opts, steps_list) in ROWS[args.rows].items()
                    for j, steps in enumerate(steps_list)), key=lambda c: c[0])
    for _, name, opts, steps in cells:
        if (name, steps) in done:
            continue
        if True:
            t0, xs, nfe = time.perf_counter(), [], 0
            for b in range(0, args.n, args.batch_size):
                sl = slice(b, b + args.batch_size)
                xs.append(sampler.sample(x_T[sl], steps, generator=gens[sl], y=y[sl], guidance=args.guidance,
                                         **opts).clamp(-1, 1))
                nfe = max(nfe, sampler.last_nfe)
            x = torch.cat(xs)
            row = dict(row=name, steps=steps, nfe=nfe, n=args.n, fd=round(metric.distance(x), 3),
                       svm_on_label=svm_on_label(x, y), seconds=round(time.perf_counter() - t0, 1))
            new = not table.exists()
            with table.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            np.save(out / f"{args.rows}_{name.replace(' ', '_')}_{steps}.npy", x.numpy().astype(np.float16))
            print(row, flush=True)


if __name__ == "__main__":
    main()
