"""GITS (Chen et al., ICML 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): a step grid
fitted to one model, solver and number of network calls by dynamic programming on one fine teacher run.

1. The teacher: the solver walks a fine grid (a "logsnr" grid of `teacher` levels) through the candidate
   timesteps (the union of a "logsnr" and a "trailing" grid of `candidates` levels) from a few hundred
   noises; it records x and the network's prediction at every candidate (one network call per level).
2. The cost of a step from candidate i to candidate j, after candidate p: the solver's own step from the
   teacher's x at i, with the teacher's predictions at p and i as its history, against the teacher's x at j
   (mean over samples of the L2 norm). The history of one step makes the DP second order (state: the last two
   levels), so a multistep solver is fitted with its second-order formula; a solver without history with its
   step alone (GITS's first-order cost). The last step to clean data is costed against the teacher's end.
3. The grid of `nfe` calls from the top candidate with the least total cost, by dynamic programming.
4. (`refine` > 0, an addition to GITS) The DP adds absolute local errors, so it cannot use errors that cancel
   along a walk. Refinement walks the solver on the teacher's noises: it keeps the best of the DP's grid and
   the "logsnr", "karras" and "optimized" grids of the same length, then moves one timestep at a time where
   the end's error against the teacher's end is smaller (`refine` passes of shrinking moves, then moves of one
   timestep; nfe network calls per trial walk, about 2 nfe trials per pass).

Costs are computed from the teacher's tensors with no network call; the DP is host arithmetic.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.noise import Generator, randn
from ddim.sampling.plan import Step, resolve_taus
from ddim.sampling.multistep import log_snr
from ddim.sampling.registry import make_solver
from ddim.sampling.sampler import DDIMSampler
from ddim.sampling.solvers import Solver
from ddim.sampling.steps import predict_eps_x0

__all__ = ["fit_gits", "candidate_timesteps"]


def candidate_timesteps(sampler: DDIMSampler, candidates: int) -> list[int]:
    """The fine grid GITS chooses from, ascending: a "logsnr" and a "trailing" grid of `candidates` levels each
    (trailing reaches T - 1, a zero-SNR top included; logsnr crowds the clean end)."""
    T, ac = sampler.schedule.T, sampler.schedule.alphas_cumprod
    n = min(candidates, T)
    both = set(resolve_taus(T, n, "logsnr", ac).tolist()) | set(resolve_taus(T, n, "trailing", ac).tolist())
    return sorted(both)


def _for_costs(solver: Solver) -> Solver:
    """A copy whose order is not lowered at the end of a walk (a cost is one step in the middle of one)."""
    run = copy.copy(solver)
    if hasattr(run, "lower_order_final"):
        run.lower_order_final = False
    return run


@torch.no_grad()
def fit_gits(sampler: DDIMSampler, nfe: int, solver: str | Solver = "dpm++2m", n: int = 256,
             shape: tuple[int, ...] | None = None, candidates: int = 40, generator: Generator = None,
             x_T: Tensor | None = None, device: torch.device | str = "cpu", teacher: int = 250, refine: int = 0,
             **options
             ) -> list[int]:
    """The ascending timesteps of an `nfe`-call grid for `sampler`'s model and `solver` (GITS, module doc).

    The teacher starts from `x_T` [n, ...] if given, else from n noises of `shape` (one sample's shape) drawn
    from `generator`; `options` are the walk's (y, guidance, clip_denoised, guidance_interval, ...). refine:
    passes of the refinement against the end's error (module docstring, step 4; 0: GITS alone). teacher: the
    levels of the teacher's "logsnr" grid, walked with the candidates (teacher + candidates network calls).
    Pass the result as `skip=` with `steps=nfe` (or save it with `ddim schedule`).
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise DDIMError(f"nfe must be a positive integer, got {nfe!r}")
    for v, name, lo in ((candidates, "candidates", 2), (teacher, "teacher", 1), (refine, "refine", 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DDIMError(f"{name} must be an integer >= {lo}, got {v!r}")
    template = make_solver(solver)
    if not template.deterministic:
        raise DDIMError(f"solver: GITS fits a grid for a deterministic solver (an ODE), got {template!r}")
    cand = candidate_timesteps(sampler, candidates)
    if nfe > len(cand):
        raise DDIMError(f"nfe={nfe} is more than the {len(cand)} candidate timesteps; raise candidates")
    if x_T is None:
        if shape is None:
            raise DDIMError("fit_gits needs x_T or the shape of one sample")
        x_T = randn((n, *shape), generator, device, torch.float32)
    ac = sampler.schedule.alphas_cumprod.tolist()
    # 1. the teacher: a fine walk through every candidate; x and the prediction at each candidate (top first).
    fine = sorted(set(cand) | set(resolve_taus(sampler.schedule.T, teacher, "logsnr", sampler.schedule.alphas_cumprod)
                                  .tolist()))
    x_all, x0_all = [x_T], []
    for _, x, x0 in sampler.iter_sample(x_T, len(fine), skip=fine, solver=template, **options):
        x_all.append(x)
        x0_all.append(x0)
    where = {t: len(fine) - 1 - k for k, t in enumerate(fine)}             # timestep -> its step in the walk
    top_first = cand[::-1]
    G = len(top_first)
    xs = [x_all[where[t]] for t in top_first] + [x_all[-1]]
    x0s = [x0_all[where[t]] for t in top_first]
    end = ac[0] if options.get("final_alpha") == "alpha_0" else 1.0
    levels = [ac[t] for t in top_first] + [end]                   # node G: the teacher's end (clean data)
    preds = [predict_eps_x0(x0s[i], xs[i], levels[i], "x0") for i in range(G)]      # (eps, x0) agreeing with x
    # An error made at level j reaches the end scaled by the flow's Jacobian; its diagonal estimate from the
    # teacher, per feature the spread of the end over the spread at j (exact for Gaussian data).
    spread = [x.reshape(len(x), -1).double().std(dim=0) for x in xs]
    scale = [spread[G] / s.clamp_min(1e-12) for s in spread]

    # 2. the costs, cached: cost(p, i, j) with p = -1 for "no history".
    costs: dict[tuple[int, int, int], float] = {}
    base = _for_costs(template)
    history = getattr(template, "has_history", False)

    def cost(p: int, i: int, j: int) -> float:
        key = (p if history else -1, i, j)
        if key not in costs:
            p_, steps = key[0], [Step(top_first[i], levels[i], levels[j])]
            if p_ >= 0:
                steps.insert(0, Step(top_first[p_], levels[p_], levels[i]))
            run = base.fresh(steps)
            nodes = ([p_] if p_ >= 0 else []) + [i]
            fake = iter([preds[k] for k in nodes])
            denoise = lambda x, t, a: next(fake)                  # noqa: E731  the teacher's prediction
            for k, node in enumerate(nodes):
                out, _ = run.step(denoise, xs[node], k, lambda: torch.zeros_like(x_T))
            diff = (out - xs[j]).reshape(len(out), -1).double() * scale[j]
            costs[key] = diff.norm(dim=1).mean().item()
        return costs[key]

    # 3. DP over (previous, current) with k calls made; the walk starts at the top candidate (node 0).
    INF = math.inf
    best: dict[tuple[int, int], tuple[float, list[int]]] = {(-1, 0): (0.0, [0])}
    for _ in range(nfe - 1):
        nxt: dict[tuple[int, int], tuple[float, list[int]]] = {}
        for (p, i), (c, path) in best.items():
            for j in range(i + 1, G):
                total = c + cost(p, i, j)
                if total < nxt.get((i, j), (INF, None))[0]:
                    nxt[(i, j)] = (total, path + [j])
        best = nxt
    final = min(best.items(), key=lambda kv: kv[1][0] + cost(kv[0][0], kv[0][1], G))
    path = sorted(top_first[k] for k in final[1][1])
    if refine:
        path = _refine(sampler, template, x_T, xs[G], path, refine, options)
    return path


def _refine(sampler: DDIMSampler, solver: Solver, x_T: Tensor, end: Tensor, taus: list[int], passes: int,
            options: dict) -> list[int]:
    """Pattern search on the timesteps (ascending; the top stays) against the end's error on the teacher's
    noises. It starts from the best of the DP's grid and the hand-made grids of the same length, and moves one
    timestep at a time by +-0.5, 0.25, ... (`passes` sizes) in half log-SNR (rounded to a timestep), then by
    one timestep."""
    T, ac = sampler.schedule.T, sampler.schedule.alphas_cumprod
    lam_of = [log_snr(a) for a in ac.tolist()]
    finite = [t for t in range(T) if math.isfinite(lam_of[t])]

    def error(p: list[int]) -> float:
        out = sampler.sample(x_T, len(p), skip=p, solver=solver, **options)
        return (out - end).reshape(len(out), -1).double().norm(dim=1).mean().item()

    def at(lam: float) -> int:                                   # the finite-level timestep nearest lam
        return min(finite, key=lambda t: abs(lam_of[t] - lam))

    starts = [taus] + [resolve_taus(T, len(taus), k, ac).tolist() for k in ("logsnr", "karras", "optimized")]
    starts = [p for p in starts if len(p) == len(taus) and p[-1] == taus[-1]]
    scored = [(error(p), p) for p in starts]
    best, taus = min(scored, key=lambda ep: ep[0])
    moves = [(0.5 / 2**k, None) for k in range(passes)] + [(0.0, 1)]       # shrinking, then single timesteps
    for delta, step in moves:
        for pos in range(len(taus) - 1):                        # every timestep but the top
            for sign in (-1, 1):
                t = taus[pos] + sign * step if step else at(lam_of[taus[pos]] + sign * delta)
                lo = taus[pos - 1] if pos > 0 else -1
                if not lo < t < taus[pos + 1] or t == taus[pos] or not math.isfinite(lam_of[t]):
                    continue
                trial = taus[:pos] + [t] + taus[pos + 1:]
                e = error(trial)
                if e < best:
                    best, taus = e, trial
    return taus
