"""`DDIMSampler`, the public front: sampling (eq. 12), deterministic encoding (eq. 13), and their trajectories.

Its keyword API builds one `WalkOptions` (each option defaulted and validated there, once); `prepare` resolves
the options against the model into a plan of levels, a denoiser and a fresh solver, checked before the first
network call, and `walk` hands them to the one walk loop (`ddim.sampling.walk`).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.denoiser import Denoiser, Model
from ddim.sampling.editing import Inpainting
from ddim.sampling.exact import Coupled
from ddim.sampling.network import as_network
from ddim.sampling.noise import Generator, check_generator, randn
from ddim.sampling.options import DEFAULTS as D
from ddim.sampling.options import WalkOptions
from ddim.sampling.plan import Plan, invert_plan, resolve_taus, sample_plan
from ddim.sampling.refine import Refined, check_refine
from ddim.sampling.registry import grid_order
from ddim.sampling.solvers import Solver
from ddim.sampling.steps import PREDICTIONS
from ddim.sampling.walk import walk
from ddim.schedule import NoiseSchedule

__all__ = ["DDIMSampler"]

_RUNTIME = ("y", "cond", "uncond", "progress")          # what `options` of the editing methods may hold besides WalkOptions' fields
_WALK = tuple(WalkOptions.__dataclass_fields__)


def _last(trajectory: Iterator[tuple[int, Tensor, Tensor]]) -> Tensor | Coupled:
    """The last x_s of a walk's trajectory: the sample (or the latent; an exact inversion's `Coupled` one)."""
    for _, x, _ in trajectory:
        pass
    finish = getattr(trajectory, "finish", None)
    return finish(x) if finish is not None else x


class _Trajectory:
    """A walk's (t, x_s, x0_pred) iterator that records `last_nfe` when it ends and knows what the walk returns:
    the last x_s, or for an exact solver's inversion the `Coupled` latent (`finish`)."""

    def __init__(self, sampler: "DDIMSampler", steps: Iterator[tuple[int, Tensor, Tensor]], denoise: Denoiser,
                 solver: Solver, coupled: bool) -> None:
        self._sampler, self._steps, self._denoise = sampler, steps, denoise
        self._solver, self._coupled = solver, coupled

    def __iter__(self) -> "_Trajectory":
        return self

    def __next__(self) -> tuple[int, Tensor, Tensor]:
        try:
            return next(self._steps)
        except StopIteration:
            self._sampler.last_nfe = self._denoise.nfe
            raise

    def finish(self, x: Tensor) -> Tensor | Coupled:
        return self._solver.coupled(x) if self._coupled else x


def _same_parameters(iterate: Any) -> inspect.Signature:
    """The signature of `iterate` (an iter_* method) returning a Tensor: its draining twin takes the same."""
    return inspect.signature(iterate).replace(return_annotation=Tensor)


