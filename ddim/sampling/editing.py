"""Editing real images with the sampler: SDEdit, inpainting (with RePaint resampling), class transfer.

Inpainting is a Solver around another solver: after each of its steps the kept pixels are replaced by a draw
of q(x_s | x_0) at the new level (exactly x_0 at the end, where a_s = 1), so every solver can inpaint.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.solvers import Denoise, Noise, Solver

__all__ = ["Inpainting", "check_mask"]


def check_mask(mask: Tensor, x_0: Tensor) -> Tensor:
    """mask shaped like x_0 [B, C, ...], or like its trailing dims ([H, W] for images), with 1 where x_0 is kept;
    any dim may be 1 (one mask for the batch, for every channel); images, sequences [B, C, L] and video
    [B, C, F, H, W] alike."""
    if not isinstance(mask, Tensor) or not 2 <= mask.ndim <= x_0.ndim or mask.is_complex():
        raise DDIMError(f"mask must be a real tensor shaped like x_0 {tuple(x_0.shape)} or its trailing dims (1 where "
                        "broadcast), got "
                        f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    try:
        torch.broadcast_shapes(mask.shape, x_0.shape)
    except RuntimeError:
        raise DDIMError(f"mask of shape {tuple(mask.shape)} does not broadcast to x_0 {tuple(x_0.shape)}") from None
    if ((mask < 0) | (mask > 1)).any():
        raise DDIMError("mask values must lie in [0, 1] (1: keep the pixel, 0: fill it in)")
    return mask.to(device=x_0.device, dtype=x_0.dtype)


class Inpainting(Solver):
    """Wrap `inner` so that the pixels where mask = 1 follow q(x_s | x_0) of the known image x_0 [B, ...] and the
    rest is generated (Lugmayr et al. 2022 without resampling; with `resample` = r > 1 each step is redone r
    times, re-noising x_s back to the step's start level in between: RePaint with jump length 1). Resampling
    needs a solver without history ("ddim"); every pass costs one more network call."""

    name = "inpainting"

    def __init__(self, inner: Solver, x_0: Tensor, mask: Tensor, resample: int = 1) -> None:
        if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
            raise DDIMError(f"resample must be an integer >= 1, got {resample!r}")
        if resample > 1 and getattr(inner, "has_history", True):
            raise DDIMError(f"resample > 1 repeats steps, which a multistep solver's history cannot do; use the "
                            f"'ddim' solver (got {inner!r})")
        self.inner, self.x_0, self.mask, self.resample = inner, x_0, check_mask(mask, x_0), resample
        self.deterministic = False

    def begin(self) -> None:
        self._inner = self.inner.fresh(self.plan)

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s = self.plan[i]
        for u in range(self.resample):
            x_s, x0_pred = self._inner.step(denoise, x, i, noise)
            known = self.x_0 if s.a_s >= 1 else math.sqrt(s.a_s) * self.x_0 + math.sqrt(1 - s.a_s) * noise()
            x_s = torch.lerp(x_s, known.to(x_s.dtype), self.mask)        # mask 1: the known image's draw
            if u < self.resample - 1:                                    # back to a_t: q(x_t | x_s)
                x = math.sqrt(s.a_t / s.a_s) * x_s + math.sqrt(1 - s.a_t / s.a_s) * noise()
        return x_s, x0_pred
