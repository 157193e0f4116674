"""Multistep solvers of the probability-flow ODE on the DDIM step: PLMS and DPM-Solver++(2M, 3M).

Each keeps the network's past predictions (its history) and reuses them, so it costs one network call per
step like DDIM (PLMS's optional Heun warm-up costs one more, once).

DPM-Solver++ (Lu et al. 2022) in the DDIM step. With lambda = log(sqrt(a) / sqrt(1 - a)) (half the log-SNR),
sigma = sqrt(1 - a), h = lambda_s - lambda_t, the exact solution of the ODE from level a_t to a_s is

    x_s = (sigma_s / sigma_t) x_t + sqrt(a_s) * integral_0^h e^-(h - u) x0(lambda_t + u) du.

The DDIM step with x0_pred replaced by any D, x_s = ddim_step(D, eps_from(D), a_s) with eps_from(D) =
(x_t - sqrt(a_t) D) / sqrt(1 - a_t), is (sigma_s / sigma_t) x_t + sqrt(a_s) (1 - e^-h) D, because
sqrt(1 - a_s) sqrt(a_t) / sqrt(1 - a_t) = sqrt(a_s) e^-h. So every method here is a choice of D: D = x0_pred
(constant x0) is DDIM, the first-order DPM-Solver++. Expanding x0(lambda_t + u) = sum_n u^n / n! x0^(n), the
exact D is sum_n I_n(h) / I_0(h) x0^(n), with I_n(h) = integral_0^h e^-(h - u) u^n / n! du:
I_0 = 1 - e^-h, I_1 = h - 1 + e^-h, I_2 = h^2/2 - h + 1 - e^-h (I_n ~ h^(n+1) / (n+1)!).

- 2M: x0' from the last two predictions, D1 = (x0_i - x0_{i-1}) / r ~ h x0', r = h_{i-1} / h_i, and the
  midpoint weight 1/2 for I_1 / I_0 = 1/2 + O(h): D = (1 + 1/(2r)) x0_i - (1/(2r)) x0_{i-1}. Local error
  O(h^3), order 2 (the DPM-Solver++ paper's 2M; diffusers' solver_type="midpoint").
- 3M: p(u), the quadratic through the last three (lambda, x0_pred), gives D1 = h p'(0) and D2 = h^2 p''(0);
  then D = x0 + (I_1 / I_0) D1 / h + (I_2 / I_0) D2 / h^2, exact for x0 quadratic in lambda, local error
  O(h^4), order 3. In divided differences (r0 = h_{i-1} / h, r1 = h_{i-2} / h, D1_0 = (x0_i - x0_{i-1}) / r0,
  D1_1 = (x0_{i-1} - x0_{i-2}) / r1): D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) and D2 = 2 (D1_0 - D1_1) /
  (r0 + r1), since p''(0) is twice the second divided difference.
- The third-order formula shipped by the official DPM-Solver code, diffusers and k-diffusion uses the same
  weights with D2 = (D1_0 - D1_1) / (r0 + r1), which is h^2 p''(0) / 2: the x0'' term of the integral,
  I_2 x0'' (its weight I_2 ~ h^3 / 6), is halved, a local error of h^3 x0'' / 12, so that method is second
  order (`DPMSolverPP(3, shipped=True)`, "dpm++3m-shipped"; tests/test_solvers.py measures slope ~2).

Order schedule (all solvers here): lower order until the history is long enough; first order on a step from
or to alpha = 1 (lambda = +inf: sampling's last step, inversion's first) or alpha = 0; with
`lower_order_final` (diffusers' default) and fewer than 15 steps, first order on the last step and at most
second order on the one before it. History is kept only at levels 0 < a < 1.
"""

from __future__ import annotations

import math
from collections import deque

from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.solvers import Denoise, Noise, Solver
from ddim.sampling.steps import ddim_step, predict_eps_x0

__all__ = ["log_snr", "exp_integral", "Multistep", "PLMS", "DPMSolverPP"]


def log_snr(a: float) -> float:
    """lambda = log(sqrt(a) / sqrt(1 - a)), half the log-SNR of level a: +inf at a = 1, -inf at a = 0."""
    if a >= 1:
        return math.inf
    if a <= 0:
        return -math.inf
    return 0.5 * (math.log(a) - math.log1p(-a))


