"""The model-free optimized step grid (DMN: Xue et al., CVPR 2024, "Accelerating Diffusion Sampling with
Optimized Time Steps"): the levels of an N-call walk chosen from the noise schedule alone, for a solver order.

In half log-SNR lambda = log(sqrt(a) / sqrt(1 - a)) and sigma = sqrt(1 - a), the probability-flow ODE in data
prediction is exact in the form x_s / sigma_s = x_t / sigma_t + integral_{lambda_t}^{lambda_s} e^l x0(l) dl.
A k-th order multistep solver replaces x0 on each step by the polynomial through its last k predictions, so
step s adds sum_j w_sj x0_j with quadrature weights w_sj = integral over the step of e^l L_j(l) (L_j the
Lagrange basis of the step's nodes). If prediction j is off by e_j, the end state is off by
sum_j (sum_s w_sj) e_j. DMN bounds this by sum_j |sum_s w_sj| e_j with the error model e_j = sigma_j^p / sqrt(a_j)
(the paper's p = 2; p = 1, which its code finds better for pixel-space models, is the default here, as ddim's
models are pixel-space), and minimizes the bound over the interior levels, the ends fixed. The first steps,
where the weights extrapolate far, enter as root sums of squares of their own terms (the paper's truncation,
below 8 levels).

Everything here is float64 host arithmetic on a few dozen numbers: a grid of 10 levels takes well under a
second. `ddim.schedule.timesteps(..., skip="optimized")` maps the levels to timesteps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddim.errors import DDIMError

__all__ = ["optimized_log_snrs", "dmn_objective"]

_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)          # Gauss-Legendre nodes and weights on [-1, 1]


def _order_schedule(n_levels: int, order: int) -> list[int]:
    """The order each level-to-level step of an n_levels walk uses (ddim's multistep order schedule): the
    history grows by one per step; with lower_order_final (below 15 calls) the last one is at most second order."""
    steps = n_levels - 1
    ks = [min(order, s + 1) for s in range(steps)]
    if n_levels < 15 and steps:
        ks[-1] = min(ks[-1], 2)
    return ks


def _step_weights(lam: torch.Tensor, s: int, k: int) -> list[torch.Tensor]:
    """w_j = integral_{lam[s]}^{lam[s+1]} e^l L_j(l) dl for the nodes lam[s-k+1..s] (oldest first)."""
    a, b = lam[s], lam[s + 1]
    x = torch.as_tensor(_GL_X, dtype=lam.dtype)
    w = torch.as_tensor(_GL_W, dtype=lam.dtype)
    u = 0.5 * (b - a) * x + 0.5 * (b + a)                      # quadrature points on the step
    base = 0.5 * (b - a) * w * torch.exp(u)
    nodes = [lam[s - k + 1 + j] for j in range(k)]
    out = []
    for j in range(k):
        L = torch.ones_like(u)
        for m in range(k):
            if m != j:
                L = L * (u - nodes[m]) / (nodes[j] - nodes[m])
        out.append((base * L).sum())
    return out


def dmn_objective(lam: torch.Tensor, order: int, power: float = 1.0) -> torch.Tensor:
    """DMN's bound on the end error of a walk over the increasing half log-SNRs `lam` [n] (module docstring)."""
    a = torch.sigmoid(2 * lam)                                 # a = e^(2l) / (1 + e^(2l))
    err = (1 - a) ** (power / 2) / a.sqrt()                    # e_j = sigma^p / sqrt(a)
    ks = _order_schedule(len(lam), order)
    trunc = 3 if len(lam) <= 8 else 0
    coef = [lam.new_zeros(()) for _ in range(len(lam))]
    res = lam.new_zeros(())
    for s, k in enumerate(ks):
        terms = _step_weights(lam, s, k)
        if s < trunc:
            res = res + torch.sqrt(sum((w * err[s - k + 1 + j]) ** 2 for j, w in enumerate(terms)) + 1e-300)
        else:
            for j, w in enumerate(terms):
                coef[s - k + 1 + j] = coef[s - k + 1 + j] + w * err[s - k + 1 + j]
    return res + sum(c.abs() for c in coef)


def optimized_log_snrs(lam_top: float, lam_bottom: float, n: int, order: int = 2, power: float = 1.0,
                       iters: int = 200) -> np.ndarray:
    """n increasing half log-SNRs from lam_top (the noisiest level) to lam_bottom, both kept, the interior
    chosen to minimize `dmn_objective` for a solver of `order` (1-3), starting from uniform log-SNR spacing.
    The steps are the softmax of free parameters times the span, so the levels stay ordered."""
    if isinstance(order, bool) or not isinstance(order, int) or order not in (1, 2, 3):
        raise DDIMError(f"order must be 1, 2 or 3 for the optimized grid, got {order!r}")
    if not (math.isfinite(lam_top) and math.isfinite(lam_bottom) and lam_top < lam_bottom):
        raise DDIMError(f"the optimized grid needs finite levels, noisiest first; got {lam_top} .. {lam_bottom}")
    if n <= 2:
        return np.array([lam_top, lam_bottom][:n] if n == 2 else [lam_top])
    span = lam_bottom - lam_top
    z = torch.zeros(n - 1, dtype=torch.float64, requires_grad=True)

    def levels(z: torch.Tensor) -> torch.Tensor:
        steps = torch.softmax(z, 0) * span
        return torch.cat([z.new_tensor([lam_top]), lam_top + torch.cumsum(steps, 0)[:-1], z.new_tensor([lam_bottom])])

    opt = torch.optim.LBFGS([z], lr=1, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = dmn_objective(levels(z), order, power)
        loss.backward()
        return loss

    start = dmn_objective(levels(z.detach()), order, power).item()
    with torch.enable_grad():
        opt.step(closure)
    best = levels(z.detach())
    if not torch.isfinite(best).all() or dmn_objective(best, order, power).item() > start:
        best = levels(torch.zeros_like(z))                    # never worse than the uniform start
    return best.numpy()
