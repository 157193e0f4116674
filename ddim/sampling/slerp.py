"""Spherical interpolation of latents (the paper's Sec. 5.3, Figure 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from ddim.errors import DDIMError

__all__ = ["slerp"]


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor, dot_threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation of latents, per sample over all non-batch dims (the paper's Sec. 5.3).

    z0, z1 [B, ...]; alpha a float or a tensor [B]. Exact at alpha = 0 and 1. Where the latents are nearly
    parallel or anti-parallel (|cos| > dot_threshold) the arc is ill-conditioned and linear interpolation
    is used instead.
    """
    if z0.shape != z1.shape:
        raise DDIMError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.ndim < 2:
        raise DDIMError(f"z0, z1 need a batch dimension [B, ...], got shape {tuple(z0.shape)}")
    if not bool(torch.isfinite(torch.as_tensor(alpha)).all()):
        raise DDIMError(f"alpha must be finite (0 gives z0, 1 gives z1), got {alpha!r}")
    f0, f1 = z0.flatten(1), z1.flatten(1)
    work = torch.promote_types(z0.dtype, torch.float32)
    a = torch.as_tensor(alpha, dtype=work, device=z0.device).reshape(-1, 1)
    n0, n1 = f0.norm(dim=1, dtype=work), f1.norm(dim=1, dtype=work)
    for name, n in (("z0", n0), ("z1", n1)):
        zero = torch.nonzero(~(n > 0)).flatten().tolist()            # also NaN norms
        if zero:
            raise DDIMError(f"{name}: sample {zero[0]} is all zeros (or not finite); slerp interpolates directions "
                            "and needs a nonzero latent")
    cos = (f0 * f1).sum(1, dtype=work) / (n0 * n1)
    theta = torch.arccos(cos.clamp(-1, 1)).unsqueeze(1)
    w0 = torch.sin((1 - a) * theta) / torch.sin(theta)
    w1 = torch.sin(a * theta) / torch.sin(theta)
    linear = cos.abs().unsqueeze(1) > dot_threshold
    w0 = torch.where(linear, 1 - a, w0)
    w1 = torch.where(linear, a, w1)
    return (w0 * f0 + w1 * f1).to(z0.dtype).reshape(z0.shape)
