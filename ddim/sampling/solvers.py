"""Solvers: how a walk moves x from one level of its plan to the next, built on the pure step math.

A solver is a small object. `fresh(plan)` returns a new instance for one walk, bound to that plan (validated
against it before any network call) and owning whatever history its method keeps; `step(denoise, x, i, noise)`
moves x from plan[i].a_t to plan[i].a_s and returns (x_s, x0_pred). It calls `denoise(x, t, a_t) -> (eps,
x0_pred)` once per step, or more where its method needs more evaluations (it says so in its docstring; the
denoiser counts them; a level other than a step's own start asks `plan.timestep_at(level)` for the network's
timestep), and `noise()` for N(0, I) shaped like x, drawn from the caller's generator.

To add a solver: subclass `Solver`, keep its options in `__init__`, its per-walk state in `begin`, its update in
`step`; register a factory in `ddim.sampling.registry.SOLVERS`. docs/ARCHITECTURE.md has the test recipe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.plan import Plan, Step
from ddim.sampling.steps import ddim_sigma, ddim_step, ddpm_posterior_step

__all__ = ["Solver", "DDIM", "SigmaHat", "Denoise", "Noise"]

Denoise = Callable[[Tensor, int, float], tuple[Tensor, Tensor]]
Noise = Callable[[], Tensor]


class Solver:
    """Base class. Subclasses implement `step`; `deterministic` says whether it draws noise (inversion needs
    a deterministic solver)."""

    name = "solver"
    deterministic = True
    has_history = False        # True: it keeps earlier steps' predictions, so it cannot redo a step

    def fresh(self, plan: Sequence[Step]) -> "Solver":
        """A new instance for one walk over `plan`: options copied, history empty, plan checked."""
        run = copy.copy(self)
        run.plan = plan if isinstance(plan, Plan) else Plan(plan)
        run.begin()
        return run

    def begin(self) -> None:
        """Reset per-walk state and check `self.plan`; raise DDIMError for a plan this solver cannot walk."""

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        """Move x from plan[i].a_t to plan[i].a_s; return (x_s, x0_pred)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "plan" and not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


class DDIM(Solver):
    """The generalized DDIM step (eq. 12) with sigma = eta * eq. 16: eta = 0 is the deterministic DDIM
    (an Euler step of the probability-flow ODE, eq. 14), eta = 1 is DDPM's ancestral sampler. One network
    call per step."""

    name = "ddim"

    def __init__(self, eta: float = 0.0) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise DDIMError(f"eta must be a finite number >= 0, got {eta!r}")
        self.eta = float(eta)
        self.deterministic = self.eta == 0

    def begin(self) -> None:
        self._sigmas = [ddim_sigma(s.a_t, s.a_s, self.eta) for s in self.plan]
        for s, sigma in zip(self.plan, self._sigmas):
            if 1 - s.a_s - sigma * sigma < -1e-12:           # sigma * sigma: inf for a huge eta, not an error
                raise DDIMError(f"eta={self.eta} makes 1 - a_s - sigma^2 negative at t={s.t} (eq. 12 needs its "
                                "square root); use eta <= 1, or variance='large' for the sigma-hat sampler")

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s, sigma = self.plan[i], self._sigmas[i]
        eps, x0_pred = denoise(x, s.t, s.a_t)
        return ddim_step(x0_pred, eps, s.a_s, sigma, noise() if sigma > 0 else None), x0_pred


class SigmaHat(Solver):
    """Table 1's sigma-hat row as the official release samples it: DDPM ancestral steps with variance
    1 - a_t / a_s (DDPM's "fixed large" beta), x0_pred clipped to [-1, 1], no noise on the final step. Eq. 12
    would need sqrt(1 - a_s - sigma^2) < 0 on the last steps, so this is the posterior-mean form. One call
    per step."""

    name = "sigma-hat"
    deterministic = False

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s = self.plan[i]
        _, x0_pred = denoise(x, s.t, s.a_t)
        x0_pred = x0_pred.clamp(-1, 1)
        last = i == len(self.plan) - 1
        return ddpm_posterior_step(x, x0_pred, s.a_t, s.a_s, None if last else noise()), x0_pred
