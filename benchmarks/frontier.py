"""Quality per second: this package against diffusers on the same weights, from the same x_T.

The embedded digits model is exported to a diffusers `UNet2DModel` folder, so both sides compute the same
function. Phase 1 times one network call at the sampling batch for every switch set each side has (float32;
bf16 autocast + channels_last; the peer's own bf16 weights; torch.compile with frozen weights) and keeps each
side's fastest. Phase 2 samples `--n` images from one x_T for every method and NFE (network calls per image)
of each side, times the whole loop (network, solver and scheduler together), and scores them with the digits
classifier's Frechet distance (not FID). Our side also runs DeepCache (`cache_interval` 2).

The quality bar is the peer's DDIMPipeline at 50 steps (the paper's DDIM-50). For each side, the fastest cell
at or under that bar is its best configuration at equal quality. The two are then timed again in interleaved
rounds (so that a drift of the machine's speed falls on both), and the ratio of those times is the headline.
Seed-to-seed noise: our DDIM-50 from another seed's x_T.

Cells are appended to a JSON-lines file as they finish, so a rerun resumes where it stopped. Writes the
`frontier` section of BENCHMARKS.md and docs/figures/frontier.png.

    python benchmarks/frontier.py [--n 1000] [--batch 250] [--threads 1] [--cells build/frontier.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from ddim.benchmarking import interleaved, machine, write_report
from ddim.checkpoint import export_diffusers
from ddim.config import SampleConfig
from ddim.evaluation import classifier_metric
from ddim.generate import load_model, make_sampler, sample_batch

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "frontier.png"
FEW = (4, 5, 6, 7, 8, 10, 15, 20)          # NFE for the multistep solvers
DDIM_NFE = (10, 20, 50, 100)

# The peer's schedulers, as a diffusers user would set them up for this model (linear betas, no clipping).
PEER_METHODS: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "DDIM": ("DDIMScheduler", {"set_alpha_to_one": True, "steps_offset": 0}, DDIM_NFE),
    "DDIM trailing": ("DDIMScheduler", {"set_alpha_to_one": True, "timestep_spacing": "trailing"}, (10, 20)),
    "DPM-Solver++ 2M": ("DPMSolverMultistepScheduler", {"solver_order": 2}, FEW),
    "DPM-Solver++ 3M": ("DPMSolverMultistepScheduler", {"solver_order": 3}, FEW),
    "DPM-Solver++ 2M Karras": ("DPMSolverMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": True}, FEW),
    "DPM-Solver++ 2M logSNR": ("DPMSolverMultistepScheduler", {"solver_order": 2, "use_lu_lambdas": True}, FEW),
    "UniPC": ("UniPCMultistepScheduler", {}, FEW),
}
# Ours: (solver, skip, cache_interval) -> NFE list.
OUR_METHODS: dict[tuple[str, str, int], tuple[int, ...]] = {
    ("ddim", "uniform", 1): DDIM_NFE,
    ("ddim", "trailing", 1): (10, 20),
    **{(s, g, 1): FEW for s in ("dpm++2m", "dpm++3m", "unipc") for g in ("trailing", "logsnr")},
    # DeepCache on the grid that samples best at few steps here (logsnr crowds its steps near t = 0)
    **{(s, "trailing", 2): (8, 10, 15, 20) for s in ("dpm++2m", "dpm++3m", "unipc")},
}
PEER_SWITCHES = ("float32", "bf16 autocast + channels_last", "bf16 weights + channels_last", "compile float32",
                 "compile bf16")
OUR_SWITCHES = ("float32", "bf16 + channels_last", "compile float32", "compile bf16")


def our_config(switches: str, **options) -> SampleConfig:
    """Our SampleConfig for a switch set: compile bf16 is bf16 + channels_last + torch.compile."""
    low = switches in ("bf16 + channels_last", "compile bf16")
    return SampleConfig(dtype="bfloat16" if low else "float32", channels_last=low,
                        compile=switches.startswith("compile"), **options)


# ---- the peer ------------------------------------------------------------------------------------------------

def peer_network(folder: str, switches: str) -> tuple[Callable, torch.dtype]:
    """diffusers' UNet2DModel with a switch set: (call(x, t) -> eps, the dtype its sampling loop works in)."""
    from diffusers import UNet2DModel
    pure = switches == "bf16 weights + channels_last"
    unet = UNet2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16 if pure else None).eval()
    if switches not in ("float32", "compile float32"):
        unet = unet.to(memory_format=torch.channels_last)
    fn = torch.compile(unet, dynamic=False) if switches.startswith("compile") else unet
    amp = switches in ("bf16 autocast + channels_last", "compile bf16")

    def call(x, t):
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext():
            return fn(x, t).sample
    return call, torch.bfloat16 if pure else torch.float32


