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
from ddim.sampling.steps import PREDICTIONS, afs_eps_x0, predict_eps_x0
from ddim.schedule import NoiseSchedule

__all__ = ["Model", "Denoiser", "CLIPS", "GUIDANCE_MODES", "check_clip", "check_guidance", "check_guidance_mode",
           "rescale_guided", "dynamic_threshold", "check_toolbox", "check_afs"]

CLIPS: tuple = (False, True, "keep-eps", "dynamic")
GUIDANCE_MODES: tuple[str, ...] = ("cfg", "cfg++")

Model = Callable[[Tensor, Tensor], Tensor]


def check_clip(clip: bool | str) -> bool | str:
    """clip_denoised: one of `CLIPS` (see `Denoiser`)."""
    if clip not in ("keep-eps", "dynamic") and (isinstance(clip, str) or clip not in (False, True)):
        raise DDIMError(f"clip_denoised must be one of {CLIPS}, got {clip!r}")
    return clip if isinstance(clip, str) else bool(clip)


def check_guidance(guidance: float) -> float:
    """The classifier-free guidance weight: a finite number (1: conditional, 0: unconditional)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise DDIMError(f"guidance must be a finite number (1: conditional, 0: unconditional), got {guidance!r}")
    return float(guidance)


def check_guidance_mode(mode: str, guidance: float = 1.0) -> str:
    """guidance_mode: "cfg" (classifier-free guidance, weight w) or "cfg++" (CFG++, `guidance` lambda in [0, 1])."""
    if mode not in GUIDANCE_MODES:
        raise DDIMError(f"guidance_mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    if mode == "cfg++" and not 0 <= guidance <= 1:
        raise DDIMError(f"guidance={guidance}: with guidance_mode='cfg++' it is lambda in [0, 1]")
    return mode


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

    guidance_mode "cfg++" (CFG++, Chung et al., ICLR 2025): `guidance` is lambda in [0, 1]; the pair is the
    guided x0_pred (of the output with weight lambda) with the unconditional eps, so a DDIM step renoises with
    the unconditional eps. inverting=True (eq. 13's inversion) swaps them, the paper's inversion: x0_pred from
    the unconditional output, the guided eps to renoise. lambda = 0 is w = 0 (one call of B); otherwise one
    call of 2B. The pair does not agree with x (like "keep-eps"), so solvers that re-derive eps from x0_pred
    see ordinary CFG with weight lambda; clip=True (which re-derives eps) is refused.

    The guidance toolbox, for every solver, inversion and prediction type:
    - guidance_interval (t_lo, t_hi) (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval"):
      w applies only at network timesteps t_lo <= t <= t_hi; elsewhere the conditional output alone, one
      call of B. None: w at every level.
    - guidance_rescale phi (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
      eq. 15-16; diffusers' `guidance_rescale`): the guided output is rescaled to the per-sample standard
      deviation of the conditional one and mixed, phi * rescaled + (1 - phi) * guided. 0: off (bit-equal).
    - clip "dynamic" (Imagen, Saharia et al. 2022): per sample, s = the threshold_ratio quantile of |x0_pred|,
      s = clamp(s, 1, threshold_max) (threshold_max None: no cap, Imagen), x0_pred = clamp(x0_pred, -s, s) / s;
      eps is re-derived so the pair agrees with x (as clip=True). diffusers' DDIMScheduler(thresholding=True)
      with `dynamic_thresholding_ratio` and `sample_max_value`.

    afs=True: the analytic first step (AFS; Zhou et al., CVPR 2024): the first call of the walk makes no network
    call and returns `ddim.sampling.steps.afs_eps_x0` at its level (eps = x, the estimate of pure noise), so a
    walk of N network calls takes N + 1 steps' worth of evaluations; every later call is the network's. A
    denoiser serves one walk, so "first" is the walk's start, x_T (sampling only: `WalkOptions` refuses it for
    inversion, `DDIMSampler.sdedit` for a walk that starts below pure noise). `nfe` does not count it.

    guide: autoguidance (Karras et al., NeurIPS 2024, "Guiding a Diffusion Model with a Bad Version of Itself"):
    a weaker network of the same task (smaller, trained shorter), with the same prediction type, schedule and
    condition as `model`. The guided output is then guide(x, t, c) + w (model(x, t, c) - guide(x, t, c)) with
    `guidance` w: the reference is the weak network on the same condition, not the null label, so it needs no
    labels and applies to unconditional models too (w = 1: the model alone, one call; w = 0: the guide alone).
    The two networks are two calls of B; `nfe` counts the pair as one evaluation, as it counts CFG's call of 2B.
    guidance_interval and guidance_rescale apply to it as to CFG; CFG++ is refused with a guide.

    cond, uncond: the general form of y and its null label (`Condition.make`): a tensor, given to the network as
    its third positional argument (text embeddings of a UNet2DConditionModel, class labels), or a dict of its
    keyword arguments, every tensor batch-first ([B, ...] or [1, ...] for all); uncond is the null condition (a
    negative prompt's embeddings), of the same form, needed when guidance != 1. The guided call is the same one
    call of 2B, uncond's rows first. A keyword the network does not take is refused here, before any call.
    """

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str = "eps",
                 clip: bool | str = False, y: Tensor | int | None = None, guidance: float = 1.0,
                 guidance_mode: str = "cfg", inverting: bool = False, *, cond: Any = None, uncond: Any = None,
                 guidance_interval: tuple[float, float] | None = None, guidance_rescale: float = 0.0,
                 threshold_ratio: float = 0.995, threshold_max: float | None = None, afs: bool = False,
                 guide: Model | None = None) -> None:
        if prediction not in PREDICTIONS:
            raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.model, self.prediction, self.clip = model, prediction, check_clip(clip)
        (self.guidance_interval, self.guidance_rescale, self.threshold_ratio,
         self.threshold_max) = check_toolbox(guidance_interval, guidance_rescale, threshold_ratio, threshold_max)
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
        if guide is not None and not callable(guide):
            raise DDIMError(f"guide must be a network callable as guide(x, t), got {type(guide).__name__}")
        self.guide = guide
        if guide is not None and guidance_mode != "cfg":
            raise DDIMError(f"guidance_mode={guidance_mode!r} with a guide network: autoguidance combines the model "
                            "and its guide as plain guidance does; use guidance_mode='cfg'")
        if self.cond is None and guidance != 1 and guide is None:
            raise DDIMError(f"guidance={guidance} needs class labels of a class-conditional model (y; on the command "
                            "line --class or --classes), a condition (cond= and uncond=) or a guide network "
                            "(autoguidance: guide=, --guide)")
        if self.uncond is None and guidance != 1 and guide is None:
            raise DDIMError(f"uncond: guidance={guidance} needs the null condition (uncond=: a negative prompt's "
                            "embeddings, the null label) beside cond=")
        if self.cond is None and self.uncond is not None:
            raise DDIMError("uncond: the null condition is given without cond=")
        for net in (model, guide) if guide is not None else (model,):
            for c in (self.cond, self.uncond):
                if c is not None and (y is None or callable(getattr(net, "check_condition", None))):
                    try:
                        c.check_signature(net)
                    except DDIMError as e:
                        raise type(e)(f"guide: {e}" if net is guide else str(e)) from None
        if self.cond is not None and self.uncond is not None and guidance not in (0, 1) and y is None and guide is None:
            self.cond.pair(self.uncond)                     # same form, checked before any call
        self.y, self.guidance = y, guidance
        if check_guidance_mode(guidance_mode, guidance) == "cfg++":
            if self.cond is None:
                raise DDIMError("guidance_mode='cfg++' needs class labels (y) or a condition (cond= and uncond=)")
            if self.clip is True or self.clip == "dynamic":
                raise DDIMError(f"clip_denoised={self.clip!r} re-derives eps from x0_pred, which undoes CFG++'s "
                                "unconditional eps; use 'keep-eps' or False with guidance_mode='cfg++'")
        self.cfgpp = guidance_mode == "cfg++" and guidance != 0       # lambda = 0 is plain w = 0
        self.inverting = bool(inverting)
        self.afs = check_afs(afs)
        self._analytic_next = self.afs                # the next call is AFS's (the walk's first)

    def check_batch(self, batch: int) -> None:
        """The condition's tensors have one row per sample of the batch, or one for all."""
        for c in (self.cond, self.uncond):
            if c is not None:
                c.check_batch(batch)

    def network(self, x: Tensor, t: int | Tensor) -> Tensor:
        """One network call at timestep t for the whole batch, or at t[i] for sample i (a LongTensor [B]); guided:
        one call of 2B; checks the output's shape."""
        return self._outputs(x, t)[0]

    def _outputs(self, x: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor | None]:
        """(guided output, unconditional output or None) from one network call (CFG++ keeps both halves)."""
        B = x.shape[0]
        t_b = t.to(x.device) if isinstance(t, Tensor) else torch.full((B,), t, dtype=torch.long, device=x.device)
        uncond = None
        w, interval = self.guidance, self.guidance_interval
        outside = interval is not None and not interval[0] <= t <= interval[1]
        if outside:
            w = 1.0                                   # outside the guidance interval: the conditional output
        if self.guide is not None:                    # autoguidance: the weak network is the reference
            c = None if self.cond is None else self.cond.expand(B, x.device)
            cond = self._call(t, x, t_b, c) if w != 0 else None
            if w == 1:
                out = cond
            else:
                weak = self._call(t, x, t_b, c, self.guide)
                out = weak if w == 0 else torch.lerp(weak, cond, w)
                if self.guidance_rescale and w != 0:
                    out = rescale_guided(out, cond, self.guidance_rescale)
        elif self.cond is None:
            out = self._call(t, x, t_b)
        elif (w == 1 and (outside or not self.cfgpp)) or w == 0:
            out = self._call(t, x, t_b, (self.cond if w == 1 else self.uncond).expand(B, x.device))
        else:
            both_c = self.uncond.expand(B, x.device).pair(self.cond.expand(B, x.device))
            both = self._call(t, torch.cat([x, x]), torch.cat([t_b, t_b]), both_c)
            uncond, cond = both.chunk(2)
            out = uncond + w * (cond - uncond)
            if self.guidance_rescale:
                out = rescale_guided(out, cond, self.guidance_rescale)
        self.nfe += 1
        return out, uncond

    def _call(self, t: int, x: Tensor, t_b: Tensor, cond: Condition | None = None, net: Model | None = None
              ) -> Tensor:
        """The model (or `net`, the guide) on (x, t_b) and the condition; its output must be a tensor shaped
        like x."""
        net = self.model if net is None else net
        out = net(x, t_b) if cond is None else cond(net, x, t_b)
        if not isinstance(out, Tensor):
            raise DDIMError(f"the model returned {type(out).__name__} at t={t}; it must return a tensor shaped "
                            f"like x {tuple(x.shape)}")
        if out.shape != x.shape:
            raise DDIMError(f"model output has shape {tuple(out.shape)} but x has {tuple(x.shape)} (t={t}); "
                            "the model must return a prediction shaped like x")
        return out

    def __call__(self, x: Tensor, t: int, a_t: float) -> tuple[Tensor, Tensor]:
        if self._analytic_next:                       # AFS: no network call, no guidance, nothing to clip
            self._analytic_next = False
            return afs_eps_x0(x, a_t)
        out, uncond = self._outputs(x, t)
        eps, x0_pred = self._pair(out, x, t, a_t)
        if self.cfgpp and uncond is not None:  # CFG++: the guided x0_pred, the unconditional eps (inverting: swapped)
            eps_u, x0_u = self._pair(uncond, x, t, a_t)
            eps, x0_pred = (eps, x0_u) if self.inverting else (eps_u, x0_pred)
        if self.clip:
            if self.clip == "dynamic":
                x0_pred = dynamic_threshold(x0_pred, self.threshold_ratio, self.threshold_max)
            else:
                x0_pred = x0_pred.clamp(-1, 1)
            if self.clip != "keep-eps":                            # re-derive eps so the pair agrees with x
                eps = torch.add(x, x0_pred, alpha=-math.sqrt(a_t)).div_(math.sqrt(1 - a_t))
        return eps, x0_pred

    def _pair(self, out: Tensor, x: Tensor, t: int, a_t: float) -> tuple[Tensor, Tensor]:
        """A network output -> (eps, x0_pred) that agree with x at its level a_t."""
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
        return eps, x0_pred