def exp_integral(h: float, n: int) -> float:
    """I_n(h) = integral_0^h e^-(h - u) u^n / n! du, the weight of x0^(n) in the exact exponential-integrator step."""
    if abs(h) < 0.5:            # the series sum_k (-1)^k h^(n+1+k) / (n+1+k)!, free of cancellation for small h
        term = h ** (n + 1) / math.factorial(n + 1)
        out, k = term, n + 2
        while abs(term) > 1e-18 * abs(out):
            term *= -h / k
            out, k = out + term, k + 1
        return out
    out = -math.expm1(-h)       # I_0 = 1 - e^-h; I_k = h^k / k! - I_{k-1} (integration by parts)
    for k in range(1, n + 1):
        out = h**k / math.factorial(k) - out
    return out


def eps_from(x: Tensor, x0: Tensor, a_t: float) -> Tensor:
    """The eps that makes (eps, x0) agree with x at level a_t < 1: (x - sqrt(a_t) x0) / sqrt(1 - a_t)."""
    return predict_eps_x0(x0, x, a_t, "x0")[0]


class Multistep(Solver):
    """Base of the multistep solvers: log-SNR of the plan's levels, a history of (lambda, prediction), and the
    order schedule of the module docstring."""

    _max_order = 1
    has_history = True

    def __init__(self, lower_order_final: bool = True) -> None:
        if not isinstance(lower_order_final, bool):
            raise DDIMError(f"lower_order_final must be True or False, got {lower_order_final!r}")
        self.lower_order_final = lower_order_final

    def begin(self) -> None:
        self._lam = [(log_snr(s.a_t), log_snr(s.a_s)) for s in self.plan]
        self._hist: deque = deque(maxlen=self._max_order)   # (lambda, tensor), newest last

    def order_at(self, i: int, order: int) -> int:
        """The order step i may use: `order`, lowered at the ends of the walk and while the history is short."""
        s, n = self.plan[i], len(self.plan)
        if not (0 < s.a_t < 1 and 0 < s.a_s < 1):
            return 1                      # lambda is infinite at one end: only the first-order step is defined
        k = min(order, len(self._hist) + 1)
        if self.lower_order_final and n < 15:
            k = 1 if i == n - 1 else min(k, 2) if i == n - 2 else k
        return k

    def remember(self, i: int, value: Tensor) -> None:
        """Keep step i's prediction if its level has a finite lambda (a multistep formula can use it)."""
        if 0 < self.plan[i].a_t < 1:
            self._hist.append((self._lam[i][0], value))


class DPMSolverPP(Multistep):
    """DPM-Solver++ multistep (Lu et al. 2022), data prediction, as D in the DDIM step (module docstring).

    order 2 ("dpm++2m"): the paper's 2M, order 2. order 3 ("dpm++3m"): exact for x0 quadratic in lambda,
    order 3. shipped=True (order 3 only, "dpm++3m-shipped"): the third-order formula of the official code,
    diffusers and k-diffusion, whose halved second-difference term makes it order 2. One network call per
    step; deterministic; inversion runs the same formulas with h < 0.
    """

    def __init__(self, order: int = 2, shipped: bool = False, lower_order_final: bool = True) -> None:
        super().__init__(lower_order_final)
        if isinstance(order, bool) or not isinstance(order, int) or order not in (1, 2, 3):
            raise DDIMError(f"order must be 1, 2 or 3 for DPM-Solver++, got {order!r}")
        if shipped and order != 3:
            raise DDIMError(f"shipped=True selects the shipped third-order formula; it needs order=3, got {order!r}")
        self.order, self.shipped = order, bool(shipped)
        self._max_order = order

    @property
    def name(self) -> str:
        return f"dpm++{self.order}m" + ("-shipped" if self.shipped else "")

    def weights(self, k: int, lam_t: float, lam_s: float) -> list[float]:
        """Weights w_j of D = sum_j w_j x0_{i-j} (j = 0 the newest) for a step of order k from lambda_t to lambda_s."""
        if k == 1:
            return [1.0]
        h = lam_s - lam_t
        r0 = (lam_t - self._hist[-1][0]) / h                 # h_{i-1} / h_i
        if k == 2:
            return [1 + 0.5 / r0, -0.5 / r0]                   # the STYLE.md form of 2M
        r1 = (self._hist[-1][0] - self._hist[-2][0]) / h      # h_{i-2} / h_i
        i0 = exp_integral(h, 0)
        c1, c2 = exp_integral(h, 1) / (h * i0), exp_integral(h, 2) / (h * h * i0)
        q, kappa = r0 / (r0 + r1), (1.0 if self.shipped else 2.0) / (r0 + r1)
        # D = x0 + c1 D1 + c2 D2 with D1 = (1 + q) D1_0 - q D1_1 and D2 = kappa (D1_0 - D1_1), written per x0_{i-j}:
        w_d10, w_d11 = c1 * (1 + q) + c2 * kappa, -(c1 * q + c2 * kappa)
        return [1 + w_d10 / r0, -w_d10 / r0 + w_d11 / r1, -w_d11 / r1]

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s = self.plan[i]
        eps, x0_pred = denoise(x, s.t, s.a_t)
        w = self.weights(self.order_at(i, self.order), *self._lam[i])
        D = x0_pred if len(w) == 1 else x0_pred * w[0]
        for wj, (_, past) in zip(w[1:], reversed(self._hist)):
            D.add_(past, alpha=wj)                           # D is a fresh tensor here (len(w) > 1)
        self.remember(i, x0_pred)
        # From clean data (a_t = 1) only the network's eps says where to go; elsewhere eps follows D and x.
        return ddim_step(D, eps if s.a_t >= 1 else eps_from(x, D, s.a_t), s.a_s), x0_pred


