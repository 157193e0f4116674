"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and a corrector (UniC) on the DDIM step, data
prediction, B(h) = 1 - e^-h (the paper's "bh2").

In the notation of `ddim.sampling.multistep`: a step from lambda_0 to lambda_0 + h is the DDIM step with x0_pred
replaced by D = m_0 + sum_k rho_k (m_k - m_0) / r_k, where m_k are predictions at lambda_0 + r_k h. For x0 a
polynomial of degree p in lambda the step is exact when sum_k rho_k r_k^(n-1) = n! I_n(h) / (h^n I_0(h)) for
n = 1..p (the UniPC order conditions for B(h) = I_0(h)), a p x p system.

- UniP-p, the predictor, uses the p - 1 previous predictions (r_k < 0); p = 2 takes rho = 1/2 (the paper's
  simplification, O(h) from the exact weight), which makes it exactly DPM-Solver++(2M). Order p.
- UniC-p, the corrector, redoes the previous step from its start with one more node, the prediction at the
  point the predictor reached (r = 1): order p + 1. That prediction is the network call the next step makes
  anyway, so the corrector costs no network call; it changes the x the next step starts from (the history
  keeps the prediction as evaluated). p = 1 takes rho = 1/2 (the trapezoidal rule), as the reference code.
  There is no corrector after the last step (nothing evaluates its result).

The states a walk yields are the predictor's (each is corrected only when the next step evaluates it); the
predictor's local error is O(h^(p+1)), so a yielded state is as accurate as the corrected walk before it,
order p + 1 overall.
"""

from __future__ import annotations

from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.multistep import Multistep, eps_from, exp_integral
from ddim.sampling.solvers import Denoise, Noise
from ddim.sampling.steps import ddim_step

__all__ = ["UniPC"]


def unipc_rhos(rks: list[float], h: float, simplified: bool) -> list[float]:
    """rho_k solving sum_k rho_k r_k^(n-1) = n! I_n(h) / (h^n I_0(h)), n = 1..len(rks) (1/2 for one node if
    simplified)."""
    if len(rks) == 1 and simplified:
        return [0.5]
    i0, fact, b = exp_integral(h, 0), 1.0, []
    for n in range(1, len(rks) + 1):
        fact *= n
        b.append(fact * exp_integral(h, n) / (h**n * i0))
    return _solve([[r**n for r in rks] for n in range(len(rks))], b)


def _solve(A: list[list[float]], b: list[float]) -> list[float]:
    """x with A x = b for a small dense system (Gaussian elimination with partial pivoting, host floats)."""
    n = len(b)
    M = [row[:] + [bi] for row, bi in zip(A, b)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        M[c], M[p] = M[p], M[c]
        for r in range(c + 1, n):
            f = M[r][c] / M[c][c]
            M[r] = [v - f * w for v, w in zip(M[r], M[c])]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (M[r][n] - sum(M[r][k] * x[k] for k in range(r + 1, n))) / M[r][r]
    return x


class UniPC(Multistep):
    """UniPC with B(h) = 1 - e^-h ("unipc"): UniP of `order` (default 2) and, with `corrector`, UniC, order
    `order` + 1 overall (3 by default) at one network call per step; corrector=False is the predictor alone
    (order 2: DPM-Solver++(2M)). Deterministic; inversion runs the same formulas with h < 0.
    """

    name = "unipc"

    def __init__(self, order: int = 2, corrector: bool = True, lower_order_final: bool = True) -> None:
        super().__init__(lower_order_final)
        if isinstance(order, bool) or not isinstance(order, int) or order not in (1, 2, 3):
            raise DDIMError(f"order must be 1, 2 or 3 for UniPC, got {order!r}")
        if not isinstance(corrector, bool):
            raise DDIMError(f"corrector must be True or False, got {corrector!r}")
        self.order, self.corrector = order, corrector
        self._max_order = order + 1           # the corrector of an order-p step reads p earlier predictions

    def begin(self) -> None:
        super().begin()
        self._last = None                    # (x it started from, its index, its order) of the previous step

    @staticmethod
    def _D(m0: Tensor, lam0: float, h: float, nodes: list[tuple[float, Tensor]]) -> Tensor:
        """D = m_0 + sum_k rho_k (m_k - m_0) / r_k over `nodes` (lambda_k, m_k), r_k = (lambda_k - lambda_0) / h."""
        rks = [(lam - lam0) / h for lam, _ in nodes]
        w = [rho / rk for rho, rk in zip(unipc_rhos(rks, h, simplified=True), rks)]
        D = m0 * (1 - sum(w))                                   # the same sum, one multiply-add per node
        for wk, (_, m) in zip(w, nodes):
            D.add_(m, alpha=wk)
        return D

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s = self.plan[i]
        eps, x0_pred = denoise(x, s.t, s.a_t)
        lam_t, lam_s = self._lam[i]
        if self.corrector and self._last is not None:
            # UniC: redo the previous step (from x_prev at lambda_0 to here) with this prediction as a node.
            x_prev, j, p = self._last
            lam0, m0 = self._hist[-1]
            past = list(self._hist)[-p:-1]                      # the p - 1 predictions before m_0
            D = self._D(m0, lam0, lam_t - lam0, past[::-1] + [(lam_t, x0_pred)])
            x = ddim_step(D, eps_from(x_prev, D, self.plan[j].a_t), s.a_t)
        k = self.order_at(i, self.order)
        if k == 1:
            D = x0_pred
        else:                                                   # UniP-k on the k - 1 previous predictions
            D = self._D(x0_pred, lam_t, lam_s - lam_t, list(self._hist)[-(k - 1):][::-1])
        self.remember(i, x0_pred)
        self._last = (x, i, k) if 0 < s.a_t < 1 and 0 < s.a_s < 1 else None
        return ddim_step(D, eps if s.a_t >= 1 else eps_from(x, D, s.a_t), s.a_s), x0_pred
