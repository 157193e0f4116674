"""The pure step math of the DDIM family (Song, Meng & Ermon 2020): eq. 16's sigma, eq. 12's step, and the
DDPM posterior step of Table 1's sigma-hat row.

Every function here is a function of tensors and float64 Python scalars: no model call, no RNG, no device
logic. This is the only module that contains eq. 12; solvers build on these functions, inversion included
(it runs the same step with the levels in the opposite order).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.predictions import PREDICTIONS  # re-exported: sampling's callers import it from here too

__all__ = ["ddim_sigma", "predict_eps_x0", "ddim_step", "ddim_x0_of_step", "ddpm_posterior_step", "afs_eps_x0",
           "PREDICTIONS"]


def ddim_sigma(a_t: float, a_s: float, eta: float) -> float:
    """sigma_tau(eta) of eq. 16: eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s), for a step a_t -> a_s."""
    if eta == 0:
        return 0.0
    return eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)


def afs_eps_x0(x_t: Tensor, a_t: float) -> tuple[Tensor, Tensor]:
    """The analytic first step's (eps, x0_pred) at level a_t, with no network call (AFS; Zhou et al., CVPR 2024,
    "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps", Sec. 4.3).

    AFS takes the EDM derivative at the start as d = x_T / sqrt(1 + sigma_T^2). In this package's coordinates,
    x_EDM = x_t / sqrt(a_t), sigma = sqrt((1 - a_t) / a_t) and d is eps, so d = x_t: the estimate is eps = x_t
    (exact for pure noise, off by O(sqrt(a_t)) at a_t > 0). x0_pred is where that eps points from x_t,
    (1 - sqrt(1 - a_t)) x_t / sqrt(a_t), written as sqrt(a_t) x_t / (1 + sqrt(1 - a_t)) so that it is 0 (the
    data mean the estimate assumes) at a_t = 0, zero terminal SNR, instead of 0 / 0. The pair agrees with x_t."""
    return x_t.clone(), x_t * (math.sqrt(a_t) / (1 + math.sqrt(1 - a_t)))


def _per_sample(a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """sqrt(a), sqrt(1 - a) of per-sample levels a [B] (float64), shaped [B, 1, ...] to broadcast over x."""
    a = a.to(device=x.device, dtype=torch.float64).view(-1, *([1] * (x.ndim - 1)))
    return a.sqrt().to(x.dtype), (1 - a).sqrt().to(x.dtype)


def predict_eps_x0(output: Tensor, x_t: Tensor, a_t: float | Tensor, prediction: str = "eps") -> tuple[Tensor, Tensor]:
    """Turn a network output at level a_t into the pair (eps, x0_pred), using x_t = sqrt(a) x0 + sqrt(1-a) eps.

    prediction "eps": the network predicts eps; "x0": it predicts x_0; "v": it predicts
    v = sqrt(a) eps - sqrt(1-a) x_0 (Salimans & Ho 2022). All tensors [B, ...]. a_t: one level (a float), or
    one level per sample (a tensor [B]; training draws a level per sample).
    """
    if isinstance(a_t, Tensor):
        sa, sb = _per_sample(a_t, x_t)
        if prediction == "eps":
            return output, (x_t - sb * output) / sa
        if prediction == "x0":
            return (x_t - sa * output) / sb, output
        if prediction == "v":
            return sb * x_t + sa * output, sa * x_t - sb * output
        raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    sa, sb = math.sqrt(a_t), math.sqrt(1 - a_t)
    if prediction == "eps":
        return output, torch.add(x_t, output, alpha=-sb).div_(sa)           # "predicted x_0" of eq. 12
    if prediction == "x0":
        return torch.add(x_t, output, alpha=-sa).div_(sb), output
    if prediction == "v":
        return torch.add(x_t * sb, output, alpha=sa), torch.add(x_t * sa, output, alpha=-sb)
    raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def ddim_step(x0_pred: Tensor, eps: Tensor, a_s: float | Tensor, sigma: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """Eq. 12: x_s = sqrt(a_s) x0_pred + sqrt(1 - a_s - sigma^2) eps + sigma z. Tensors [B, ...]. a_s: one level,
    or one per sample (a tensor [B], deterministic steps only)."""
    if isinstance(a_s, Tensor):
        if sigma != 0 or noise is not None:
            raise DDIMError("ddim_step: per-sample levels a_s take no noise (sigma = 0)")
        sa, sb = _per_sample(a_s, x0_pred)
        return sa * x0_pred + sb * eps
    direction = math.sqrt(max(1 - a_s - sigma**2, 0.0))     # roundoff at eta = 1 can give -1e-17
    x_s = torch.mul(x0_pred, math.sqrt(a_s)).add_(eps, alpha=direction)
    return x_s if noise is None else x_s.add_(noise, alpha=sigma)


def ddim_x0_of_step(x_t: Tensor, x_s: Tensor, a_t: Tensor, a_s: Tensor) -> Tensor:
    """The x0_pred with which one deterministic step of eq. 12 takes x_t at a_t to x_s at a_s: eq. 12 with eps
    = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) solved for x0 (Salimans & Ho 2022, Algorithm 2's target x-tilde):
    x0 = (x_s - r x_t) / (sqrt(a_s) - r sqrt(a_t)), r = sqrt(1 - a_s) / sqrt(1 - a_t). Levels per sample [B],
    a_s > a_t (a_s = 1 gives x0 = x_s)."""
    (sa_t, sb_t), (sa_s, sb_s) = _per_sample(a_t, x_t), _per_sample(a_s, x_t)
    r = sb_s / sb_t
    return (x_s - r * x_t) / (sa_s - r * sa_t)


def ddpm_posterior_step(x_t: Tensor, x0_pred: Tensor, a_t: float, a_s: float,
                        noise: Tensor | None = None) -> Tensor:
    """Table 1's sigma-hat row, sampled as the official release does: mean of q(x_s | x_t, x0_pred), std sqrt(beta).

    beta = 1 - a_t / a_s is the step's variance (DDPM's beta_t when every step is taken). x0_pred is used as
    given (the caller clips it to [-1, 1]). Tensors [B, ...].
    """
    beta = 1 - a_t / a_s
    c_x0 = math.sqrt(a_s) * beta / (1 - a_t)                     # posterior mean coefficients (Ho et al., eq. 7)
    c_xt = math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
    mean = torch.mul(x0_pred, c_x0).add_(x_t, alpha=c_xt)
    return mean if noise is None else mean.add_(noise, alpha=math.sqrt(beta))
