"""`ddim eval table1 | solvers | table2 | inversion | timing`: the paper's Table 1, Table 2 and Figure 4, the
solver table and the inversion table, as markdown, CSV and a plot (`ddim.evaluation`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim import evaluation as ev
from ddim.commands.common import (Formatter, add_model_args, add_sampler_args, load, positive_int, sample_config,
                                  skip_arg)
from ddim.config import DTYPES
from ddim.sampling import SOLVERS
from ddim.schedule import SKIPS

EPILOG = """examples:
  ddim eval table1 --n 500 --out eval                     (embedded digits model, classifier Frechet distance)
  ddim eval table1 --ckpt cifar10.ckpt --config cifar10 --skip quad --metric inception \\
      --reference cifar10-train-stats.npz --inception-weights pt_inception-2015-12-05-6726825d.pth --n 50000
then `ddim eval table1 --help`, `ddim eval table2 --help`, `ddim eval timing --help`"""


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="reproduce the paper's Table 1, Table 2 and Figure 4 (md, csv, png)",
                       formatter_class=Formatter, description=ev.__doc__.split("\n\n")[0], epilog=EPILOG)
    evals = e.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")

    def common(p: argparse.ArgumentParser, default_steps, batch: int, stochastic: bool, seed: bool,
               solver: bool = True, afs: bool = True) -> None:
        add_model_args(p)
        add_sampler_args(p, steps="many", stochastic=stochastic, seed=seed, default_steps=default_steps, batch=False,
                         solver=solver, classes=False, afs=afs)
        g = p.add_argument_group("evaluation")
        g.add_argument("--batch-size", type=positive_int, default=batch, help="images per network call")
        g.add_argument("--out", default="eval", help="output folder (md, csv, png and a json of the settings)")
        g.add_argument("--overwrite", action="store_true", help="recompute everything in --out, replacing an "
                       "earlier run (without it a run with the same settings resumes, keeping finished cells)")
        g.add_argument("--quiet", action="store_true", help="no progress output")

    p = evals.add_parser("table1", help="Frechet distance vs S for each eta and sigma-hat (Table 1)",
                         formatter_class=Formatter, epilog="example: ddim eval table1 --n 500 --steps 10 20 50 100 "
                         "1000 --etas 0 0.2 0.5 1 --out eval")
    common(p, ev.TABLE1_STEPS, 250, stochastic=False, seed=True, solver=False)   # its rows are the ddim family
    g = p.add_argument_group("table 1")
    g.add_argument("--etas", type=float, nargs="*", default=list(ev.TABLE1_ETAS), help="eta values, one row each "
                   "(give none for the sigma-hat row alone)")
    g.add_argument("--no-sigma-hat", action="store_true", help="leave out the sigma-hat (DDPM, variance beta) row")
    g.add_argument("--clip-denoised", action="store_true", help="clip x0_pred to [-1, 1] at every step")
    g.add_argument("--n", type=int, default=1000, help="samples per cell (>= 2; the paper uses 50000)")
    g.add_argument("--metric", default="classifier", choices=ev.METRICS, help="'classifier': Frechet distance in "
                   "the digits classifier's features vs the real digits (1x16x16 models; not FID); 'inception': FID")
    g.add_argument("--reference", default=None, help="inception: a statistics .npz (mu, sigma; `ddim fid-stats`) "
                   "or real images (folder, .npz); classifier: real images (default: the 1797 digits)")
    g.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth for --metric "
                   "inception (else $DDIM_INCEPTION_WEIGHTS, else the torch hub cache)")
    p.set_defaults(fn=run_table1, resume_hint="rerun the command to resume its unfinished cells")

    p = evals.add_parser("solvers", help="Frechet distance vs network calls for each solver", formatter_class=Formatter,
                         epilog="example: ddim eval solvers --n 1000 --nfes 5 8 10 15 20 50 --out eval")
    add_model_args(p)
    g = p.add_argument_group("solvers")
    g.add_argument("--solvers", nargs="+", default=["ddim", "plms", "dpm++2m", "dpm++3m", "unipc"],
                   metavar="SOLVER[@SKIP][,afs][,gi=LO:HI][,SETTING=V]",
                   help=f"rows: a solver ({', '.join(SOLVERS)}), optionally its grid (@optimized), the analytic "
                        "first step (,afs), a guidance interval (,gi=100:600) and churn's or restart's settings "
                        "(,s_churn=10 ,restart=0.1:1 ,k=1 ,inner=2); e.g. dpm++2m@optimized,afs")
    g.add_argument("--nfes", type=positive_int, nargs="+", default=list(ev.SOLVER_NFES), help="steps per "
                   "solver (= network calls for one-call solvers; the table reports the calls each sample made)")
    g.add_argument("--skip", default="trailing", choices=SKIPS, help="the timestep grid of rows that name none")
    g.add_argument("--guidance", type=float, default=1.0, help="class-conditional models (sample i gets label "
                   "i %% classes): the classifier-free guidance weight w")
    g.add_argument("--seed", type=int, default=0, help="sample i of every cell starts from the x_T of (seed, i)")
    g.add_argument("--n", type=int, default=1000, help="samples per cell")
    g.add_argument("--batch-size", type=positive_int, default=250, help="images per network call")
    g.add_argument("--metric", default="classifier", choices=ev.METRICS, help="as in table1")
    g.add_argument("--reference", default=None, help="as in table1")
    g.add_argument("--inception-weights", default=None, help="as in table1")
    g.add_argument("--out", default="eval", help="output folder")
    g.add_argument("--overwrite", action="store_true", help="recompute everything in --out")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=run_solvers, resume_hint="rerun the command to resume its unfinished cells")

    p = evals.add_parser("table2", help="reconstruction error vs S (Table 2)", formatter_class=Formatter,
                         epilog="example: ddim eval table2 --input digits --n 256 --steps 10 20 50 100 200 500 1000 "
                                "--solvers ddim dpm++2m unipc --skip logsnr --out eval")
    common(p, ev.TABLE2_STEPS, 256, stochastic=False, seed=False, afs=False)
    g = p.add_argument_group("table 2")
    g.add_argument("--input", default="digits", help="images to encode: 'digits', a folder, an image or an .npz")
    g.add_argument("--n", type=int, default=256, help="use the first n images")
    g.add_argument("--solvers", nargs="+", default=None, choices=tuple(SOLVERS),
                   help="solvers, a row each (default: --solver)")
    p.set_defaults(fn=run_table2, resume_hint="rerun the command to resume its unfinished cells")

    p = evals.add_parser("inversion", help="reconstruction error through inversion for every method, guidance and "
                         "dtype, with network calls and seconds per image", formatter_class=Formatter,
                         epilog="example: ddim eval inversion --ckpt digits-cond --n 64 --steps 10 20 50 100 "
                                "--methods ddim ddim+refine1 bdia edict --guidance 1 3 --dtypes float32 float64 "
                                "--out eval-inversion")
    add_model_args(p, fast=False)
    g = p.add_argument_group("inversion table")
    g.add_argument("--steps", type=positive_int, nargs="+", default=list(ev.INVERSION_STEPS),
                   help="S, encoding and decoding steps, one column each")
    g.add_argument("--methods", nargs="+", default=list(ev.INVERSION_METHODS), metavar="METHOD",
                   help="rows: an invertible solver (" + ", ".join(ev.invertible_solvers()) + "), or "
                        "SOLVER+refineK (K extra calls per encoding step, e.g. ddim+refine2)")
    g.add_argument("--guidance", dest="guidance_specs", nargs="+", default=None, metavar="W",
                   help="CFG weights (1: unguided) or cfg++:L (CFG++, L in [0, 1]), each on the images' own labels "
                        "(default: 1 and 3 on a class-conditional model, else 1)")
    g.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=DTYPES,
                   help="float32; float64: the network and the latents in float64 (the roundoff floor)")
    g.add_argument("--skip", default="uniform", type=skip_arg, metavar="SKIP", help="the timestep grid")
    g.add_argument("--input", default="digits", help="images to encode: 'digits' (with their labels), a folder, "
                   "an image or an .npz (guidance other than 1 needs 'digits')")
    g.add_argument("--n", type=int, default=64, help="use the first n images")
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per network call")
    g.add_argument("--out", default="eval", help="output folder (inversion.md, .csv, .png, .json)")
    g.add_argument("--overwrite", action="store_true", help="recompute everything in --out")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=run_inversion, resume_hint="rerun the command to resume its unfinished cells")

    p = evals.add_parser("timing", help="seconds per image vs S, with a linear fit (Figure 4)",
                         formatter_class=Formatter,
                         epilog="example: ddim eval timing --batch-size 64 --repeats 3 --out eval")
    common(p, ev.TIMING_STEPS, 64, stochastic=True, seed=False)
    g = p.add_argument_group("timing")
    g.add_argument("--repeats", type=int, default=3, help="timed runs per S (the median is reported)")
    g.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.set_defaults(fn=run_timing, resume_hint="rerun the command to resume its unfinished cells")


def _config(args: argparse.Namespace):
    return sample_config(args, steps=args.steps[0])     # the steps are a list here: each S is one cell


def run_table1(args: argparse.Namespace) -> None:
    config = _config(args)
    rows = ev.table1(load(args), config, steps=args.steps, etas=args.etas, sigma_hat=not args.no_sigma_hat,
                     n=args.n, metric=args.metric, reference=args.reference, inception_weights=args.inception_weights,
                     device=args.device, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "table1.md").read_text())
    print(f"wrote {args.out}/table1.md, table1.csv, table1.png ({len(rows)} rows)")


def run_solvers(args: argparse.Namespace) -> None:
    config = sample_config(args, steps=args.nfes[0])
    rows = ev.solvers_table(load(args), config, solvers=args.solvers, nfes=args.nfes, n=args.n, metric=args.metric,
                            reference=args.reference, inception_weights=args.inception_weights, device=args.device,
                            out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "solvers.md").read_text())
    print(f"wrote {args.out}/solvers.md, solvers.csv, solvers.png ({len(rows)} cells)")


def run_table2(args: argparse.Namespace) -> None:
    config = _config(args)
    rows = ev.table2(load(args), config, steps=args.steps, images=args.input, n=args.n, solvers=args.solvers,
                     device=args.device, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "table2.md").read_text())
    print(f"wrote {args.out}/table2.md, table2.csv, table2.png ({len(rows)} rows)")


def run_inversion(args: argparse.Namespace) -> None:
    config = sample_config(args, steps=args.steps[0])
    loaded = load(args)
    guidance = args.guidance_specs or (["1", "3"] if getattr(loaded.config, "num_classes", 0) else ["1"])
    rows = ev.inversion_table(loaded, config, steps=args.steps, methods=args.methods, guidance=guidance,
                              dtypes=args.dtypes, images=args.input, n=args.n, device=args.device, out=args.out,
                              overwrite=args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "inversion.md").read_text())
    print(f"wrote {args.out}/inversion.md, inversion.csv, inversion.png ({len(rows)} cells)")


def run_timing(args: argparse.Namespace) -> None:
    config = _config(args)
    rows = ev.timing(load(args), config, steps=args.steps, device=args.device, repeats=args.repeats,
                     warmup=args.warmup, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "timing.md").read_text())
    print(f"wrote {args.out}/timing.md, timing.csv, timing.png ({len(rows)} rows)")
