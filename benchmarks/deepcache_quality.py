"""DeepCache on the embedded digits model: images/s and quality for cache intervals N = 1..5 (1 = off, exact).

For each S and N: the same per-sample x_T, DDIM eta = 0, the classifier Frechet distance of `--n` samples (the
digits classifier's features, not FID), the RMS distance to the N = 1 samples, and images/s measured in the same
process (1 thread by default so that another job may share the machine). Seed-to-seed noise: the N = 1
distance with another seed. Written to BENCHMARKS.md (section `deepcache`), with a plot of quality against
speed-up in docs/figures/deepcache.png.

    python benchmarks/deepcache_quality.py --n 1000 --steps 20 50 100 --intervals 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ddim.benchmarking import machine, write_report
from ddim.config import SampleConfig
from ddim.evaluation import classifier_metric, generate_samples
from ddim.generate import load_model

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "deepcache.png"


def plot(rows: list[tuple], path: Path) -> None:
    """Classifier FD against speed-up, a line per S, the seed-to-seed band around each N = 1 point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for S in sorted({r[0] for r in rows}):
        cells = [r for r in rows if r[0] == S and r[1] != "seed 1"]
        base = next(r for r in cells if r[1] == 1)
        noise = next(abs(r[2] - base[2]) for r in rows if r[0] == S and r[1] == "seed 1")
        line, = ax.plot([r[4] / base[4] for r in cells], [r[2] for r in cells], "-o", ms=4, label=f"S = {S}")
        for r in cells:
            ax.annotate(f"N={r[1]}", (r[4] / base[4], r[2]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhspan(base[2] - noise, (base[2] + noise) * 1.1, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("speed-up over N = 1 (images/s, same S)")
    ax.set_ylabel("classifier Frechet distance (lower is better)")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_title("DeepCache on the embedded model\n(bands: N = 1 within seed noise, +10%: the bar)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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
             "![DeepCache: quality against speed-up](docs/figures/deepcache.png)", "",
             f"Machine: {machine()}; {args.threads} thread(s). DDIM eta = 0, {args.n} samples per cell from the same "
             "x_T; classifier Frechet distance (not FID), its seed-to-seed noise in the `seed 1` rows (N = 1, "
             "another seed), RMS distance to the exact (N = 1) samples in [-1, 1] units.", "",
             "A cell passes when its FD is at most (FD at N = 1 + seed-to-seed noise) x 1.1, the issue's bar.", "",
             "| S | cache interval N | classifier FD | RMS vs N = 1 | images/s | speed-up | within the bar |",
             "|---:|---|---:|---:|---:|---:|---|"]
    base = {r[0]: r for r in rows if r[1] == 1}
    bar = {S: (base[S][2] + abs(fd - base[S][2])) * 1.1 for S, N, fd, *_ in rows if N == "seed 1"}
    for S, N, fd, rms, ips in rows:
        if N == "seed 1":
            lines.append(f"| {S} | {N} | {fd:.2f} | - | - | - | bar {bar[S]:.2f} |")
            continue
        lines.append(f"| {S} | {N} | {fd:.2f} | {rms:.4f} | {ips:.1f} | {ips / base[S][4]:.2f}x | "
                     f"{'yes' if fd <= bar[S] else 'no'} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        plot(rows, FIGURE)
        write_report(__file__, "deepcache", text)


if __name__ == "__main__":
    main()
