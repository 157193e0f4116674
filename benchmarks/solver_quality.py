"""Sample quality of each solver at few network calls, on the embedded digits model (16x16).

For every solver and step count S, N samples from the same x_T
(seed 0) are scored with the digits classifier's Frechet distance (`ddim.evaluation.classifier_metric`: the
digits classifier's features, not Inception's; lower is better); a cell says how many network calls a sample
took where that is not S (counted by the sampler). Seed-to-seed noise: the same solver and S
from another seed's x_T, for the solvers named by --noise-solvers; a difference between two solvers smaller
than that is not a difference. Accuracy as an ODE solver on this network: the RMS distance of the first
--ref-n samples to the ODE's solution from the same x_T, taken as dpm++2m at --ref-steps steps (its own error
is estimated by unipc at as many steps). Prints markdown tables (docs/SOLVERS.md keeps a copy).

    python benchmarks/solver_quality.py [--n 500] [--batch 250] [--nfe 5 8 10 15 20] [--skip trailing]
        [--ref-n 100] [--ref-steps 500]
"""

from __future__ import annotations

import argparse
import time

import torch

from ddim import DDIMSampler
from ddim.evaluation import classifier_metric
from ddim.generate import load_model
from ddim.sampling import SOLVERS


def samples(sampler: DDIMSampler, solver: str, steps: int, skip: str, n: int, batch: int, seed: int) -> tuple:
    """n images [n, 1, 16, 16] in [-1, 1] from x_T drawn with torch.Generator(seed), and the network calls per image
    (as the sampler counted them: every batch walks the same plan)."""
    x_T = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = torch.cat([sampler.sample(x_T[i:i + batch], steps, skip=skip, solver=solver)
                         for i in range(0, n, batch)])
    return out.clamp(-1, 1), sampler.last_nfe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="samples per cell")
    p.add_argument("--batch", type=int, default=250, help="sampling batch size")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 8, 10, 15, 20],
                   help="steps S per solver (= network calls per sample for one-call solvers)")
    p.add_argument("--skip", default="trailing",
                   help="timestep grid (ddim.schedule.SKIPS); trailing ends at T - 1, the best here at few steps")
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), help="solver names")
    p.add_argument("--noise-solvers", nargs="*", default=["dpm++3m", "dpm++3m-shipped"],
                   help="solvers also sampled from seed 1, for the seed-to-seed noise rows")
    p.add_argument("--ref-n", type=int, default=100, help="samples compared with the ODE reference solution")
    p.add_argument("--ref-steps", type=int, default=500, help="steps of the reference solution")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a shared 2-core CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model()
    sampler = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction)
    metric = classifier_metric()
    ref, _ = samples(sampler, "dpm++2m", args.ref_steps, args.skip, args.ref_n, args.batch, 0)
    check, _ = samples(sampler, "unipc", args.ref_steps, args.skip, args.ref_n, args.batch, 0)
    rms = lambda images: (images[:args.ref_n] - ref).pow(2).mean().sqrt().item()      # noqa: E731
    print(f"reference: dpm++2m at {args.ref_steps} steps; unipc at as many is {rms(check):.2e} from it "
          f"[{time.perf_counter() - start:.0f} s]", flush=True)
    fd, nfe_seen, dist = {}, {}, {}
    for seed, names in ((0, args.solvers), (1, args.noise_solvers)):
        for name in names:
            for nfe in args.nfe:
                images, calls = samples(sampler, name, nfe, args.skip, args.n, args.batch, seed)
                fd[name, nfe, seed], nfe_seen[name, nfe] = metric.distance(images), calls
                if seed == 0:
                    dist[name, nfe] = rms(images)
                print(f"seed {seed} {name:16s} S {nfe:3d} (NFE {calls}): FD {fd[name, nfe, seed]:.2f}"
                      + (f", RMS to the ODE solution {dist[name, nfe]:.4f}" if seed == 0 else "") + "  "
                      f"[{time.perf_counter() - start:.0f} s]", flush=True)
    head = "| solver | " + " | ".join(f"S = {n}" for n in args.nfe) + " |"

    def cell(name: str, n: int, text: str) -> str:
        made = nfe_seen[name, n]
        return text if made == n else f"{text} (NFE {made})"
    lines = [f"Embedded digits model, {args.n} samples per cell, skip={args.skip!r}, x_T from seed 0; classifier "
             "Frechet distance (lower is better) at S steps; where a sample took other than S network calls, the cell "
             "says how many (NFE).", "", head, "|---|" + "---:|" * len(args.nfe)]
    for name in args.solvers:
        lines.append(f"| {name} | " + " | ".join(cell(name, n, f"{fd[name, n, 0]:.2f}") for n in args.nfe) + " |")
    for name in args.noise_solvers:
        lines.append(f"| {name}, seed 1 | " + " | ".join(f"{fd[name, n, 1]:.2f}" for n in args.nfe) + " |")
    for name in args.noise_solvers:
        lines.append(f"| seed-to-seed noise, {name} | "
                     + " | ".join(f"{abs(fd[name, n, 0] - fd[name, n, 1]):.2f}" for n in args.nfe) + " |")
    lines += ["", f"RMS distance of the first {args.ref_n} samples (pixels in [-1, 1]) to the ODE's solution from the "
              f"same x_T (dpm++2m at {args.ref_steps} steps; unipc at as many is {rms(check):.1e} from it):", "",
              head, "|---|" + "---:|" * len(args.nfe)]
    for name in args.solvers:
        lines.append(f"| {name} | " + " | ".join(cell(name, n, f"{dist[name, n]:.4f}") for n in args.nfe) + " |")
    lines.append(f"\nTotal run {time.perf_counter() - start:.0f} s.")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