def peer_sample(call: Callable, dtype: torch.dtype, method: str, nfe: int, x_T: torch.Tensor) -> torch.Tensor:
    """The loop of diffusers' pipelines (DDIMPipeline and the rest), on our x_T, in the pipeline's dtype."""
    import diffusers
    name, options, _ = PEER_METHODS[method]
    if name == "DDIMScheduler":
        options = {"clip_sample": False, **options}
    sched = getattr(diffusers, name)(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                     beta_end=0.02, **options)
    sched.set_timesteps(nfe)
    x = x_T.to(dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = call(sched.scale_model_input(x, t), t)
        x = sched.step(eps, t, x).prev_sample
    return x.float()


def pareto(cells: list[dict]) -> list[dict]:
    """The cells no other cell beats on both time and quality, fastest first."""
    out, best = [], float("inf")
    for c in sorted(cells, key=lambda c: (c["s_per_1000"], c["fd"])):
        if c["fd"] < best:
            out.append(c)
            best = c["fd"]
    return out


def plot(cells: list[dict], bar: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for side, colour in (("diffusers", "tab:orange"), ("ddim", "tab:blue")):
        mine = [c for c in cells if c["side"] == side and c["seed"] == 0]
        ax.scatter([c["s_per_1000"] for c in mine], [c["fd"] for c in mine], s=12, color=colour, alpha=0.35)
        front = pareto(mine)
        ax.plot([c["s_per_1000"] for c in front], [c["fd"] for c in front], "-o", ms=4, color=colour,
                label=f"{side}: frontier")
    ax.axhline(bar, color="grey", ls="--", lw=1, label="diffusers DDIM-50 (the quality bar)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter
    for axis in (ax.xaxis, ax.yaxis):                  # plain numbers, not powers of ten, on the log axes
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("seconds per 1000 images (this CPU)")
    ax.set_ylabel("classifier Frechet distance (lower is better)")
    ax.set_title("Quality per second on the same weights: every cell, and each side's frontier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def nfe_made(c: dict) -> int:
    """The network calls per image a cell made (cells finished before they were counted: the steps asked for,
    which is what every method here makes: one call per step)."""
    return c.get("calls", c["nfe"])


def label(c: dict) -> str:
    if c["side"] == "diffusers":
        return f"{c['method']}, {c['switches']}"
    cache = f", cache {c['cache']}" if c["cache"] > 1 else ""
    return f"{c['solver']} {c['skip']}{cache}, {c['switches']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--batch", type=int, default=250, help="sampling batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--rounds", type=int, default=7, help="rounds of the switch-set timing")
    p.add_argument("--final-rounds", type=int, default=5, help="interleaved rounds re-timing the two winners")
    p.add_argument("--cells", default="build/frontier.jsonl", help="finished cells (a rerun resumes from it)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and the figure")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import diffusers
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True           # both sides' compiled networks: weights folded in as constants
    start = time.perf_counter()
    loaded, metric = load_model(), classifier_metric()
    cells_path = Path(args.cells)
    cells_path.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(ln) for ln in cells_path.read_text().splitlines() if ln.strip()] if cells_path.exists() else []
    # cells of another size, batch or thread count are not comparable: they are left in the file, unused
    done = [c for c in done if (c.get("n"), c.get("batch"), c.get("threads")) == (args.n, args.batch, args.threads)]
    x_T = {s: torch.randn(args.n, 1, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (0, 1)}
    folder = tempfile.mkdtemp(prefix="frontier-unet-")
    export_diffusers(loaded, folder)

    # Phase 1: each side's fastest switches, one network call at the sampling batch.
    xb, tb = x_T[0][:args.batch], torch.full((args.batch,), 500)
    peers = {s: peer_network(folder, s) for s in PEER_SWITCHES}
    ours = {(s, 1): make_sampler(loaded, our_config(s)) for s in OUR_SWITCHES}
    with torch.no_grad():
        calls = {("diffusers", s): (lambda c=c, d=d: c(xb.to(d), tb)) for s, (c, d) in peers.items()}
        calls.update({("ddim", s): (lambda m=m.model: m(xb, tb)) for (s, _), m in ours.items()})
        t0 = time.perf_counter()
        call_s = {k: statistics.median(v) for k, v in interleaved(calls, args.rounds).items()}
    print(f"switch timing {time.perf_counter() - t0:.0f} s:", {f"{k[0]} {k[1]}": f"{v * 1e3:.1f} ms"
                                                               for k, v in call_s.items()}, flush=True)
    best = {side: min((k for k in call_s if k[0] == side), key=call_s.get)[1] for side in ("diffusers", "ddim")}
    print("fastest:", best, flush=True)

    # Phase 2: every method and NFE on each side, with that side's fastest switches.
    todo = [dict(side="diffusers", method=m, nfe=k, switches=best["diffusers"], cache=1, seed=0)
            for m, (_, _, nfes) in PEER_METHODS.items() for k in nfes]
    todo += [dict(side="ddim", solver=s, skip=g, cache=c, nfe=k, switches=best["ddim"], seed=0)
             for (s, g, c), nfes in OUR_METHODS.items() for k in nfes]
    todo.append(dict(side="ddim", solver="ddim", skip="uniform", cache=1, nfe=50, switches=best["ddim"], seed=1))
    results = ("fd", "seconds", "s_per_1000", "n", "batch", "threads", "calls")
    key = lambda c: json.dumps({k: c[k] for k in sorted(c) if k not in results})  # noqa: E731
    finished = {key(c) for c in done}

    def runner(cell: dict) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], int]]:
        """(x_T batch -> images with the cell's method, steps and switches; the network calls the last batch
        took, counted, not assumed)."""
        if cell["side"] == "diffusers":
            call, dtype = peers[cell["switches"]]
            made = [0]

            def counted(x, t):
                made[0] += 1
                return call(x, t)

            def run(xb):
                made[0] = 0
                return peer_sample(counted, dtype, cell["method"], cell["nfe"], xb)
            return run, lambda: made[0]
        cfg = our_config(cell["switches"], steps=cell["nfe"], skip=cell["skip"], solver=cell["solver"],
                         cache_interval=cell["cache"])
        # one sampler per (switches, cache), reused across cells: a compiled network is compiled once
        if (cell["switches"], cell["cache"]) not in ours:
            ours[cell["switches"], cell["cache"]] = make_sampler(loaded, cfg)
        sampler = ours[cell["switches"], cell["cache"]]
        return (lambda xb: sample_batch(sampler, xb, cfg)), lambda: sampler.last_nfe

    def timed(run: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        images = torch.cat([run(x[i:i + args.batch]) for i in range(0, args.n, args.batch)])
        return images, time.perf_counter() - t0

    for cell in todo:
        if key(cell) in finished:
            continue
        with torch.no_grad():
            run, made = runner(cell)
            run(x_T[cell["seed"]][:args.batch])     # warm-up, untimed: first calls of a call pattern (compilation)
            images, seconds = timed(run, x_T[cell["seed"]])
        cell.update(n=args.n, batch=args.batch, threads=args.threads, seconds=seconds, calls=made(),
                    s_per_1000=1000 * seconds / args.n, fd=metric.distance(images.float().clamp(-1, 1)))
        with cells_path.open("a") as f:
            f.write(json.dumps(cell) + "\n")
        done.append(cell)
        print(f"{label(cell):45s} NFE {nfe_made(cell):3d} seed {cell['seed']}: FD {cell['fd']:7.2f}, "
              f"{cell['s_per_1000']:6.1f} s/1000  [{time.perf_counter() - start:.0f} s]", flush=True)

    wanted = {key(c) for c in todo}
    cells = [c for c in done if key(c) in wanted]
    bar = next(c["fd"] for c in cells if c["side"] == "diffusers" and c.get("method") == "DDIM" and c["nfe"] == 50)
    ours50 = {c["seed"]: c["fd"] for c in cells if c["side"] == "ddim" and c["solver"] == "ddim"
              and c["skip"] == "uniform" and c["nfe"] == 50 and c["cache"] == 1}
    noise = abs(ours50[0] - ours50[1])
    at_bar = {side: min((c for c in cells if c["side"] == side and c["seed"] == 0 and c["fd"] <= bar),
                        key=lambda c: c["s_per_1000"], default=None) for side in ("diffusers", "ddim")}
    if at_bar["ddim"] is None:
        raise SystemExit(f"no cell of ours reaches the bar (FD {bar:.2f}); the cells are in {cells_path}")
    # The two winners again, in alternating rounds: the headline ratio does not rest on one run per side.
    winners = {side: (lambda run=runner(c)[0]: timed(run, x_T[0])) for side, c in at_bar.items()}
    with torch.no_grad():
        final = {side: [1000 * t / args.n for t in ts] for side, ts in interleaved(winners, args.final_rounds).items()}
    final_s = {side: statistics.median(v) for side, v in final.items()}
    ratio = final_s["diffusers"] / final_s["ddim"]
    print("winners re-timed (s per 1000):", final, flush=True)
    ddim50 = next(c for c in cells if c["side"] == "diffusers" and c.get("method") == "DDIM" and c["nfe"] == 50)

    lines = ["## Quality per second against diffusers (`benchmarks/frontier.py`)", "",
             f"Machine: {machine()}; {args.threads} thread(s). Embedded digits model (16x16), exported to a diffusers "
             f"`UNet2DModel` (same weights); {args.n} samples per cell from the same x_T (seed 0), batch "
             f"{args.batch}; time = the whole sampling loop (network, solver, scheduler); quality = the digits "
             "classifier's Frechet distance (not FID; lower is better). One run per cell: times carry about "
             "±10% of machine noise.", "",
             "One network call at batch %d, each side's switch sets (median of %d interleaved rounds; the fastest "
             "is used below):" % (args.batch, args.rounds), "",
             "| side | switches | ms per call |", "|---|---|---:|"]
    lines += [f"| {side} | {s}{' (fastest)' if best[side] == s else ''} | {1e3 * v:.1f} |"
              for (side, s), v in call_s.items()]
    lines += ["", f"Quality bar: diffusers DDIM-50 (DDIMPipeline's scheduler, 50 steps) FD {bar:.2f}; seed-to-seed "
              f"noise (our DDIM-50, seed 0 vs 1) {noise:.2f}.", "",
              "| side | fastest at or under the bar | NFE | classifier FD | s per 1000 images (its cell) | "
              f"re-timed: median of {args.final_rounds} interleaved rounds (slowest-fastest) |",
              "|---|---|---:|---:|---:|---:|"]
    for side in ("diffusers", "ddim"):
        c = at_bar[side]
        lines.append(f"| {side} | {label(c)} | {nfe_made(c)} | {c['fd']:.2f} | {c['s_per_1000']:.1f} | "
                     f"{final_s[side]:.2f} ({max(final[side]):.2f}-{min(final[side]):.2f}) |")
    lines += ["", f"**At equal quality (DDIM-50's), ddim's best configuration is {ratio:.2f}x as fast as "
              f"diffusers' best** (the re-timed medians) on the same weights and machine; against diffusers' "
              f"DDIM-50 itself ({ddim50['s_per_1000']:.1f} s per 1000, its cell) it is "
              f"{ddim50['s_per_1000'] / final_s['ddim']:.2f}x faster.", "",
              "Each side's frontier (no other cell of that side is both faster and better):", "",
              "| side | configuration | NFE | classifier FD | s per 1000 images |", "|---|---|---:|---:|---:|"]
    for side in ("diffusers", "ddim"):
        for c in pareto([c for c in cells if c["side"] == side and c["seed"] == 0]):
            lines.append(f"| {side} | {label(c)} | {nfe_made(c)} | {c['fd']:.2f} | {c['s_per_1000']:.1f} |")
    lines += ["", "Every cell:", "", "| side | configuration | NFE | classifier FD | s per 1000 images |",
              "|---|---|---:|---:|---:|"]
    for c in sorted(cells, key=lambda c: (c["side"], label(c), c["nfe"], c["seed"])):
        seed = " (seed 1)" if c["seed"] else ""
        lines.append(f"| {c['side']} | {label(c)}{seed} | {nfe_made(c)} | {c['fd']:.2f} | {c['s_per_1000']:.1f} |")
    lines += ["", "![frontier](docs/figures/frontier.png)", "",
              f"This invocation took {time.perf_counter() - start:.0f} s (cells finished by an earlier one were "
              f"reused from {cells_path})."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        plot(cells, bar, FIGURE)
        write_report(__file__, "frontier", text)
        print(f"wrote the frontier section of BENCHMARKS.md and {FIGURE}")


if __name__ == "__main__":
    main()
