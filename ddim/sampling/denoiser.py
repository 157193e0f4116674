"""The denoiser layer: a network's output at timestep t turned into the pair (eps, x0_pred) a solver steps with.

Everything that concerns how the network's output is read lives here, once, before any solver sees it: the
prediction type (eps, x0 or v), clipping of x0_pred, and (later) guidance. A solver only ever sees eps and
x0_pred that agree with x at its level, x_t = sqrt(a_t) x0_pred + sqrt(1 - a_t) eps, unless the caller asks
for diffusers' clipping that keeps the network's eps (clip="keep-eps").
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.steps import PREDICTIONS, predict_eps_x0
from ddim.schedule import NoiseSchedule

__all__ = ["Model", "Denoiser", "CLIPS", "check_clip", "check_guidance"]

CLIPS: tuple = (False, True, "keep-eps")

Model = Callable[[Tensor, Tensor], Tensor]


def check_clip(clip: bool | str) -> bool | str:
    """clip_denoised: one of `CLIPS` (see `Denoiser`)."""
    if clip != "keep-eps" and (isinstance(clip, str) or clip not in (False, True)):
        raise DDIMError(f"clip_denoised must be one of {CLIPS}, got {clip!r}")
    return clip if isinstance(clip, str) else bool(clip)


def check_guidance(guidance: float) -> float:
    """The classifier-free guidance weight: a finite number (1: conditional, 0: unconditional)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise DDIMError(f"guidance must be a finite number (1: conditional, 0: unconditional), got {guidance!r}")
    return float(guidance)


class Denoiser:
    """`denoiser(x [B, ...], t, a_t) -> (eps, x0_pred)`, both [B, ...] like x, from one network call at t.

    t is the timestep the network is evaluated at and a_t the level of x. They differ only where a walk
    starts from clean data (inversion's first step: x at a_t = 1, the network at tau_1, where it was
    trained). An eps network gives eps, and x0_pred is where eps points from x at x's level; x0 and v
    outputs are read at the network's level alphas_cumprod[t], then corrected to agree with x.

    clip: False, no clipping (diffusers' `clip_sample=False`); True, clamp x0_pred to [-1, 1] and re-derive
    eps from it, so the pair still agrees with x (the official release; diffusers' `clip_sample=True` with
    `use_clipped_model_output=True`); "keep-eps", clamp x0_pred but keep the network's eps (diffusers'
    `clip_sample=True` with its default `use_clipped_model_output=False`): the one mode whose pair does not
    agree with x. Solvers that step on x0_pred alone (DPM-Solver++, UniPC) re-derive eps from x themselves,
    so for them True and "keep-eps" are the same. `nfe` counts the network calls made.

    y, guidance: class labels [B] (LongTensor, or an int for all; -1 is the null label) of a class-conditional
    network, and the classifier-free guidance weight w (Ho & Salimans 2022): the output is
    out(x, t, -1) + w (out(x, t, y) - out(x, t, -1)), both halves in one network call on a batch of 2B
    (w = 1: the conditional output alone, a call of B; w = 0: the unconditional one). It is composed here,
    before clipping and before any solver, so every solver sees one eps (the combination is linear in the
    output, so it is the same for eps, x0 and v networks).
    """

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str = "eps",
                 clip: bool | str = False, y: Tensor | int | None = None, guidance: float = 1.0) -> None:
        if prediction not in PREDICTIONS:
            raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.model, self.prediction, self.clip = model, prediction, check_clip(clip)
        self.alphas = schedule.alphas_cumprod.tolist()     # float64 host scalars, cast at the point of use
        self.nfe = 0
        guidance = check_guidance(guidance)
        bad_int = isinstance(y, bool) or (y is not None and not isinstance(y, (int, Tensor)))
        if bad_int or (isinstance(y, Tensor) and (y.dtype.is_floating_point or y.ndim > 1)):
            raise DDIMError(f"y must be an int or a LongTensor [B] of class labels (-1: none), got {y!r}")
        if y is None and guidance != 1:
            raise DDIMError(f"guidance={guidance} needs class labels of a class-conditional model (y; on the command "
                            "line --class or --classes)")
        self.y, self.guidance = y, guidance

    def network(self, x: Tensor, t: int) -> Tensor:
        """One network call at timestep t for the whole batch (guided: one call of 2B); checks the output's shape."""
        B = x.shape[0]
        t_b = torch.full((B,), t, dtype=torch.long, device=x.device)
        if self.y is None:
            out = self._call(t, x, t_b)
        else:
            y = torch.as_tensor(self.y, dtype=torch.long, device=x.device).reshape(-1).expand(B)
            w = self.guidance
            if w == 1 or w == 0:
                out = self._call(t, x, t_b, y if w == 1 else torch.full_like(y, -1))
            else:
                both = self._call(t, torch.cat([x, x]), torch.cat([t_b, t_b]), torch.cat([torch.full_like(y, -1), y]))
                uncond, cond = both.chunk(2)
                out = uncond + w * (cond - uncond)
        self.nfe += 1
        return out

    def _call(self, t: int, x: Tensor, *args: Tensor) -> Tensor:
        """The model on (x, *args); its output must be a tensor shaped like x."""
        out = self.model(x, *args)
        if not isinstance(out, Tensor):
            raise DDIMError(f"the model returned {type(out).__name__} at t={t}; it must return a tensor shaped "
                            f"like x {tuple(x.shape)}")
        if out.shape != x.shape:
            raise DDIMError(f"model output has shape {tuple(out.shape)} but x has {tuple(x.shape)} (t={t}); "
                            "the model must return a prediction shaped like x")
        return out

    def __call__(self, x: Tensor, t: int, a_t: float) -> tuple[Tensor, Tensor]:
        out = self.network(x, t)
        if self.prediction == "eps":
            eps = out
            x0_pred = torch.add(x, eps, alpha=-math.sqrt(1 - a_t)).div_(math.sqrt(a_t))   # "predicted x_0", eq. 12
        else:
            eps, x0_pred = predict_eps_x0(out, x, self.alphas[t], self.prediction)
            # The pair read at the network's level need not agree with x at its own level a_t (inversion's
            # first step). The minimum-norm correction makes it agree with no division, so it also holds
            # at a_t = 1 (x0_pred becomes x) and at a_t = 0 (eps becomes x); elsewhere r is roundoff.
            r = x - math.sqrt(a_t) * x0_pred - math.sqrt(1 - a_t) * eps
            x0_pred, eps = x0_pred.add_(r, alpha=math.sqrt(a_t)), eps.add_(r, alpha=math.sqrt(1 - a_t))
        if self.clip:
            x0_pred = x0_pred.clamp(-1, 1)
            if self.clip is True:                                  # re-derive eps so the pair agrees with x
                eps = torch.add(x, x0_pred, alpha=-math.sqrt(a_t)).div_(math.sqrt(1 - a_t))
        return eps, x0_pred
