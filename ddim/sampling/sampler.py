"""`DDIMSampler`, the public front: sampling (eq. 12), deterministic encoding (eq. 13), and their trajectories.

It resolves the user's options into a plan of levels, a denoiser and a fresh solver, all validated before the
first network call, and hands them to the one walk loop (`ddim.sampling.walk`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.denoiser import Denoiser, Model
from ddim.sampling.editing import Inpainting
from ddim.sampling.noise import Generator, randn
from ddim.sampling.plan import Step, invert_plan, resolve_taus, sample_plan
from ddim.sampling.registry import grid_order, make_solver
from ddim.sampling.solvers import Solver
from ddim.sampling.steps import PREDICTIONS
from ddim.sampling.walk import walk
from ddim.schedule import NoiseSchedule

__all__ = ["DDIMSampler"]


class DDIMSampler:
    """Sampling (eq. 12) and deterministic encoding (eq. 13) with a trained network.

    model(x [B, ...], t LongTensor [B]) returns the prediction named by `prediction` ("eps", "x0" or "v"),
    same shape as x. The sampler keeps no state between calls, except `last_nfe`: the network calls the most
    recently finished walk made (a guided call of 2B counts as one), as its denoiser counted them.
    """

    last_nfe: int | None = None

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if prediction == "eps" and schedule.alphas_cumprod[-1] <= 0:
            raise DDIMError("schedule: the last alpha is 0 (zero terminal SNR), where an eps-prediction "
                            "model cannot give x0 (division by sqrt(alpha) = 0); use prediction='v' or 'x0'")
        self.model = model
        self.schedule = schedule
        self.prediction = prediction

    def taus(self, steps: int, skip: str | Sequence[int] = "uniform", steps_offset: int = 0, order: int = 2) -> Tensor:
        """The ascending sub-sequence tau, duplicates removed. `skip` a name or an explicit list of timesteps
        (ascending, or diffusers' descending `timesteps` as they are); `order`: the solver order the
        "optimized" grid is fitted for (the sampling methods pass their solver's)."""
        return resolve_taus(self.schedule.T, steps, skip, self.schedule.alphas_cumprod, steps_offset, order)

    def denoiser(self, clip: bool | str = False, y: Tensor | int | None = None, guidance: float = 1.0,
                 **toolbox: Any) -> Denoiser:
        """The network as solvers see it, (x, t, a_t) -> (eps, x0_pred), for one walk (clip: False, True,
        "keep-eps" or "dynamic"; `toolbox`: guidance_interval, guidance_rescale, threshold_ratio, threshold_max,
        see `Denoiser`); a model that keeps state across the calls of a walk (a feature cache) is reset through
        its `reset_cache`."""
        denoiser = Denoiser(self.model, self.schedule, self.prediction, clip, y, guidance, **toolbox)
        reset = getattr(self.model, "reset_cache", None)
        if callable(reset):
            reset()
        return denoiser

    def sample_plan(self, steps: int, skip: str | Sequence[int] = "uniform", final_alpha: float | str = 1.0,
                    steps_offset: int = 0, order: int = 2) -> tuple[Step, ...]:
        """The levels `sample` walks: tau_S -> ... -> tau_1 -> alpha = 1 (or alphas_cumprod[0], "alpha_0")."""
        return sample_plan(self.schedule, self.taus(steps, skip, steps_offset, order), final_alpha)

    def invert_plan(self, steps: int, skip: str | Sequence[int] = "uniform", steps_offset: int = 0,
                    order: int = 2) -> tuple[Step, ...]:
        """The levels `invert` walks: alpha = 1 -> tau_1 -> ... -> tau_S."""
        return invert_plan(self.schedule, self.taus(steps, skip, steps_offset, order))

    def _bound(self, solver: Solver) -> Solver:
        """A solver that snaps levels to trained timesteps (churn, restart) gets this schedule's levels."""
        if callable(getattr(solver, "bind", None)) and getattr(solver, "alphas", None) is None:
            solver = copy.copy(solver).bind(self.schedule.alphas_cumprod.tolist())
        return solver

    def _walk(self, x: Tensor, plan: Sequence[Step], denoise: Denoiser, solver: Solver, generator: Generator = None,
              progress: bool = False, desc: str = "sampling") -> Iterator[tuple[int, Tensor, Tensor]]:
        """`walk`, recording the denoiser's call count in `last_nfe` once the walk has finished."""
        yield from walk(x, plan, denoise, solver, generator, progress, desc)
        self.last_nfe = denoise.nfe

    # -- public API
    def iter_sample(self, x_T: Tensor, steps: int = 50, eta: float = 0.0, skip: str | Sequence[int] = "uniform",
                    variance: str = "eta", generator: Generator = None, clip_denoised: bool | str = False,
                    progress: bool = False, solver: str | Solver = "ddim", *, final_alpha: float | str = 1.0,
                    steps_offset: int = 0, y: Tensor | int | None = None, guidance: float = 1.0,
                    guidance_interval: tuple[float, float] | None = None, guidance_rescale: float = 0.0,
                    threshold_ratio: float = 0.995, threshold_max: float | None = None
                    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Like `sample`, yielding (t, x_s, x0_pred) after each step; the last x_s is the sample."""
        template = self._bound(make_solver(solver, eta, variance))   # all validated before the first next()
        plan = self.sample_plan(steps, skip, final_alpha, steps_offset, order=grid_order(template))
        denoise = self.denoiser(clip_denoised, y, guidance, guidance_interval=guidance_interval,
                                guidance_rescale=guidance_rescale, threshold_ratio=threshold_ratio,
                                threshold_max=threshold_max)
        return self._walk(x_T, plan, denoise, template.fresh(plan), generator, progress)

    def sample(self, x_T: Tensor, steps: int = 50, eta: float = 0.0, skip: str | Sequence[int] = "uniform",
               variance: str = "eta", generator: Generator = None, clip_denoised: bool | str = False,
               progress: bool = False, solver: str | Solver = "ddim", *, final_alpha: float | str = 1.0,
               steps_offset: int = 0, y: Tensor | int | None = None, guidance: float = 1.0,
               guidance_interval: tuple[float, float] | None = None, guidance_rescale: float = 0.0,
               threshold_ratio: float = 0.995, threshold_max: float | None = None) -> Tensor:
        """Generate x_0 [B, ...] from noise x_T [B, ...] over the sub-sequence tau (eq. 12, sigma of eq. 16).

        steps: S, the length of tau. eta: 0 is DDIM (deterministic), 1 is DDPM. skip: "uniform", "quad",
        "trailing", "linspace", "logsnr", "karras" (these two can give fewer than S distinct timesteps; see
        `ddim.schedule.timesteps`) or an explicit ascending list of timesteps. variance: "eta" (eq. 16 times
        eta) or "large" (Table 1's sigma-hat: DDPM ancestral steps with variance 1 - a_t/a_s, x0_pred
        clipped to [-1, 1], no noise on the final step; eta is then ignored). generator: a torch.Generator,
        or a list of one per sample so that sample i does not depend on its batch. clip_denoised: True clips
        x0_pred to [-1, 1] each step and recomputes eps from it (diffusers' clip_sample=True,
        use_clipped_model_output=True); "keep-eps" clips x0_pred but keeps the network's eps (clip_sample=True,
        use_clipped_model_output=False). solver: "ddim" (eta and variance are its options), another name in
        `ddim.sampling.SOLVERS` ("plms", "dpm++2m", "dpm++3m", "dpm++3m-shipped", "unipc"; docs/SOLVERS.md)
        or a `Solver` instance.

        Keyword-only, for diffusers configs: final_alpha, the level of the last step: 1.0 (the paper;
        diffusers' set_alpha_to_one=True) or "alpha_0", alphas_cumprod[0] (set_alpha_to_one=False, as in
        the Stable Diffusion configs). steps_offset: added to every tau of a named skip (diffusers'
        steps_offset, e.g. 1 with "uniform" = diffusers' "leading"). y, guidance: class labels (LongTensor [B]
        or an int; -1 = none) of a class-conditional network and the classifier-free guidance weight (1:
        conditional, 0: unconditional, > 1: guided, one network call of 2B per step); see `Denoiser`.

        The guidance toolbox (see `Denoiser`; docs/SOLVERS.md): guidance_interval=(t_lo, t_hi), w applies only at
        timesteps t_lo <= t <= t_hi (one call of B elsewhere); guidance_rescale=phi (CFG rescale, diffusers'
        guidance_rescale); clip_denoised="dynamic" with threshold_ratio (0.995) and threshold_max (None: no
        cap), Imagen's dynamic thresholding.
        """
        x = x_T
        for _, x, _ in self.iter_sample(x_T, steps, eta, skip, variance, generator, clip_denoised, progress, solver,
                                        final_alpha=final_alpha, steps_offset=steps_offset, y=y, guidance=guidance,
                                        guidance_interval=guidance_interval, guidance_rescale=guidance_rescale,
                                        threshold_ratio=threshold_ratio, threshold_max=threshold_max):
            pass
        return x

    def iter_invert(self, x_0: Tensor, steps: int = 50, skip: str | Sequence[int] = "uniform",
                    progress: bool = False, solver: str | Solver = "ddim", *, steps_offset: int = 0,
                    y: Tensor | int | None = None, guidance: float = 1.0,
                    guidance_interval: tuple[float, float] | None = None, guidance_rescale: float = 0.0
                    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Like `invert`, yielding (t, x_s, x0_pred) after each step; the last x_s is the latent."""
        template = make_solver(solver)
        if not template.deterministic:
            raise DDIMError(f"solver: inversion needs a deterministic solver (eta = 0), got {template!r}")
        plan = self.invert_plan(steps, skip, steps_offset, order=grid_order(template))
        denoise = self.denoiser(False, y, guidance, guidance_interval=guidance_interval,
                                guidance_rescale=guidance_rescale)
        return self._walk(x_0, plan, denoise, template.fresh(plan), progress=progress, desc="encoding")

    def invert(self, x_0: Tensor, steps: int = 50, skip: str | Sequence[int] = "uniform",
               progress: bool = False, solver: str | Solver = "ddim", *, steps_offset: int = 0,
               y: Tensor | int | None = None, guidance: float = 1.0,
               guidance_interval: tuple[float, float] | None = None, guidance_rescale: float = 0.0) -> Tensor:
        """Encode data x_0 [B, ...] into the latent x_T at level tau_S with the deterministic ODE (eq. 13).

        See `ddim.sampling.plan` for the levels; `sample(invert(x_0, S), S)` reconstructs x_0, with any
        deterministic solver (the same formulas walk the levels in the other order).
        """
        x = x_0
        for _, x, _ in self.iter_invert(x_0, steps, skip, progress, solver, steps_offset=steps_offset, y=y,
                                        guidance=guidance, guidance_interval=guidance_interval,
                                        guidance_rescale=guidance_rescale):
            pass
        return x

    # -- editing real images (Sec. 5.4's encoder and what came after)
    def sdedit(self, x_0: Tensor, strength: float, steps: int = 50, generator: Generator = None, **options: Any
               ) -> Tensor:
        """SDEdit (Meng et al. 2022): noise x_0 [B, ...] part of the way and sample back.

        The last round(strength * S) of the S taus are walked: x_0 is noised to the first of them with
        q(x_t | x_0) (noise from `generator`), then sampled with `options` (eta, solver, y, guidance, ...).
        strength 0 returns x_0 exactly; strength 1 starts from pure noise, exactly `sample(noise, steps)`.
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise DDIMError(f"strength must be a number in [0, 1], got {strength!r}")
        taus = self.taus(steps, options.pop("skip", "uniform"), options.pop("steps_offset", 0))
        k = round(strength * len(taus))
        if k == 0:
            return x_0.clone()
        z = randn(x_0.shape, generator, x_0.device, x_0.dtype)
        if k == len(taus):
            x_t = z
        else:
            a = float(self.schedule.alphas_cumprod[taus[k - 1]])
            x_t = math.sqrt(a) * x_0 + math.sqrt(1 - a) * z                       # q(x_t | x_0), eq. 4
        return self.sample(x_t, k, skip=taus[:k].tolist(), generator=generator, **options)

    def inpaint(self, x_0: Tensor, mask: Tensor, steps: int = 50, generator: Generator = None,
                resample: int = 1, **options: Any) -> Tensor:
        """Fill in x_0 [B, ...] where mask = 0 (mask [B or 1, 1 or C, H, W], 1 = keep): sample from pure noise
        while, after every step, the kept pixels are replaced by q(x_s | x_0); they end exactly as x_0.
        resample > 1: RePaint's resampling (each step redone that many times). `options` as in `sample`."""
        inner = make_solver(options.pop("solver", "ddim"), options.pop("eta", 0.0), options.pop("variance", "eta"))
        solver = Inpainting(inner, x_0, mask, resample)
        x_T = randn(x_0.shape, generator, x_0.device, x_0.dtype)
        return self.sample(x_T, steps, generator=generator, solver=solver, **options)

    def transfer(self, x_0: Tensor, y_from: Tensor | int, y_to: Tensor | int, steps: int = 50,
                 guidance: float = 1.0, **options: Any) -> Tensor:
        """Class transfer: encode x_0 [B, ...] with its class y_from (deterministic inversion, guidance 1) and
        decode the latent with class y_to and `guidance` (eta 0): the same "style", another class."""
        z = self.invert(x_0, steps, y=y_from, **{k: v for k, v in options.items() if k in ("skip", "solver",
                                                                                       "steps_offset")})
        return self.sample(z, steps, y=y_to, guidance=guidance, **options)
