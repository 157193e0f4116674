"""Quality per second: this package against diffusers on the same weights, from the same x_T.

The teacher (by default the embedded class-conditional digits model at classifier-free guidance w = 2, the
labels 0..9 in turn) is exported to a diffusers `UNet2DModel` folder, so both sides compute the same function;
the peer guides as a diffusers user writes it (one call of 2B: the labels and the null label, then
eps_u + w (eps_c - eps_u)), and so does ddim. Our side also runs distilled students of that teacher
(`ddim distill`, guidance baked in: one call of B per step), the model-free optimized grid, iPNDM, the guidance
interval, the analytic first step (AFS), Restart and DPM-Solver++(2M) SDE.

A student distilled at another w than the teacher's is judged against the same bar (DDIM-50 at the teacher's
w), and diffusers' multistep solvers then also run at the student's w (3-8 calls), so that the choice of w is
open to both sides.

Phase 1 times one network call at the sampling batch for every switch set each side has (float32; bf16
autocast + channels_last; the peer's own bf16 weights; torch.compile with frozen weights) and keeps each
side's fastest. Phase 2 samples `--n` images from one x_T for every method and NFE (network calls per image)
of each side, times the whole loop (network, solver and scheduler together), and scores them with the digits
classifier's Frechet distance (not FID). Our side also runs DeepCache (`cache_interval` 2).

The quality bar is the peer's DDIMPipeline at 50 steps (the paper's DDIM-50). For each side, the fastest cell
at or under that bar is its best configuration at equal quality; with guidance, a cell must also be on the
requested label (the digits classifier) as often as DDIM-50, within one percentage point, since weaker
guidance alone lowers the Frechet distance. The two are then timed again in interleaved
rounds (so that a drift of the machine's speed falls on both), and the ratio of those times is the headline.
Seed-to-seed noise: our DDIM-50 from another seed's x_T.

Cells are appended to a JSON-lines file as they finish, so a rerun resumes where it stopped. Writes the
`frontier` section of BENCHMARKS.md and docs/figures/frontier.png.

    python benchmarks/frontier.py [--ckpt digits-cond] [--guidance 2] [--students DIR ...] [--n 1000]
        [--batch 250] [--threads 1] [--cells build/frontier.jsonl]
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
from ddim.generate import EMBEDDED, image_shape, load_model, make_sampler, recorded_sampling, sample_batch
from ddim.metrics.classifier import load_digits_classifier

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "frontier.png"
FEW = (4, 5, 6, 7, 8, 10)                  # NFE for the multistep solvers
DDIM_NFE = (10, 20, 50)
PEER_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}

# The peer's schedulers, as a diffusers user would set them up for this model (linear betas, no clipping).
PEER_METHODS: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "DDIM": ("DDIMScheduler", {"set_alpha_to_one": True, "steps_offset": 0}, DDIM_NFE),
    "DDIM trailing": ("DDIMScheduler", {"set_alpha_to_one": True, "timestep_spacing": "trailing"}, (10,)),
    "DPM-Solver++ 2M": ("DPMSolverMultistepScheduler", {"solver_order": 2}, (3,) + FEW),
    "DPM-Solver++ 3M": ("DPMSolverMultistepScheduler", {"solver_order": 3}, FEW),
    "DPM-Solver++ 2M Karras": ("DPMSolverMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": True},
                               (4, 6, 8)),
    "DPM-Solver++ 2M logSNR": ("DPMSolverMultistepScheduler", {"solver_order": 2, "use_lu_lambdas": True},
                               (4, 6, 8)),
    "UniPC": ("UniPCMultistepScheduler", {}, (3,) + FEW),
}
# Ours: (solver, skip, cache_interval, extra) -> steps list; extra names one of EXTRAS (sampling options).
OUR_METHODS: dict[tuple[str, str, int, str], tuple[int, ...]] = {
    ("ddim", "uniform", 1, ""): DDIM_NFE,
    ("ddim", "trailing", 1, ""): (10,),
    **{(s, "trailing", 1, ""): FEW for s in ("dpm++2m", "dpm++3m", "unipc", "ipndm")},
    **{(s, "optimized", 1, ""): (4, 5, 6, 8) for s in ("dpm++3m", "unipc", "ipndm")},
    ("unipc", "logsnr", 1, ""): (4, 6, 8),
    ("unipc", "trailing", 1, "interval"): (4, 5, 6, 8),
    **{(s, "trailing", 1, "afs"): (3, 4, 5, 6) for s in ("dpm++2m", "unipc")},   # AFS: nfe = the calls made
    ("unipc", "trailing", 1, "interval+afs"): (4, 5, 6),
    ("unipc", "trailing", 2, ""): (8, 10),           # DeepCache
    ("dpm++2m-sde", "trailing", 1, ""): (10, 20),
    ("restart", "trailing", 1, ""): (4, 6),         # Heun steps: about 2 calls a step, plus the restarts
}
# The guidance interval of Kynkaanniemi et al.: w on the middle levels only (t in [100, 700] of 1000); elsewhere
# one call of B at w = 1.
# AFS (the analytic first step) makes the walk's first evaluation without the network: steps = calls + 1.
EXTRAS = {"": {}, "interval": {"guidance_interval": (100.0, 700.0)}, "afs": {"afs": True},
          "interval+afs": {"guidance_interval": (100.0, 700.0), "afs": True}}
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
    """diffusers' UNet2DModel with a switch set: (call(x, t, labels) -> the network's output, the dtype its
    sampling loop works in)."""
    from diffusers import UNet2DModel
    pure = switches == "bf16 weights + channels_last"
    unet = UNet2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16 if pure else None).eval()
    if switches not in ("float32", "compile float32"):
        unet = unet.to(memory_format=torch.channels_last)
    fn = torch.compile(unet, dynamic=False) if switches.startswith("compile") else unet
    amp = switches in ("bf16 autocast + channels_last", "compile bf16")

    def call(x, t, labels=None):
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext():
            return fn(x, t, class_labels=labels).sample
    return call, torch.bfloat16 if pure else torch.float32


def peer_sample(call: Callable, dtype: torch.dtype, method: str, nfe: int, x_T: torch.Tensor, prediction: str,
                y: torch.Tensor | None = None, guidance: float = 1.0, null: int = -1) -> torch.Tensor:
    """The loop of diffusers' pipelines (DDIMPipeline and the rest), on our x_T, in the pipeline's dtype; with
    labels y, classifier-free guidance as diffusers' pipelines write it: one call on [x, x] with [y, null], then
    out_u + w (out_c - out_u)."""
    import diffusers
    name, options, _ = PEER_METHODS[method]
    if name == "DDIMScheduler":
        options = {"clip_sample": False, **options}
    sched = getattr(diffusers, name)(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                     beta_end=0.02, prediction_type=PEER_PREDICTION[prediction], **options)
    sched.set_timesteps(nfe)
    x = x_T.to(dtype) * sched.init_noise_sigma
    labels = None if y is None else torch.cat([y, torch.full_like(y, null)])
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        if y is None:
            out = call(xin, t)
        else:
            cond, uncond = call(torch.cat([xin, xin]), t, labels).chunk(2)
            out = uncond + guidance * (cond - uncond)
        x = sched.step(out, t, x).prev_sample
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
    """The network calls per image a cell made, as counted (cells written before calls were counted: their
    `nfe`, which is the calls for every method those cells ran)."""
    return c.get("calls", c["nfe"])


def label(c: dict) -> str:
    if c["side"] == "diffusers":
        at = f" at w = {c['w']:g}" if "w" in c else ""
        return f"{c['method']}{at}, {c['switches']}"
    if c.get("student"):
        baked = f", w = {c['student_w']:g} baked in" if "student_w" in c else ""
        return f"distilled student ({c['nfe']} step{'s' if c['nfe'] > 1 else ''}{baked}), {c['switches']}"
    cache = f", cache {c['cache']}" if c["cache"] > 1 else ""
    extra = {"interval": ", guidance interval [100, 700]", "afs": ", afs",
             "interval+afs": ", guidance interval [100, 700], afs"}.get(c.get("extra"), "")
    return f"{c['solver']} {c['skip']}{cache}{extra}, {c['switches']}"


def default_students() -> list[str]:
    """The embedded distilled student, where this install has one."""
    path = EMBEDDED.get("digits-cond-distilled")
    return [str(path)] if path is not None and path.exists() else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="digits-cond", help="the teacher: an embedded name or a checkpoint")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance w of a class-conditional teacher (default 2; 1 otherwise)")
    p.add_argument("--students", nargs="*", default=None,
                   help="distilled students of the teacher (default: the embedded digits-cond-distilled)")
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
    loaded, metric, judge = load_model(args.ckpt), classifier_metric(), load_digits_classifier().eval()
    classes = loaded.config.num_classes or 0
    guidance = args.guidance if args.guidance is not None else (2.0 if classes else 1.0)
    if guidance != 1.0 and not classes:
        raise SystemExit(f"--guidance: {args.ckpt} is not class-conditional; leave --guidance out")
    students = {}
    for path in (args.students if args.students is not None else default_students()):
        student = load_model(path)
        rec = recorded_sampling(student)
        if rec is None:
            raise SystemExit(f"--students: {path} is not a distilled student (no recorded steps and grid)")
        students[rec["steps"]] = (student, rec, path)
    # a student distilled at another w than the teacher's: the peer's multistep solvers run at that w too, so
    # that the student's w is no advantage diffusers is denied
    baked = {k: float(s.metadata["distilled"].get("guidance") or 1.0) for k, (s, _, _) in students.items()}
    student_ws = sorted(set(baked.values()) - {guidance})
    cells_path = Path(args.cells)
    cells_path.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(ln) for ln in cells_path.read_text().splitlines() if ln.strip()] if cells_path.exists() else []
    teacher = {"teacher": str(args.ckpt), "guidance": guidance}
    # cells of another teacher, size, batch or thread count are not comparable: they are left in the file, unused
    done = [c for c in done if (c.get("n"), c.get("batch"), c.get("threads"), c.get("teacher"), c.get("guidance"))
            == (args.n, args.batch, args.threads, teacher["teacher"], guidance)]
    shape = image_shape(loaded)
    x_T = {s: torch.randn(args.n, *shape, generator=torch.Generator().manual_seed(s)) for s in (0, 1)}
    y_all = torch.arange(args.n) % classes if classes else None       # the labels 0..9 in turn
    folder = tempfile.mkdtemp(prefix="frontier-unet-")
    export_diffusers(loaded, folder)

    # Phase 1: each side's fastest switches, one network call at the sampling batch.
    xb, tb = x_T[0][:args.batch], torch.full((args.batch,), 500)
    yb = None if y_all is None else y_all[:args.batch]
    peers = {s: peer_network(folder, s) for s in PEER_SWITCHES}
    ours = {(s, 1): make_sampler(loaded, our_config(s)) for s in OUR_SWITCHES}
    with torch.no_grad():
        calls = {("diffusers", s): (lambda c=c, d=d: c(xb.to(d), tb, yb)) for s, (c, d) in peers.items()}
        calls.update({("ddim", s): (lambda m=m.model: m(xb, tb, y=yb) if yb is not None else m(xb, tb))
                      for (s, _), m in ours.items()})
        t0 = time.perf_counter()
        call_s = {k: statistics.median(v) for k, v in interleaved(calls, args.rounds).items()}
    print(f"switch timing {time.perf_counter() - t0:.0f} s:", {f"{k[0]} {k[1]}": f"{v * 1e3:.1f} ms"
                                                               for k, v in call_s.items()}, flush=True)
    best = {side: min((k for k in call_s if k[0] == side), key=call_s.get)[1] for side in ("diffusers", "ddim")}
    print("fastest:", best, flush=True)

    # Phase 2: every method and NFE on each side, with that side's fastest switches.
    todo = [dict(side="diffusers", method=m, nfe=k, switches=best["diffusers"], cache=1, seed=0, **teacher)
            for m, (_, _, nfes) in PEER_METHODS.items() for k in nfes]
    todo += [dict(side="diffusers", method=m, nfe=k, switches=best["diffusers"], cache=1, seed=0, w=w, **teacher)
             for w in student_ws for m in ("DPM-Solver++ 2M", "DPM-Solver++ 3M", "UniPC") for k in (3, 4, 5, 6, 8)]
    todo += [dict(side="ddim", solver=s, skip=g, cache=c, extra=e, nfe=k, switches=best["ddim"], seed=0, **teacher)
             for (s, g, c, e), nfes in OUR_METHODS.items() for k in nfes]
    todo.append(dict(side="ddim", solver="ddim", skip="uniform", cache=1, extra="", nfe=50, switches=best["ddim"],
                     seed=1, **teacher))
    todo += [dict(side="ddim", solver="ddim", skip="student", cache=1, extra="", nfe=k, switches=best["ddim"],
                  seed=0, student=True, student_w=baked[k],
                  **teacher) for k in sorted(students)]
    results = ("fd", "seconds", "s_per_1000", "n", "batch", "threads", "calls", "rows", "on_label")
    key = lambda c: json.dumps({k: c[k] for k in sorted(c) if k not in results})  # noqa: E731

    def runner(cell: dict) -> tuple[Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                                    Callable[[], tuple[int, int]]]:
        """((x_T batch, labels) -> images with the cell's method, steps and switches; (network calls, image rows
        evaluated) per image of the last batch, counted, not assumed)."""
        made = [0, 0]
        if cell["side"] == "diffusers":
            call, dtype = peers[cell["switches"]]

            def counted(x, t, labels=None):
                made[0] += 1
                made[1] += len(x)
                return call(x, t, labels)

            def run(xb, yb):
                made[:] = [0, 0]
                out = peer_sample(counted, dtype, cell["method"], cell["nfe"], xb, loaded.prediction, yb,
                                  cell.get("w", guidance),
                                  classes)
                made[1] //= len(xb)
                return out
            return run, lambda: tuple(made)
        if cell.get("student"):
            student, rec, _ = students[cell["nfe"]]
            cfg = our_config(cell["switches"], steps=rec["steps"], skip=rec["skip"], solver="ddim")
            slot, model = ("student", cell["nfe"]), student
        else:
            extra = EXTRAS[cell["extra"]]
            cfg = our_config(cell["switches"], steps=cell["nfe"] + bool(extra.get("afs")), skip=cell["skip"],
                             solver=cell["solver"], cache_interval=cell["cache"], guidance=guidance, **extra)
            slot, model = (cell["switches"], cell["cache"]), loaded
        # one sampler per (switches, cache), reused across cells: a compiled network is compiled once
        if slot not in ours:
            ours[slot] = make_sampler(model, cfg)
        sampler = ours[slot]

        def run(xb, yb):
            net = sampler.model

            def counted(x, t, *rest, **kw):           # rows the network evaluates, whatever the walk's mix
                made[1] += len(x)
                return net(x, t, *rest, **kw)
            if hasattr(net, "reset_cache"):
                counted.reset_cache = net.reset_cache
            made[1] = 0
            sampler.model = counted
            try:
                out = sample_batch(sampler, xb, cfg, y=yb)
            finally:
                sampler.model = net
            made[0] = sampler.last_nfe
            made[1] //= len(xb)
            return out
        return run, lambda: tuple(made)

    def timed(run: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        images = torch.cat([run(x[i:i + args.batch], None if y_all is None else y_all[i:i + args.batch])
                            for i in range(0, args.n, args.batch)])
        return images, time.perf_counter() - t0

    finished = {key(c) for c in done}
    for cell in todo:
        if key(cell) in finished:
            continue
        with torch.no_grad():
            run, made = runner(cell)
            run(x_T[cell["seed"]][:args.batch], yb)   # warm-up, untimed: first calls of a call pattern (compilation)
            images, seconds = timed(run, x_T[cell["seed"]])
        calls, rows = made()
        images = images.float().clamp(-1, 1)
        cell.update(n=args.n, batch=args.batch, threads=args.threads, seconds=seconds, calls=calls, rows=rows,
                    s_per_1000=1000 * seconds / args.n, fd=metric.distance(images))
        if y_all is not None:                    # the share the digits classifier labels as the label asked for
            with torch.no_grad():
                cell["on_label"] = float((judge(images).argmax(1) == y_all).float().mean())
        with cells_path.open("a") as f:
            f.write(json.dumps(cell) + "\n")
        done.append(cell)
        print(f"{label(cell):55s} calls {calls:3d} rows {rows:3d} seed {cell['seed']}: FD {cell['fd']:7.2f}, "
              f"{cell['s_per_1000']:6.1f} s/1000  [{time.perf_counter() - start:.0f} s]", flush=True)

    wanted = {key(c) for c in todo}
    cells = [c for c in done if key(c) in wanted]
    report(args, cells, runner, timed, call_s, best, students, guidance, x_T, start, cells_path)


def report(args, cells, runner, timed, call_s, best, students, guidance, x_T, start, cells_path) -> None:
    """Re-time the two winners in interleaved rounds, then write the section and the figure."""
    ddim50 = next(c for c in cells if c["side"] == "diffusers" and c.get("method") == "DDIM" and c["nfe"] == 50)
    bar = ddim50["fd"]
    # With guidance, a lower FD can also mean weaker guidance (more varied, less on-label samples): a cell is at the
    # bar only if it is also as often on-label as DDIM-50, within one percentage point.
    label_bar = ddim50["on_label"] - 0.01 if "on_label" in ddim50 else None
    at_quality = lambda c: c["fd"] <= bar and (label_bar is None or c["on_label"] >= label_bar)  # noqa: E731
    ours50 = {c["seed"]: c["fd"] for c in cells if c["side"] == "ddim" and c["solver"] == "ddim"
              and c["skip"] == "uniform" and c["nfe"] == 50 and c["cache"] == 1}
    noise = abs(ours50[0] - ours50[1])
    at_bar = {side: min((c for c in cells if c["side"] == side and c["seed"] == 0 and at_quality(c)),
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
    guided = f", classifier-free guidance w = {guidance:g} with the labels 0..9 in turn" if guidance != 1 else ""
    student_note = (f" Distilled students ({', '.join(str(students[k][2]) for k in sorted(students))}) carry the "
                    f"guidance they were distilled at in their weights: one call of B per step." if students else "")
    lines = ["## Quality per second against diffusers (`benchmarks/frontier.py`)", "",
             f"Machine: {machine()}; {args.threads} thread(s). Teacher: {args.ckpt}{guided}, exported to a "
             f"diffusers `UNet2DModel` (same weights); {args.n} samples per cell from the same x_T (seed 0), batch "
             f"{args.batch}; time = the whole sampling loop (network, solver, scheduler); quality = the digits "
             "classifier's Frechet distance (not FID; lower is better). One run per cell: times carry about "
             f"±10% of machine noise. calls = network calls per image; rows = image rows the network evaluated "
             f"per image (a guided call evaluates 2 rows per image: the label and the null label).{student_note}",
             "", "One network call at batch %d, each side's switch sets (median of %d interleaved rounds; the fastest "
             "is used below):" % (args.batch, args.rounds), "",
             "| side | switches | ms per call |", "|---|---|---:|"]
    lines += [f"| {side} | {s}{' (fastest)' if best[side] == s else ''} | {1e3 * v:.1f} |"
              for (side, s), v in call_s.items()]
    ol = lambda c: f"{100 * c['on_label']:.1f}%" if "on_label" in c else "-"  # noqa: E731
    label_rule = (f" and on the requested label at least {100 * label_bar:.1f}% of the time (DDIM-50's "
                  f"{ol(ddim50)} less one point)" if label_bar is not None else "")
    lines += ["", f"Quality bar: diffusers DDIM-50 (DDIMScheduler, 50 steps{', guided' if guided else ''}) FD "
              f"{bar:.2f}{label_rule}; seed-to-seed noise (our DDIM-50, seed 0 vs 1) {noise:.2f}.", "",
              "| side | fastest at the bar | calls | rows | classifier FD | on-label | s per 1000 images (its cell) | "
              f"re-timed: median of {args.final_rounds} interleaved rounds (slowest-fastest) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for side in ("diffusers", "ddim"):
        c = at_bar[side]
        lines.append(f"| {side} | {label(c)} | {nfe_made(c)} | {c.get('rows', '')} | {c['fd']:.2f} | {ol(c)} | "
                     f"{c['s_per_1000']:.1f} | {final_s[side]:.2f} ({max(final[side]):.2f}-{min(final[side]):.2f}) |")
    lines += ["", f"**At equal quality (DDIM-50's), ddim's best configuration is {ratio:.2f}x as fast as "
              f"diffusers' best** (the re-timed medians) on the same weights and machine; against diffusers' "
              f"DDIM-50 itself ({ddim50['s_per_1000']:.1f} s per 1000, its cell) it is "
              f"{ddim50['s_per_1000'] / final_s['ddim']:.2f}x faster.", "",
              "Each side's frontier (no other cell of that side is both faster and of lower FD):", "",
              "| side | configuration | calls | rows | classifier FD | on-label | s per 1000 images |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for side in ("diffusers", "ddim"):
        for c in pareto([c for c in cells if c["side"] == side and c["seed"] == 0]):
            lines.append(f"| {side} | {label(c)} | {nfe_made(c)} | {c.get('rows', '')} | {c['fd']:.2f} | {ol(c)} | "
                         f"{c['s_per_1000']:.1f} |")
    studs = sorted((c for c in cells if c.get("student")), key=lambda c: c["nfe"])
    if studs:
        lines += ["", "At each student's own quality (its FD, and its on-label share less one point), the fastest diffusers "
                  "cell that reaches it; the cells' own times (one run each); ratio = diffusers' time / the "
                  "student's (above 1: the student is faster):", "",
                  "| student | rows | classifier FD | on-label | s per 1000 | diffusers' fastest as good | rows | "
                  "classifier FD | on-label | s per 1000 | ratio |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for st in studs:
            peer = min((c for c in cells if c["side"] == "diffusers" and c["seed"] == 0 and c["fd"] <= st["fd"]
                        and ("on_label" not in st or c["on_label"] >= st["on_label"] - 0.01)),
                       key=lambda c: c["s_per_1000"], default=None)
            mine = (f"| {st['nfe']} step{'s' if st['nfe'] > 1 else ''} | {st.get('rows', '')} | {st['fd']:.2f} | {ol(st)} | "
                    f"{st['s_per_1000']:.1f} |")
            lines.append(mine + (" none | | | | | |" if peer is None else
                                 f" {label(peer)}, {nfe_made(peer)} calls | {peer.get('rows', '')} | {peer['fd']:.2f} | "
                                 f"{ol(peer)} | {peer['s_per_1000']:.1f} | "
                                 f"{peer['s_per_1000'] / st['s_per_1000']:.2f}x |"))
    lines += ["", "Every cell:", "", "| side | configuration | calls | rows | classifier FD | on-label | "
              "s per 1000 images |", "|---|---|---:|---:|---:|---:|---:|"]
    for c in sorted(cells, key=lambda c: (c["side"], label(c), c["nfe"], c["seed"])):
        seed = " (seed 1)" if c["seed"] else ""
        lines.append(f"| {c['side']} | {label(c)}{seed} | {nfe_made(c)} | {c.get('rows', '')} | {c['fd']:.2f} | "
                     f"{ol(c)} | {c['s_per_1000']:.1f} |")
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
