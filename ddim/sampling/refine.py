"""Fixed-point refinement of inversion steps (after ReNoise, Garibi et al., ECCV 2024), a Solver around any
deterministic solver.

Eq. 13 moves x from level a_t up to a_s with the network evaluated at x, although the sampling step it should
undo evaluates the network at the point it starts from, x_s. Refinement redoes each inversion step K more
times, each with the network evaluated at the current estimate of x_s (at the timestep of level a_s) in place
of the evaluation at x: K extra calls per step. For DDIM the iteration converges to the exact inverse of the
DDIM sampling step (the implicit equation x = D_t(x_s; eps(x_s))), so the round trip tightens as K grows; for
other solvers the step is redone with its own formula and history (restored before each redo). ReNoise also
averages the later iterates' predictions and adds noise regularisers for its few-step models; this is the plain
fixed-point iteration.
"""

from __future__ import annotations

import copy
import math
import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.solvers import Denoise, Noise, Solver

__all__ = ["Refined", "check_refine"]


def check_refine(refine: int) -> int:
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise DDIMError(f"refine must be an integer >= 0 (extra network calls per inversion step), got {refine!r}")
    return refine


class Refined(Solver):
    """`inner`'s inversion steps, each refined `refine` times at the estimated next point, where the network is
    evaluated at the timestep of that point's level (`Plan.timestep_at`). 1 + refine calls per step (times the
    inner solver's calls per step)."""

    name = "refined"

    def __init__(self, inner: Solver, refine: int) -> None:
        if not getattr(inner, "deterministic", True):
            raise DDIMError(f"refine: needs a deterministic solver, got {inner!r}")
        self.inner, self.refine = inner, check_refine(refine)

    def begin(self) -> None:
        self._t_next = [self.plan.timestep_at(s.a_s) for s in self.plan]
        self._inner = self.inner.fresh(self.plan)

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s, state = self.plan[i], _state(self._inner)
        x_s, x0_pred = self._inner.step(denoise, x, i, noise)
        for _ in range(self.refine):
            eps, _ = denoise(x_s, self._t_next[i], s.a_s)               # the network at the estimated x_s

            def at_next(v: Tensor, t: int, a: float, eps: Tensor = eps) -> tuple[Tensor, Tensor]:
                # that eps, as a pair that agrees with v at its level (what the step's own call would return)
                return eps, torch.add(v, eps, alpha=-math.sqrt(1 - a)).div_(math.sqrt(a))
            _restore(self._inner, state)
            x_s, x0_pred = self._inner.step(at_next, x, i, noise)
        return x_s, x0_pred


def _state(solver: object) -> dict:
    """A solver's per-walk state, containers copied (their tensors are never changed in place)."""
    return {k: copy.copy(v) for k, v in vars(solver).items()}


def _restore(solver: object, state: dict) -> None:
    vars(solver).clear()
    vars(solver).update({k: copy.copy(v) for k, v in state.items()})
