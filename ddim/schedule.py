"""Noise schedules and timestep sub-sequences.

Index convention, written down once for the whole package:
``alphas_cumprod[t]`` is the paper's alpha_t (DDPM's alpha-bar at step t + 1) for t = 0..T-1, so
x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps (Song et al. 2020, eq. 4). The level "before" the first
step is alpha = 1 (clean data); every sampler steps from tau_1 to alpha = 1 at its end.

This module is the only place in the project that turns betas into alphas, and it does so in float64.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.stepgrid import optimized_log_snrs

__all__ = ["NoiseSchedule", "timesteps", "SKIPS", "LEVEL_SKIPS"]

Skip = Literal["uniform", "quad", "trailing", "linspace", "logsnr", "karras", "optimized"]
SKIPS: tuple[str, ...] = ("uniform", "quad", "trailing", "linspace", "logsnr", "karras", "optimized")
LEVEL_SKIPS: tuple[str, ...] = ("logsnr", "karras", "optimized")   # spaced in noise level: they need the alphas


class NoiseSchedule:
    """A discrete diffusion schedule: betas [T] and alphas_cumprod [T], both float64 on the CPU."""

    def __init__(self, betas: Tensor | np.ndarray | list[float], name: str = "custom") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() < 1:
            raise DDIMError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            raise DDIMError("betas must lie in (0, 1]; got values in "
                             f"[{betas.min().item():.6g}, {betas.max().item():.6g}]")
        if (betas[1:] < betas[:-1]).any():
            first = int(torch.nonzero(betas[1:] < betas[:-1])[0]) + 1
            raise DDIMError(f"betas must be non-decreasing; betas[{first}] = {betas[first].item():.6g} "
                             f"< betas[{first - 1}] = {betas[first - 1].item():.6g}")
        self.name = name
        self.betas: Tensor = betas
        self.alphas_cumprod: Tensor = torch.cumprod(1.0 - betas, dim=0)

    @property
    def T(self) -> int:
        """Number of training timesteps."""
        return int(self.betas.numel())

    # --- the schedules of the literature ---------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Ho et al. (2020): betas linear from beta_start to beta_end."""
        _check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")

    @classmethod
    def quadratic(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """The official release's "quad" schedule: sqrt(beta) linear, then squared."""
        _check_T(T)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        return cls(betas, name="quad")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021): alpha-bar = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2, betas clipped."""
        _check_T(T)
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64), name="cosine")

    @classmethod
    def from_name(cls, name: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Build a schedule from the official config's `beta_schedule` name ("linear", "quad", "cosine")."""
        if name == "linear":
            return cls.linear(T, beta_start, beta_end)
        if name in ("quad", "quadratic"):
            return cls.quadratic(T, beta_start, beta_end)
        if name == "cosine":
            return cls.cosine(T)
        raise DDIMError(f"beta_schedule must be one of 'linear', 'quad', 'cosine'; got {name!r}")

    def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
        """Zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
        Algorithm 1; diffusers' `rescale_zero_terminal_snr`): a new schedule whose sqrt(alpha) is shifted to 0
        at t = T - 1 and rescaled to keep its value at t = 0, so the last level is pure noise (the last beta
        is 1). Sample it with a v- or x0-prediction network on a grid that starts at T - 1 ("trailing")."""
        root = self.alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        abar = root**2
        betas = 1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])
        return NoiseSchedule(betas, name=f"{self.name}+zero-snr")

    # --- the forward process ---------------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        """alpha_t for a LongTensor of timesteps; t = -1 means alpha = 1 (clean data). float64, on t's device."""
        a = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod]).to(t.device)
        return a[t.long() + 1]

    def q_sample(self, x_0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) (eq. 4). x_0, noise [B, ...]; t LongTensor [B]."""
        a_t = self.alpha(t).to(x_0.dtype).view(-1, *([1] * (x_0.ndim - 1)))
        return a_t.sqrt() * x_0 + (1 - a_t).sqrt() * noise

    def to_dict(self) -> dict:
        """A JSON-friendly description that `from_dict` turns back into the same schedule."""
        return {"name": self.name, "betas": self.betas.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseSchedule":
        return cls(torch.tensor(d["betas"], dtype=torch.float64), name=d.get("name", "custom"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseSchedule) and torch.equal(self.betas, other.betas)

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.T})"


def _check_T(T: int) -> None:
    if not isinstance(T, (int, np.integer)) or isinstance(T, bool) or T < 1:
        raise DDIMError(f"T must be a positive integer, got {T!r}")


def timesteps(T: int, steps: int, skip: str = "uniform", alphas_cumprod: Tensor | None = None,
              order: int = 2) -> Tensor:
    """The sub-sequence tau (Sec. 4.2): an ascending LongTensor in [0, T).

    Spaced in timestep, with exactly `steps` entries:
    - "uniform": tau_i = i * (T // steps), the official release (diffusers' "leading").
    - "quad": int(linspace(0, sqrt(0.8 T), steps)^2), the official CIFAR-10 sequence. Repeated entries are
      kept as the official code has them; a sampler treats a repeat as an identity step.
    - "trailing": round(T - i * T / steps) - 1 (diffusers' "trailing"), always ends at T - 1.
    - "linspace": round(linspace(0, T - 1, steps)) (diffusers' "linspace").

    Spaced in noise level, between the levels of timestep 0 and T - 1 (both included), so they need
    `alphas_cumprod` [T]; each level is mapped to the timestep whose level it is (interpolating log-SNR
    linearly between integer timesteps, as diffusers' `_sigma_to_t` does), rounded, and duplicates are
    removed, so the result can be SHORTER than `steps` where the levels crowd (near t = 0 at large steps):
    - "logsnr": uniform in lambda = log(sqrt(a) / sqrt(1 - a)) (DPM-Solver's "logSNR" spacing, diffusers'
      `use_lu_lambdas`);
    - "karras": uniform in sigma^(1/7), sigma = sqrt((1 - a) / a) (Karras et al. 2022, rho = 7; diffusers'
      `use_karras_sigmas`);
    - "optimized": DMN's model-free optimized levels (Xue et al. 2024; `ddim.stepgrid`) for a solver of
      `order` (1-3: DDIM 1, DPM-Solver++(2M) and UniPC 2, the third-order methods 3; the sampler passes its
      solver's), fitted from the noise schedule alone in well under a second.
    With steps = 1 both give [T - 1]. If the last levels are 0 (zero terminal SNR) the top level is the
    last positive one.
    """
    _check_T(T)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise DDIMError(f"steps must be an integer in [1, T={T}], got {steps!r}")
    if skip in LEVEL_SKIPS:
        return _level_spaced(T, steps, skip, alphas_cumprod, order)
    i = np.arange(steps, dtype=np.float64)
    if skip == "uniform":
        seq = i * (T // steps)
    elif skip == "quad":
        seq = np.floor(np.linspace(0, np.sqrt(0.8 * T), steps) ** 2)
    elif skip == "trailing":
        seq = np.round(T - i * (T / steps)) - 1
    elif skip == "linspace":
        seq = np.round(np.linspace(0, T - 1, steps))
    else:
        raise DDIMError(f"skip must be one of {', '.join(map(repr, SKIPS))}; got {skip!r}")
    return torch.from_numpy(np.sort(seq).astype(np.int64))


def _level_spaced(T: int, steps: int, skip: str, alphas_cumprod: Tensor | None, order: int = 2) -> Tensor:
    """"logsnr", "karras", "optimized" (see `timesteps`): levels spaced between timestep 0 and T - 1, as timesteps."""
    if alphas_cumprod is None:
        raise DDIMError(f"skip={skip!r} is spaced in noise level: timesteps() needs the schedule's "
                         "alphas_cumprod (DDIMSampler passes it)")
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().numpy()
    if a.shape != (T,):
        raise DDIMError(f"alphas_cumprod must have shape ({T},), got {tuple(a.shape)}")
    top = int(np.nonzero(a > 0)[0][-1])                         # the last level with a finite log-SNR
    with np.errstate(divide="ignore"):
        lam = 0.5 * (np.log(a[: top + 1]) - np.log1p(-a[: top + 1]))   # lambda = log(sqrt(a) / sqrt(1 - a))
    u = np.linspace(0.0, 1.0, steps)                             # 0 at the top (noisiest) level
    if skip == "logsnr":
        levels = lam[top] + u * (lam[0] - lam[top])
    elif skip == "optimized":
        levels = optimized_log_snrs(float(lam[top]), float(lam[0]), steps, order)
    else:
        rho = 7.0                                                # Karras et al. (2022), eq. 5
        s_max, s_min = np.exp(-lam[top]), np.exp(-lam[0])        # sigma = sqrt((1 - a) / a) = exp(-lambda)
        levels = -rho * np.log(s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho)))
    # lambda falls with t: interpolate t(lambda) on the increasing -lambda, then round to the nearest timestep.
    t = np.interp(-levels, -lam, np.arange(top + 1, dtype=np.float64))
    return torch.from_numpy(np.unique(np.rint(t)).astype(np.int64))