def _check_state(x: Any, name: str) -> None:
    """x_T / x_0: a real floating-point tensor [B, ...]."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        what = f"{x.dtype} tensor {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise DDIMError(f"{name} must be a real floating-point tensor [B, ...], got a {what}")


class DDIMSampler:
    """Sampling (eq. 12) and deterministic encoding (eq. 13) with a trained network.

    model(x [B, ...], t LongTensor [B], *cond) returns the prediction named by `prediction` ("eps", "x0" or "v"),
    same shape as x: our U-Net, any such callable, or a diffusers UNet2DModel / UNet2DConditionModel /
    UNet1DModel object as it is (`ddim.sampling.network`). schedule: a `NoiseSchedule`, or an object holding one
    as `.schedule` and its `.prediction` (`ddim.checkpoint.read_scheduler(diffusers_scheduler)`, a LoadedModel),
    whose prediction is then the default. The sampler keeps no state between calls, except `last_nfe`: the network calls the most
    recently finished walk made (a guided call of 2B counts as one), as its denoiser counted them.

    guide: a weaker network of the same task for autoguidance (`Denoiser`; Karras et al. 2024), called like
    model and predicting the same quantity on the same schedule; every walk with guidance w != 1 is then
    guided by it instead of by the null label: guide + w (model - guide).
    """

    last_nfe: int | None = None

    def __init__(self, model: Model, schedule: NoiseSchedule | Any, prediction: str | None = None,
                 guide: Model | None = None) -> None:
        if isinstance(getattr(schedule, "schedule", None), NoiseSchedule):     # e.g. checkpoint.read_scheduler's
            schedule, prediction = schedule.schedule, prediction or getattr(schedule, "prediction", None)
        prediction = prediction or "eps"
        if not callable(model):
            raise DDIMError(f"model must be callable as model(x, t), got {type(model).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise DDIMError(f"schedule must be a ddim.NoiseSchedule (e.g. NoiseSchedule.linear(), or "
                            f"NoiseSchedule.from_name(name)), got {schedule!r}")
        if prediction not in PREDICTIONS:
            raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if prediction == "eps" and schedule.alphas_cumprod[-1] <= 0:
            raise DDIMError("schedule: the last alpha is 0 (zero terminal SNR), where an eps-prediction "
                            "model cannot give x0 (division by sqrt(alpha) = 0); use prediction='v' or 'x0'")
        if guide is not None and not callable(guide):
            raise DDIMError(f"guide must be callable as guide(x, t), got {type(guide).__name__}")
        self.model = as_network(model)
        self.guide = None if guide is None else as_network(guide)
        self.schedule = schedule
        self.prediction = prediction

    def taus(self, steps: int | None, skip: str | Sequence[int] = D.skip, steps_offset: int = D.steps_offset,
             order: int = 2) -> Tensor:
        """The ascending sub-sequence tau, duplicates removed. `skip` a name or an explicit list of timesteps
        (ascending, or diffusers' descending `timesteps` as they are); `order`: the solver order the
        "optimized" grid is fitted for (the walks pass their solver's)."""
        return resolve_taus(self.schedule.T, steps, skip, self.schedule.alphas_cumprod, steps_offset, order)

    def denoiser(self, clip: bool | str = D.clip_denoised, y: Tensor | int | None = None,
                 guidance: float = D.guidance, guidance_mode: str = D.guidance_mode, inverting: bool = False,
                 cond: Any = None, uncond: Any = None, afs: bool = D.afs, **toolbox: Any) -> Denoiser:
        """The network as solvers see it, (x, t, a_t) -> (eps, x0_pred), for one walk (clip: False, True,
        "keep-eps" or "dynamic"; guidance_mode "cfg" or "cfg++"; inverting: the pair of eq. 13's inversion; cond,
        uncond: the general condition; `toolbox`: guidance_interval, guidance_rescale, threshold_ratio,
        threshold_max, see `Denoiser`; afs: the analytic first step); a model that keeps state across the calls of a walk (a feature cache) is
        reset through its `reset_cache`."""
        denoise = Denoiser(self.model, self.schedule, self.prediction, clip, y, guidance, guidance_mode, inverting,
                           cond=cond, uncond=uncond, afs=afs, guide=self.guide, **toolbox)
        for net in (self.model, self.guide):
            reset = getattr(net, "reset_cache", None)
            if callable(reset):
                reset()
        return denoise

    def sample_plan(self, steps: int | None, skip: str | Sequence[int] = D.skip, final_alpha: float | str =
                    D.final_alpha, steps_offset: int = D.steps_offset, order: int = 2) -> Plan:
        """The levels `sample` walks: tau_S -> ... -> tau_1 -> alpha = 1 (or alphas_cumprod[0], "alpha_0")."""
        return sample_plan(self.schedule, self.taus(steps, skip, steps_offset, order), final_alpha)

    def invert_plan(self, steps: int | None, skip: str | Sequence[int] = D.skip, steps_offset: int = D.steps_offset,
                    order: int = 2) -> Plan:
        """The levels `invert` walks: alpha = 1 -> tau_1 -> ... -> tau_S."""
        return invert_plan(self.schedule, self.taus(steps, skip, steps_offset, order))

    def _bound(self, solver: Solver) -> Solver:
        """A solver that snaps levels to trained timesteps (churn, restart) gets this schedule's levels."""
        if callable(getattr(solver, "bind", None)) and getattr(solver, "alphas", None) is None:
            solver = copy.copy(solver).bind(self.schedule.alphas_cumprod.tolist())
        return solver

    # -- the options object: one walk
    def prepare(self, options: WalkOptions, y: Tensor | int | None = None, invert: bool = False, refine: int = 0,
                *, cond: Any = None, uncond: Any = None) -> tuple[Plan, Denoiser, Solver]:
        """The plan, the denoiser and this walk's fresh solver for `options` (and labels y): every check that
        needs the model (steps <= T, an eta too large for the plan, guidance without labels, a solver that
        cannot invert), with no network call. `invert`: the levels of encoding (eq. 13) instead of sampling,
        each step refined `refine` times (`ddim.sampling.refine`); an exactly invertible solver (bdia, edict)
        instead walks the sampling plan backwards with its algebraic inverse, on the sampling pair."""
        template = self._bound(options.make_solver())
        order = grid_order(template)
        check_refine(refine)

        def denoiser(clip: bool | str, inverting: bool = False) -> Denoiser:
            return self.denoiser(clip, y, options.guidance, options.guidance_mode, inverting, cond=cond,
                                 uncond=uncond, afs=options.afs and not inverting, **options.toolbox())

        if not invert:
            if refine:
                raise DDIMError(f"refine={refine}: refinement is an option of inversion")
            plan = self.sample_plan(options.steps, options.skip, options.final_alpha, options.steps_offset, order)
            return plan, denoiser(options.clip_denoised), template.fresh(plan)
        options.check_inversion()
        if not template.deterministic:
            raise DDIMError(f"solver: inversion needs a deterministic solver (eta = 0), got {template!r}")
        if getattr(template, "exact_inverse", False):
            if refine:
                raise DDIMError(f"refine={refine}: solver {template.name!r} inverts exactly; refine is for eq. 13's "
                                "inversion (the other solvers)")
            plan = self.sample_plan(options.steps, options.skip, D.final_alpha, options.steps_offset, order)
            return plan, denoiser(False), template.fresh(plan)
        if refine and options.guidance_mode == "cfg++":
            raise DDIMError(f"refine={refine} with guidance_mode='cfg++': refinement evaluates one eps per point, "
                            "CFG++ two; use refine=0 or guidance_mode='cfg'")
        plan = self.invert_plan(options.steps, options.skip, options.steps_offset, order)
        if refine:
            template = Refined(template, refine)
        return plan, denoiser(options.clip_denoised, inverting=True), template.fresh(plan)

    def walk(self, x: Tensor | Coupled, options: WalkOptions, generator: Generator = None,
             y: Tensor | int | None = None, progress: bool = False, invert: bool = False, refine: int = 0, *,
             cond: Any = None, uncond: Any = None
             ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Walk x [B, ...] with `options`, yielding (t, x_s, x0_pred) after each step (sampling from x_T, or with
        invert=True encoding x_0, `refine` as in `prepare`); everything is validated before the first next().
        `last_nfe` is set when the walk has finished. Sampling takes the `Coupled` latent of an exact solver's
        inversion as x."""
        _check_state(x.x if isinstance(x, Coupled) and not invert else x, "x_0" if invert else "x_T")
        if isinstance(y, Tensor) and y.numel() not in (1, len(x)):
            raise DDIMError(f"y: {y.numel()} class labels for a batch of {len(x)} (give one per sample, or one "
                            "for all)")
        check_generator(generator, len(x))
        plan, denoise, solver = self.prepare(options, y, invert, refine, cond=cond, uncond=uncond)
        denoise.check_batch(len(x))
        exact = invert and getattr(solver, "exact_inverse", False)
        if not invert:
            x = self._start(solver, x)
        steps = walk(x, plan, denoise, solver, generator, progress, "encoding" if invert else "sampling", exact)
        return _Trajectory(self, steps, denoise, solver, exact)

    def run(self, x: Tensor | Coupled, options: WalkOptions, generator: Generator = None,
            y: Tensor | int | None = None, progress: bool = False, invert: bool = False, refine: int = 0, *,
            cond: Any = None, uncond: Any = None) -> Tensor | Coupled:
        """The last x_s of `walk`: the sample from x_T (or, invert=True, the latent of x_0; a `Coupled` one for
        the exact solvers)."""
        return _last(self.walk(x, options, generator, y, progress, invert, refine, cond=cond, uncond=uncond))

    @staticmethod
    def _start(solver: Solver, x_T: Tensor | Coupled) -> Tensor:
        """The tensor a sampling walk starts from: x_T, or a coupled latent loaded into its exact solver."""
        if callable(getattr(solver, "load", None)):
            return solver.load(x_T)
        if isinstance(x_T, Coupled):
            raise DDIMError(f"x_T: a coupled latent (from invert with solver={x_T.solver!r}) samples only with "
                            f"solver={x_T.solver!r}, not {solver!r}")
        return x_T

    def _options(self, steps: int | None, options: dict[str, Any]) -> tuple[WalkOptions, dict[str, Any]]:
        """An editing method's **options split into WalkOptions (with steps) and the walk's y / progress."""
        unknown = sorted(set(options) - set(_WALK) - set(_RUNTIME) - {"steps"})
        if unknown:
            raise DDIMError(f"unknown option {unknown[0]!r}; the options are {', '.join(_WALK + _RUNTIME)}")
        walk_opts = {k: v for k, v in options.items() if k in _WALK and k != "steps"}
        return WalkOptions(steps, **walk_opts), {k: v for k, v in options.items() if k in _RUNTIME}

    # -- public API
    def iter_sample(self, x_T: Tensor, steps: int | None = D.steps, eta: float = D.eta,
                    skip: str | Sequence[int] = D.skip, variance: str = D.variance, generator: Generator = None,
                    clip_denoised: bool | str = D.clip_denoised, progress: bool = False, solver: str | Solver =
                    D.solver, *, final_alpha: float | str = D.final_alpha, steps_offset: int = D.steps_offset,
                    y: Tensor | int | None = None, guidance: float = D.guidance,
                    guidance_mode: str = D.guidance_mode,
                    guidance_interval: tuple[float, float] | None = D.guidance_interval,
                    guidance_rescale: float = D.guidance_rescale, threshold_ratio: float = D.threshold_ratio,
                    threshold_max: float | None = D.threshold_max, afs: bool = D.afs,
                    solver_options: dict[str, Any] | None = D.solver_options, cond: Any = None, uncond: Any = None
                    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Like `sample`, yielding (t, x_s, x0_pred) after each step; the last x_s is the sample."""
        options = WalkOptions(steps, eta, skip, variance, clip_denoised, solver, final_alpha, steps_offset, guidance,
                              guidance_mode, guidance_interval, guidance_rescale, threshold_ratio, threshold_max,
                              afs, solver_options)
        return self.walk(x_T, options, generator, y, progress, cond=cond, uncond=uncond)

    def sample(self, x_T: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Generate x_0 [B, ...] from noise x_T [B, ...] over the sub-sequence tau (eq. 12, sigma of eq. 16).

        The parameters are `iter_sample`'s (the same object, `WalkOptions`, is built from them). steps: S, the
        length of tau. eta: 0 is DDIM (deterministic), 1 is DDPM. skip: "uniform", "quad", "trailing",
        "linspace", "logsnr", "karras" (these two can give fewer than S distinct timesteps; see
        `ddim.schedule.timesteps`) or an explicit ascending list of timesteps, whose length S is (steps must
        equal it, or be None). variance: "eta" (eq. 16 times
        eta) or "large" (Table 1's sigma-hat: DDPM ancestral steps with variance 1 - a_t/a_s, x0_pred
        clipped to [-1, 1], no noise on the final step; eta is then ignored). generator: a torch.Generator,
        or a list of one per sample so that sample i does not depend on its batch. clip_denoised: True clips
        x0_pred to [-1, 1] each step and recomputes eps from it (diffusers' clip_sample=True,
        use_clipped_model_output=True); "keep-eps" clips x0_pred but keeps the network's eps (clip_sample=True,
        use_clipped_model_output=False). solver: "ddim" (eta and variance are its options), another name in
        `ddim.sampling.SOLVERS` ("plms", "dpm++2m", "dpm++3m", "dpm++3m-shipped", "unipc", the exactly
        invertible "bdia" and "edict"; docs/SOLVERS.md) or a `Solver` instance. x_T may be the `Coupled` latent
        `invert(..., solver="bdia"|"edict")` returned (with that solver and the same steps and skip).

        Keyword-only, for diffusers configs: final_alpha, the level of the last step: 1.0 (the paper;
        diffusers' set_alpha_to_one=True) or "alpha_0", alphas_cumprod[0] (set_alpha_to_one=False, as in
        the Stable Diffusion configs). steps_offset: added to every tau of a named skip (diffusers'
        steps_offset, e.g. 1 with "uniform" = diffusers' "leading"). y, guidance: class labels (LongTensor [B]
        or an int; -1 = none) of a class-conditional network and the classifier-free guidance weight (1:
        conditional, 0: unconditional, > 1: guided, one network call of 2B per step); see `Denoiser`.
        guidance_mode: "cfg" (the above) or "cfg++" (CFG++: guidance is lambda in [0, 1]; see `Denoiser`).

        The guidance toolbox (see `Denoiser`; docs/SOLVERS.md): guidance_interval=(t_lo, t_hi), w applies only at
        timesteps t_lo <= t <= t_hi (one call of B elsewhere); guidance_rescale=phi (CFG rescale, diffusers'
        guidance_rescale); clip_denoised="dynamic" with threshold_ratio (0.995) and threshold_max (None: no
        cap), Imagen's dynamic thresholding. skip="optimized": DMN's model-free grid for the solver's order.
        cond, uncond: the general condition and null condition (a tensor, the network's third positional argument,
        or a dict of its keyword arguments, batch-first; e.g. text embeddings and a negative prompt's), guided as y.

        Few steps (docs/SOLVERS.md): afs=True, the analytic first step (AFS; Zhou et al. 2024): the first
        evaluation is eps = x_T instead of a network call, so any solver makes one call fewer. solver_options: the
        settings of solver "churn" (s_churn, s_tmin, s_tmax, s_noise) or "restart" (restart=(sigma_min,
        sigma_max), k, inner), e.g. solver="restart", solver_options=dict(k=1, inner=2).
        """
        return _last(self.iter_sample(x_T, *args, **kwargs))

    sample.__signature__ = _same_parameters(iter_sample)

    def iter_invert(self, x_0: Tensor, steps: int | None = D.steps, skip: str | Sequence[int] = D.skip,
                    progress: bool = False, solver: str | Solver = D.solver, *, steps_offset: int = D.steps_offset,
                    y: Tensor | int | None = None, guidance: float = D.guidance,
                    guidance_mode: str = D.guidance_mode, refine: int = 0,
                    guidance_interval: tuple[float, float] | None = D.guidance_interval,
                    guidance_rescale: float = D.guidance_rescale, cond: Any = None, uncond: Any = None
                    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Like `invert`, yielding (t, x_s, x0_pred) after each step; the last x_s is the latent (for "bdia"
        and "edict", the coupled latent's x)."""
        options = WalkOptions(steps, skip=skip, solver=solver, steps_offset=steps_offset, guidance=guidance,
                              guidance_mode=guidance_mode, guidance_interval=guidance_interval,
                              guidance_rescale=guidance_rescale)
        return self.walk(x_0, options, y=y, progress=progress, invert=True, refine=refine,
                         cond=cond, uncond=uncond)

    def invert(self, x_0: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Encode data x_0 [B, ...] into the latent x_T at level tau_S with the deterministic ODE (eq. 13).

        The parameters are `iter_invert`'s. See `ddim.sampling.plan` for the levels; `sample(invert(x_0, S), S)`
        reconstructs x_0, with any deterministic solver (the same formulas walk the levels in the other order),
        up to the ODE's discretisation error. refine=K redoes each step K times with the network at the
        estimated next point (K extra calls per step; the round trip tightens as K grows; `ddim.sampling.refine`).
        solver="bdia" or "edict" (or their instances) invert exactly, by the algebraic inverse of their sampling
        walk: they return a `Coupled` latent (x at tau_S and a second tensor) that `sample(z, S, solver=...)`
        takes back, reconstructing x_0 up to roundoff, guided or not. guidance_mode="cfg++": CFG++'s inversion.
        """
        return _last(self.iter_invert(x_0, *args, **kwargs))

    invert.__signature__ = _same_parameters(iter_invert)

    # -- editing real images (Sec. 5.4's encoder and what came after)
    def sdedit(self, x_0: Tensor, strength: float, steps: int | None = D.steps, generator: Generator = None,
               **options: Any) -> Tensor:
        """SDEdit (Meng et al. 2022): noise x_0 [B, ...] part of the way and sample back.

        The last round(strength * S) of the S taus are walked: x_0 is noised to the first of them with
        q(x_t | x_0) (noise from `generator`), then sampled with `options` (eta, solver, y, guidance, ...).
        strength 0 returns x_0 exactly; strength 1 starts from pure noise, exactly `sample(noise, steps)`.
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise DDIMError(f"strength must be a number in [0, 1], got {strength!r}")
        _check_state(x_0, "x_0")
        opts, rest = self._options(steps, options)
        taus = self.taus(opts.steps, opts.skip, opts.steps_offset)
        k = round(strength * len(taus))
        if opts.afs and k < len(taus):
            raise DDIMError(f"afs=True: SDEdit with strength={strength} starts below pure noise, where the analytic "
                            "first step's eps = x does not hold; use afs=False (or strength 1)")
        if k == 0:
            return x_0.clone()
        check_generator(generator, len(x_0))
        z = randn(x_0.shape, generator, x_0.device, x_0.dtype)
        if k == len(taus):
            x_t = z
        else:
            a = float(self.schedule.alphas_cumprod[taus[k - 1]])
            x_t = math.sqrt(a) * x_0 + math.sqrt(1 - a) * z                       # q(x_t | x_0), eq. 4
        tail = opts.replace(steps=k, skip=taus[:k].tolist(), steps_offset=D.steps_offset)
        return self.run(x_t, tail, generator, **rest)

    def inpaint(self, x_0: Tensor, mask: Tensor, steps: int | None = D.steps, generator: Generator = None,
                resample: int = 1, **options: Any) -> Tensor:
        """Fill in x_0 [B, ...] where mask = 0 (mask shaped like x_0, dims of 1 broadcast; 1 = keep): sample from noise
        while, after every step, the kept pixels are replaced by q(x_s | x_0); they end exactly as x_0.
        resample > 1: RePaint's resampling (each step redone that many times). `options` as in `sample`."""
        _check_state(x_0, "x_0")
        opts, rest = self._options(steps, options)
        solver = Inpainting(opts.make_solver(), x_0, mask, resample)
        check_generator(generator, len(x_0))
        x_T = randn(x_0.shape, generator, x_0.device, x_0.dtype)
        return self.run(x_T, opts.with_solver(solver), generator, **rest)

    def transfer(self, x_0: Tensor, y_from: Tensor | int | None = None, y_to: Tensor | int | None = None,
                 steps: int | None = D.steps, guidance: float = D.guidance, refine: int = 0, *,
                 target_cond: Any = None, **options: Any) -> Tensor:
        """Transfer: encode x_0 [B, ...] under one condition (deterministic inversion, guidance 1, `refine` as in
        `invert`; exact with solver "bdia" or "edict") and decode the latent under another with `guidance` (eta
        0): the same "style", another class or prompt.

        Class labels: y_from and y_to. Any condition: cond= (the source's: encoding) and target_cond= (decoding),
        with uncond= (the null condition) for guidance != 1."""
        opts, rest = self._options(steps, dict(options, guidance=guidance))
        if "y" in rest:
            raise DDIMError("y: transfer takes the classes as y_from and y_to")
        cond, uncond = rest.pop("cond", None), rest.pop("uncond", None)
        if (y_from is None) != (y_to is None) or (y_from is not None and (cond is not None or target_cond is not None)):
            raise DDIMError("y_from, y_to: give both class labels, or the conditions as cond= and target_cond=")
        if y_from is None and (cond is None or target_cond is None):
            raise DDIMError("target_cond: transfer needs the source's and the target's condition (y_from and y_to, "
                            "or cond= and target_cond=)")
        encode = opts.deterministic().replace(guidance=D.guidance, guidance_mode=D.guidance_mode,
                                              final_alpha=D.final_alpha, afs=D.afs)     # afs: the decoding's
        z = self.run(x_0, encode, y=y_from, invert=True, refine=refine, cond=cond)
        return self.run(z, opts, y=y_to, cond=target_cond, uncond=uncond, **rest)
