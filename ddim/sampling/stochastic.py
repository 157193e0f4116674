"""Stochastic samplers as solvers, each drawing its noise through the walk's `noise()` (per-sample generators,
so sample i does not depend on its batch): DPM-Solver++(2M) SDE, EDM's churn, Restart.

In the notation of `ddim.sampling.multistep` (lambda the half log-SNR, h = lambda_s - lambda_t, sigma_EDM =
sqrt((1 - a) / a) the EDM noise level):

- DPM-Solver++(2M) SDE (Lu et al. 2022, the SDE variant of DPM-Solver++; diffusers'
  `algorithm_type="sde-dpmsolver++"`, midpoint): x_s = (sigma_s / sigma_t) e^-h x_t + sqrt(a_s) (1 - e^-2h) D
  + sigma_s sqrt(1 - e^-2h) z with 2M's D. That is eq. 12 with D for x0_pred and sigma of eq. 16 at eta = 1
  (sqrt(1 - a_s) sqrt(1 - e^-2h) is that sigma), so it is written as that DDIM step.
- EDM churn (Karras et al. 2022, Algorithm 2; "churn"): on steps with sigma_EDM in [s_tmin, s_tmax], first raise the
  noise to sigma_hat = sigma (1 + gamma), gamma = min(s_churn / N, sqrt(2) - 1) (the forward process, noise
  scaled by s_noise; the raised level is snapped to the nearest trained timestep), then Heun's step (the
  DDIM step with the mean of the eps at both ends) to the next level; Euler on the last step.
- Restart (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"): the ODE (DDIM steps on the
  plan, Heun's steps as the paper) and, on reaching the level nearest sigma_EDM = restart[0], k times: noise
  forward to restart[1] and integrate the ODE back with `inner` Heun steps uniform in log-SNR (snapped). The added noise
  contracts the error the ODE accumulated before it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.multistep import DPMSolverPP, eps_from, log_snr
from ddim.sampling.solvers import Denoise, Noise, Solver
from ddim.sampling.steps import ddim_sigma, ddim_step, predict_eps_x0

__all__ = ["DPMSolverPPSDE", "Churn", "Restart"]


def _edm_sigma(a: float) -> float:
    return math.inf if a <= 0 else math.sqrt(max(1 - a, 0.0) / a)


def _nearest_timestep(alphas: list[float], sigma: float) -> int:
    """The timestep whose level's EDM sigma is nearest `sigma` (in log)."""
    target = math.log(sigma)
    return min(range(len(alphas)), key=lambda t: abs(math.log(max(_edm_sigma(alphas[t]), 1e-300)) - target)
               if alphas[t] > 0 else math.inf)


def _forward(x: Tensor, a_from: float, a_to: float, z: Tensor, scale: float = 1.0) -> Tensor:
    """q(x_to | x_from) of the forward process from level a_from to the noisier a_to (noise scaled by `scale`)."""
    r = a_to / a_from
    return torch.mul(x, math.sqrt(r)).add_(z, alpha=scale * math.sqrt(max(1 - r, 0.0)))


def _heun(denoise: Denoise, x: Tensor, t: int, a_t: float, a_s: float, t_next: int | None
          ) -> tuple[Tensor, Tensor]:
    """Heun's step in the DDIM form (EDM's, in VP coordinates): the DDIM step, then, if `t_next` (the timestep
    of level a_s) is given, the DDIM step again from x with the mean of the eps at both ends. 1 or 2 calls."""
    eps, x0_pred = denoise(x, t, a_t)
    x_s = ddim_step(x0_pred, eps, a_s)
    if t_next is not None and 0 < a_s < 1 and a_t < 1:
        eps2, _ = denoise(x_s, t_next, a_s)
        e, x0_h = predict_eps_x0((eps + eps2) * 0.5, x, a_t, "eps")
        x_s = ddim_step(x0_h, e, a_s)
    return x_s, x0_pred


