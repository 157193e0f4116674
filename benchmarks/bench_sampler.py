"""The sampler's own overhead per step: this package against diffusers' DDIMScheduler loop, in one run, and
the overhead of each solver (`ddim.sampling.SOLVERS`) against the network it would drive.

The model is trivial (one multiply) so that what is timed is the sampler's work: planning, the eq. 12
update, noise and bookkeeping (for the multistep solvers also their history and combinations). Every loop
runs 50 steps on the same x_T; repetitions are interleaved and the median is reported. The solver table is at
batch 8 and sets each solver's overhead against one forward of the `cifar10` U-Net at batch 8 on this machine
(goal: under 1% of a step). Writes its section of BENCHMARKS.md.

    python benchmarks/bench_sampler.py [--repeats 30] [--no-network] [--no-write]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.benchmarking import interleaved, machine, median_seconds, medians, write_report
from ddim.sampling import SOLVERS


def trivial_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x * 0.5


def model_only(x_T: torch.Tensor, steps: int) -> None:
    t = torch.zeros(len(x_T), dtype=torch.long)
    for _ in range(steps):
        trivial_model(x_T, t)


def ours(x_T: torch.Tensor, steps: int, eta: float, solver: str = "ddim") -> None:
    DDIMSampler(trivial_model, NoiseSchedule.linear()).sample(x_T, steps=steps, eta=eta, solver=solver,
                                                              generator=torch.Generator().manual_seed(0))


def diffusers_loop(x_T: torch.Tensor, steps: int, eta: float) -> None:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    sched.set_timesteps(steps)
    g, x = torch.Generator().manual_seed(0), x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(trivial_model(x, t.expand(len(x))), t, x, eta=eta, generator=g).prev_sample


def network_ms(batch: int, repeats: int = 5) -> float:
    """Median time of one forward of the `cifar10` U-Net (random weights, float32, eager) at this batch size."""
    from ddim.models import PRESETS, UNet

    torch.manual_seed(0)
    net = UNet(PRESETS["cifar10"]).eval()
    x, t = torch.randn(batch, 3, 32, 32), torch.full((batch,), 500, dtype=torch.long)
    with torch.inference_mode():
        net(x, t)
        return 1e3 * median_seconds(lambda: net(x, t), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed repetitions of each loop (median reported)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps S")
    p.add_argument("--solver-batch", type=int, default=8, help="batch size of the per-solver table")
    p.add_argument("--no-network", action="store_true", help="skip timing the cifar10 U-Net (no share column)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    S = args.steps
    rows = []
    for batch in (1, 64):
        for eta in (0.0, 1.0):
            x_T = torch.randn(batch, 3, 32, 32)
            fns = {"ddim": lambda: ours(x_T, S, eta), "diffusers": lambda: diffusers_loop(x_T, S, eta),
                   "model": lambda: model_only(x_T, S)}
            med = medians(interleaved(fns, args.repeats))
            per_step = {k: (med[k] - med["model"]) / S * 1e6 for k in ("ddim", "diffusers")}
            rows.append((batch, eta, per_step["ddim"], per_step["diffusers"], per_step["ddim"] / per_step["diffusers"]))
            print(f"batch {batch:3d} eta {eta}: ddim {per_step['ddim']:8.1f} us/step, "
                  f"diffusers {per_step['diffusers']:8.1f} us/step, ratio {rows[-1][-1]:.2f}")
    B = args.solver_batch
    x_T = torch.randn(B, 3, 32, 32)
    fns = {name: (lambda name=name: ours(x_T, S, 0.0, name)) for name in SOLVERS}
    med = medians(interleaved({**fns, "model": lambda: model_only(x_T, S)}, args.repeats))
    net = None if args.no_network else network_ms(B)
    solver_rows = []
    for name in SOLVERS:
        us = (med[name] - med["model"]) / S * 1e6
        share = None if net is None else us / (us + 1e3 * net) * 100
        solver_rows.append((name, us, share))
        print(f"batch {B} {name:16s} {us:8.1f} us/step" + ("" if net is None else
              f", {share:.3f}% of a step with the cifar10 U-Net ({net:.1f} ms/forward)"))
    body = [
        "## Sampler overhead per step (`benchmarks/bench_sampler.py`)",
        "",
        f"Machine: {machine()}. Trivial model (one multiply), {S} steps on x_T [B, 3, 32, 32], median of "
        f"{args.repeats} interleaved runs; the model's own time is subtracted. Goal: ddim <= diffusers.",
        "",
        "| batch | eta | ddim (us/step) | diffusers DDIMScheduler (us/step) | ratio ddim/diffusers |",
        "|---:|---:|---:|---:|---:|",
    ] + [f"| {b} | {e} | {o:.1f} | {d:.1f} | {r:.2f} |" for b, e, o, d, r in rows] + [
        "",
        f"Per solver, batch {B}, the same loop (eta = 0)" + ("" if net is None else
        f"; share = overhead / (overhead + one forward of the `cifar10` U-Net at batch {B}, {net:.1f} ms here)")
        + ". Goal: every share under 1%.",
        "",
        "| solver | overhead (us/step) | share of a step |",
        "|---|---:|---:|",
    ] + [f"| {n} | {us:.1f} | {'-' if sh is None else f'{sh:.3f}%'} |" for n, us, sh in solver_rows]
    if not args.no_write:
        write_report(__file__, "bench_sampler", "\n".join(body))


if __name__ == "__main__":
    main()
