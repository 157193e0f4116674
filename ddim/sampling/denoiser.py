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

__all__ = ["Model", "Denoiser", "CLIPS"]

CLIPS: tuple = (False, True, "keep-eps")

Model = Callable[[Tensor, Tensor], Tensor]


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
    """

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str = "eps",
                 clip: bool | str = False) -> None:
        if prediction not in PREDICTIONS:
            raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if clip != "keep-eps" and (isinstance(clip, str) or clip not in (False, True)):
            raise DDIMError(f"clip_denoised must be one of {CLIPS}, got {clip!r}")
        self.model, self.prediction = model, prediction
        self.clip = clip if isinstance(clip, str) else bool(clip)
        self.alphas = schedule.alphas_cumprod.tolist()     # float64 host scalars, cast at the point of use
        self.nfe = 0

    def network(self, x: Tensor, t: int) -> Tensor:
        """One network call at timestep t for the whole batch; checks the output's shape."""
        out = self.model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        self.nfe += 1
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