# Adams-Bashforth weights on eps_i, eps_{i-1}, ... for orders 1-4 (equal steps), as PNDM's PLMS uses them.
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class PLMS(Multistep):
    """Pseudo linear multistep (PNDM's PLMS, Liu et al. 2022; latent-diffusion's PLMS sampler): the DDIM step
    with eps replaced by an Adams-Bashforth combination of the last `order` (<= 4) eps, fixed weights as if
    the steps were equal.

    warmup "euler" (default): the steps before the history fills use lower AB orders, the first one the
    DDIM step itself: one network call per step. warmup "heun": the first step is PNDM's / latent-diffusion's
    pseudo improved Euler instead: a DDIM step to the next level, a second network call there, and the DDIM
    step again with the mean of the two eps; that costs ONE EXTRA network call per walk (counted in nfe)
    and makes the walk match diffusers' PNDMScheduler(skip_prk_steps=True). The fixed weights assume
    equal steps, so on grids that are not uniform in the ODE's variable the order is 2, not 4.
    """

    name = "plms"

    def __init__(self, order: int = 4, warmup: str = "euler", lower_order_final: bool = True) -> None:
        super().__init__(lower_order_final)
        if isinstance(order, bool) or not isinstance(order, int) or order not in _AB:
            raise DDIMError(f"order must be 1, 2, 3 or 4 for PLMS, got {order!r}")
        if warmup not in ("euler", "heun"):
            raise DDIMError(f"warmup must be 'euler' or 'heun', got {warmup!r}")
        self.order, self.warmup = order, warmup
        self._max_order = order

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s = self.plan[i]
        eps, x0_pred = denoise(x, s.t, s.a_t)
        k = self.order_at(i, self.order)
        self.remember(i, eps)
        if k > 1:
            e = eps * _AB[k][0]
            for wj, (_, past) in zip(_AB[k][1:], list(reversed(self._hist))[1:]):
                e.add_(past, alpha=wj)
        elif self.warmup == "heun" and len(self._hist) == 1 and i + 1 < len(self.plan) and 0 < s.a_s < 1 \
                and 0 < s.a_t < 1:
            # Pseudo improved Euler: evaluate at the Euler point, at level a_s.
            eps2, _ = denoise(ddim_step(x0_pred, eps, s.a_s), self.plan.timestep_at(s.a_s), s.a_s)
            e = (eps + eps2) * 0.5
        else:
            return ddim_step(x0_pred, eps, s.a_s), x0_pred     # the DDIM step
        e, x0_ab = predict_eps_x0(e, x, s.a_t, "eps")
        return ddim_step(x0_ab, e, s.a_s), x0_pred
