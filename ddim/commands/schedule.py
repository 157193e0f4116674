"""`ddim schedule`: a step grid fitted to one model, solver and number of network calls (GITS), as a JSON file
that every sampling command takes as `--skip steps.json`."""

from __future__ import annotations

import argparse

from ddim.commands.common import Formatter, add_model_args, add_output_args, labels, load, nonnegative_int, \
    positive_int
from ddim.errors import DDIMError
from ddim.generate import image_shape, initial_noise, make_sampler, sample_generators
from ddim.io import write_json_atomic
from ddim.runs import prepare_output
from ddim.sampling import SOLVERS, make_solver
from ddim.sampling.gits import fit_gits

EPILOG = """examples:
  ddim schedule --solver dpm++2m --nfe 6 --out steps.json          (the embedded digits model)
  ddim sample --solver dpm++2m --skip steps.json --out samples
The fit makes one network call per candidate timestep on --n samples (the teacher), then searches."""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("schedule", help="fit a step grid to a model, solver and call count (GITS) to a JSON file",
                       formatter_class=Formatter, epilog=EPILOG)
    add_model_args(s, fast=False)
    g = s.add_argument_group("fit")
    g.add_argument("--solver", default="dpm++2m", choices=tuple(SOLVERS), help="the deterministic solver the grid "
                   "is for")
    g.add_argument("--nfe", type=positive_int, required=True, help="network calls of the grid (its length)")
    g.add_argument("--n", type=positive_int, default=256, help="teacher samples")
    g.add_argument("--candidates", type=positive_int, default=40, help="timesteps per candidate grid (a logsnr "
                   "and a trailing one; their union is the teacher's grid)")
    g.add_argument("--refine", type=nonnegative_int, default=2, help="passes of the search against the end's "
                   "error after GITS's dynamic programming (0: GITS alone; docs/SOLVERS.md)")
    g.add_argument("--teacher", type=positive_int, default=250, help="levels of the teacher's fine logsnr grid")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="the teacher's noise")
    g.add_argument("--class", dest="class_", default=None, metavar="K", help="class-conditional models: the "
                   "teacher's label, -1 for none, or 'all'")
    g.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight of the teacher")
    add_output_args(s, "steps.json", "the JSON file of timesteps")
    s.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    if not make_solver(args.solver).deterministic:
        raise DDIMError(f"--solver {args.solver}: a fitted grid is for a deterministic solver")
    if args.candidates < 2:
        raise DDIMError(f"--candidates must be at least 2, got {args.candidates}")
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    y = labels(args, loaded, args.n)
    if y is None and args.guidance != 1:
        raise DDIMError(f"--guidance {args.guidance} needs class labels: give --class")
    from ddim.config import SampleConfig
    sampler = make_sampler(loaded, SampleConfig(), args.device)
    x_T = initial_noise(image_shape(loaded), sample_generators(args.seed, range(args.n)), args.device)
    taus = fit_gits(sampler, args.nfe, args.solver, x_T=x_T, candidates=args.candidates, teacher=args.teacher,
                    refine=args.refine,
                    y=None if y is None else y.to(args.device), guidance=args.guidance)
    write_json_atomic(out, {"timesteps": taus[::-1], "solver": args.solver, "nfe": args.nfe,
                            "source": loaded.metadata["source"], "method": "GITS (Chen et al. 2024)",
                            "n": args.n, "candidates": args.candidates, "teacher": args.teacher,
                            "refine": args.refine, "seed": args.seed})
    print(f"wrote {len(taus)} timesteps to {out}: {taus[::-1]}")