def _check_number(value: object, name: str, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo:
        raise DDIMError(f"{name} must be a finite number >= {lo:g}, got {value!r}")
    return float(value)


class DPMSolverPPSDE(DPMSolverPP):
    """DPM-Solver++(2M) SDE ("dpm++2m-sde"; module docstring): 2M's D in the eta = 1 DDIM step. One network
    call per step; noise on every step but the last to alpha = 1 (where sigma is 0)."""

    deterministic = False

    def __init__(self, lower_order_final: bool = True) -> None:
        super().__init__(2, False, lower_order_final)

    @property
    def name(self) -> str:
        return "dpm++2m-sde"

    def begin(self) -> None:
        super().begin()
        self._sigmas = [ddim_sigma(s.a_t, s.a_s, 1.0) if s.a_t < s.a_s else 0.0 for s in self.plan]

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s, sigma = self.plan[i], self._sigmas[i]
        _, x0_pred = denoise(x, s.t, s.a_t)
        w = self.weights(self.order_at(i, 2), *self._lam[i])
        D = x0_pred if len(w) == 1 else x0_pred * w[0]
        for wj, (_, past) in zip(w[1:], reversed(self._hist)):
            D.add_(past, alpha=wj)
        self.remember(i, x0_pred)
        return ddim_step(D, eps_from(x, D, s.a_t), s.a_s, sigma, noise() if sigma > 0 else None), x0_pred


class Churn(Solver):
    """EDM's stochastic sampler ("churn"; Karras et al. 2022, Algorithm 2; module docstring). s_churn, s_tmin,
    s_tmax, s_noise as in the paper (defaults: its ImageNet-64 settings 40, 0.05, 50 with s_noise = 1, the exact
    forward process; the paper's 1.003 widens the samples on purpose; s_churn = 0 is Heun's deterministic
    method). Two network calls per step (Heun), one on the last: 2 S - 1 per walk."""

    name = "churn"
    deterministic = False
    grid_order = 2

    def __init__(self, s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0,
                 s_noise: float = 1.0) -> None:
        self.s_churn = _check_number(s_churn, "s_churn", 0.0)
        self.s_tmin = _check_number(s_tmin, "s_tmin", 0.0)
        self.s_tmax = _check_number(s_tmax, "s_tmax", 0.0)
        self.s_noise = _check_number(s_noise, "s_noise", 0.0)

    def begin(self) -> None:
        alphas = getattr(self, "alphas", None)
        if alphas is None:
            raise DDIMError("solver 'churn' needs the schedule's levels: build it with Churn(...).bind(schedule) "
                            "or by name through DDIMSampler")
        gamma = min(self.s_churn / len(self.plan), math.sqrt(2) - 1)
        self._raise: list[tuple[int, float] | None] = []
        for s in self.plan:
            sig = _edm_sigma(s.a_t)
            if gamma > 0 and self.s_tmin <= sig <= self.s_tmax and 0 < s.a_t < 1:
                t_hat = max(_nearest_timestep(alphas, sig * (1 + gamma)), s.t)
                self._raise.append((t_hat, alphas[t_hat]) if t_hat > s.t else None)
            else:
                self._raise.append(None)

    def bind(self, alphas: list[float]) -> "Churn":
        """The schedule's levels alphas_cumprod, to snap raised noise levels to trained timesteps."""
        self.alphas = list(alphas)
        return self

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s, up = self.plan[i], self._raise[i]
        t, a_t = s.t, s.a_t
        if up is not None:
            t, a_hat = up
            x, a_t = _forward(x, a_t, a_hat, noise(), self.s_noise), a_hat
        return _heun(denoise, x, t, a_t, s.a_s, self.plan[i + 1].t if i + 1 < len(self.plan) else None)


class Restart(Solver):
    """Restart sampling ("restart"; Xu et al. 2023; module docstring): Heun steps on the plan (as the paper),
    and on reaching the plan level nearest sigma_EDM = restart[0], `k` restarts to sigma_EDM = restart[1] with
    `inner` Heun steps back each. Network calls: 2 S - 1 + 2 k inner' (inner' <= inner: the distinct snapped
    inner levels). Defaults: the paper's small interval [0.06, 0.30] with k = 2, inner = 3."""

    name = "restart"
    deterministic = False

    def __init__(self, restart: tuple[float, float] = (0.06, 0.30), k: int = 2, inner: int = 3) -> None:
        try:
            lo, hi = (float(v) for v in restart)
        except (TypeError, ValueError):
            lo = hi = -1.0
        if not 0 < lo < hi or not math.isfinite(hi):
            raise DDIMError(f"restart must be a pair (sigma_min, sigma_max) of EDM noise levels with "
                            f"0 < sigma_min < sigma_max, got {restart!r}")
        for v, name in ((k, "k"), (inner, "inner")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DDIMError(f"{name} must be a positive integer, got {v!r}")
        self.restart, self.k, self.inner = (lo, hi), k, inner

    def bind(self, alphas: list[float]) -> "Restart":
        """The schedule's levels alphas_cumprod: the restart's levels are trained timesteps."""
        self.alphas = list(alphas)
        return self

    def begin(self) -> None:
        alphas = getattr(self, "alphas", None)
        if alphas is None:
            raise DDIMError("solver 'restart' needs the schedule's levels: build it with Restart(...).bind(schedule"
                            ".alphas_cumprod.tolist()) or by name through DDIMSampler")
        inside = [i for i, s in enumerate(self.plan) if 0 < s.a_s < 1]
        self._at, self._inner = None, []
        if not inside:
            return
        lo, hi = self.restart
        self._at = min(inside, key=lambda i: abs(math.log(_edm_sigma(self.plan[i].a_s)) - math.log(lo)))
        a_min = self.plan[self._at].a_s
        t_min = self.plan[self._at + 1].t if self._at + 1 < len(self.plan) else None
        t_max = _nearest_timestep(alphas, hi)
        if t_min is None or t_max <= t_min:
            self._at = None                                   # the interval lies below the plan: no restart
            return
        lams = [log_snr(alphas[t_max]) + (log_snr(a_min) - log_snr(alphas[t_max])) * j / self.inner
                for j in range(self.inner)]
        ts = sorted({_nearest_timestep(alphas, math.exp(-lam)) for lam in lams} | {t_max}, reverse=True)
        ts = [t for t in ts if t > t_min]
        nxt = ts[1:] + [t_min]
        self._inner = [(t, alphas[t], alphas[u], u) for t, u in zip(ts, nxt)]

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s = self.plan[i]
        x, x0_pred = _heun(denoise, x, s.t, s.a_t, s.a_s, self.plan[i + 1].t if i + 1 < len(self.plan) else None)
        if i == self._at and self._inner:
            for _ in range(self.k):
                x = _forward(x, s.a_s, self._inner[0][1], noise())
                for t, a_t, a_s, t_next in self._inner:
                    x, _ = _heun(denoise, x, t, a_t, a_s, t_next)
        return x, x0_pred