def check_afs(afs: bool) -> bool:
    """afs: True or False (the analytic first step, `Denoiser`)."""
    if not isinstance(afs, bool):
        raise DDIMError(f"afs must be True or False, got {afs!r}")
    return afs


def rescale_guided(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """CFG rescale (Lin et al. 2024, eq. 15-16): phi * guided * std(cond) / std(guided) + (1 - phi) * guided,
    standard deviations per sample over all other dimensions. Tensors [B, ...]."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return torch.lerp(guided, rescaled, phi)


def dynamic_threshold(x0: Tensor, ratio: float = 0.995, max_value: float | None = None) -> Tensor:
    """Imagen's dynamic thresholding of x0 [B, ...]: per sample s = quantile(|x0|, ratio), at least 1 (at most
    max_value), then x0 clamped to [-s, s] and divided by s. Computed in float32 or wider."""
    flat = x0.reshape(len(x0), -1)
    flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)
    s = s.view(-1, *([1] * (x0.ndim - 1))).to(flat.dtype)
    return (torch.maximum(torch.minimum(flat.view_as(x0), s), -s) / s).to(x0.dtype)


def check_toolbox(guidance_interval: object = None, guidance_rescale: object = 0.0, threshold_ratio: object = 0.995,
                  threshold_max: object = None) -> tuple:
    """The guidance toolbox's options checked (DDIMError naming the keyword) and normalized to floats."""
    return (check_interval(guidance_interval), _check_number(guidance_rescale, "guidance_rescale", 0.0, 1.0),
            _check_number(threshold_ratio, "threshold_ratio", 0.0, 1.0),
            None if threshold_max is None else _check_number(threshold_max, "threshold_max", 1.0))


def check_interval(interval: object) -> tuple[float, float] | None:
    """guidance_interval: None or a pair (t_lo, t_hi) of timesteps with t_lo <= t_hi, as floats."""
    if interval is None:
        return None
    try:
        lo, hi = interval                                               # type: ignore[misc]
    except (TypeError, ValueError):
        lo = hi = None
    ok = all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi))
    if not ok or lo > hi:                                               # type: ignore[operator]
        raise DDIMError(f"guidance_interval must be a pair (t_lo, t_hi) of timesteps with t_lo <= t_hi, "
                        f"got {interval!r}")
    return float(lo), float(hi)                                         # type: ignore[arg-type]


def _check_number(value: object, name: str, lo: float, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        span = f"in [{lo:g}, {hi:g}]" if hi < math.inf else f">= {lo:g}"
        raise DDIMError(f"{name} must be a number {span}, got {value!r}")
    return float(value)
