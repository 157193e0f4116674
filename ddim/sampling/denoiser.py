"""The denoiser layer: a network's output at timestep t turned into the pair (eps, x0_pred) a solver steps with.

Everything that concerns how the network's output is read lives here, once, before any solver sees it: the
prediction type (eps, x0 or v), clipping of x0_pred, and (later) guidance. A solver only ever sees eps and
x0_pred that agree with x at its level, x_t = sqrt(a_t) x0_pred + sqrt(1 - a_t) eps, unless the caller asks
for diffusers' clipping that keeps the network's eps (clip="keep-eps").
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.condition import Condition
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

    cond, uncond: the general form of y and its null label (`Condition.make`): a tensor, given to the network as
    its third positional argument (text embeddings of a UNet2DConditionModel, class labels), or a dict of its
    keyword arguments, every tensor batch-first ([B, ...] or [1, ...] for all); uncond is the null condition (a
    negative prompt's embeddings), of the same form, needed when guidance != 1. The guided call is the same one
    call of 2B, uncond's rows first. A keyword the network does not take is refused here, before any call.
    """

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str = "eps",
                 clip: bool | str = False, y: Tensor | int | None = None, guidance: float = 1.0,
                 cond: Any = None, uncond: Any = None) -> None:
        if prediction not in PREDICTIONS:
            raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.model, self.prediction, self.clip = model, prediction, check_clip(clip)
        self.alphas = schedule.alphas_cumprod.tolist()     # float64 host scalars, cast at the point of use
        self.nfe = 0
        guidance = check_guidance(guidance)
        bad_int = isinstance(y, bool) or (y is not None and not isinstance(y, (int, Tensor)))
        if bad_int or (isinstance(y, Tensor) and (y.dtype.is_floating_point or y.ndim > 1)):
            raise DDIMError(f"y must be an int or a LongTensor [B] of class labels (-1: none), got {y!r}")
        if y is not None and (cond is not None or uncond is not None):
            raise DDIMError("y: give class labels as y or the condition as cond= / uncond=, not both")
        if y is not None:
            self.cond = Condition.labels(y)
            self.uncond = self.cond.null_labels()
        else:
            self.cond, self.uncond = Condition.make(cond, "cond"), Condition.make(uncond, "uncond")
        if self.cond is None and guidance != 1:
            raise DDIMError(f"guidance={guidance} needs class labels of a class-conditional model (y; on the command "
                            "line --class or --classes) or a condition (cond= and uncond=)")
        if self.uncond is None and guidance != 1:
            raise DDIMError(f"uncond: guidance={guidance} needs the null condition (uncond=: a negative prompt's "
                            "embeddings, the null label) beside cond=")
        if self.cond is None and self.uncond is not None:
            raise DDIMError("uncond: the null condition is given without cond=")
        for c in (self.cond, self.uncond):
            if c is not None and (y is None or callable(getattr(model, "check_condition", None))):
                c.check_signature(model)
        if self.cond is not None and self.uncond is not None and guidance not in (0, 1) and y is None:
            self.cond.pair(self.uncond)                     # same form, checked before any call
        self.y, self.guidance = y, guidance

    def check_batch(self, batch: int) -> None:
        """The condition's tensors have one row per sample of the batch, or one for all."""
        for c in (self.cond, self.uncond):
            if c is not None:
                c.check_batch(batch)

    def network(self, x: Tensor, t: int | Tensor) -> Tensor:
        """One network call at timestep t for the whole batch, or at t[i] for sample i (a LongTensor [B]); guided:
        one call of 2B; checks the output's shape."""
        B = x.shape[0]
        t_b = t.to(x.device) if isinstance(t, Tensor) else torch.full((B,), t, dtype=torch.long, device=x.device)
        w = self.guidance
        if self.cond is None:
            out = self._call(t, x, t_b)
        elif w == 1 or w == 0:
            out = self._call(t, x, t_b, (self.cond if w == 1 else self.uncond).expand(B, x.device))
        else:
            both_c = self.uncond.expand(B, x.device).pair(self.cond.expand(B, x.device))
            both = self._call(t, torch.cat([x, x]), torch.cat([t_b, t_b]), both_c)
            uncond, cond = both.chunk(2)
            out = uncond + w * (cond - uncond)
        self.nfe += 1
        return out

    def _call(self, t: int, x: Tensor, t_b: Tensor, cond: Condition | None = None) -> Tensor:
        """The model on (x, t_b) and the condition; its output must be a tensor shaped like x."""
        out = self.model(x, t_b) if cond is None else cond(self.model, x, t_b)
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
