"""The options of one walk, as one validated object: what `DDIMSampler`'s keyword API, `SampleConfig` and the
commands hand down to the plan, the solver and the denoiser.

Each option has its one default here and its one validator in the module that uses it: steps, skip,
steps_offset and final_alpha in `plan`, solver, eta and variance in `registry` (eta by the DDIM solver itself),
clip_denoised, guidance and guidance_mode in `denoiser`. Building a `WalkOptions` runs them all, so a bad value
is refused before any work starts; what needs the model (steps <= T, an eta too large for the plan, guidance
without labels) is checked by `DDIMSampler.prepare`, still before the first network call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ddim.errors import DDIMError
from ddim.sampling.denoiser import check_afs, check_clip, check_guidance, check_guidance_mode, check_toolbox
from ddim.sampling.plan import check_final_alpha, check_steps_offset, check_taus_spec
from ddim.sampling.registry import check_solver_options, make_solver
from ddim.sampling.solvers import Solver

__all__ = ["WalkOptions", "DEFAULTS"]


@dataclass(frozen=True)
class WalkOptions:
    """How to walk between noise and data. Fields in the positional order of `DDIMSampler.sample`.

    steps: S, the length of tau (None: the length of an explicit skip list, which it must otherwise equal).
    eta, variance: options of the "ddim" solver (eq. 16 times eta; "large": Table 1's sigma-hat). skip: a name
    of `ddim.schedule.SKIPS` or explicit ascending timesteps. clip_denoised: False, True or "keep-eps".
    solver: a name of `ddim.sampling.SOLVERS` or a Solver instance. final_alpha: the last step's level, 1.0 or
    "alpha_0". steps_offset: diffusers' offset of a named skip. guidance: the classifier-free guidance weight.
    guidance_mode: "cfg" or "cfg++" (CFG++: guidance is lambda in [0, 1]; `ddim.sampling.denoiser`).
    The guidance toolbox (see `Denoiser`): guidance_interval (t_lo, t_hi), guidance_rescale phi, and
    threshold_ratio / threshold_max of clip_denoised="dynamic".
    afs: the analytic first step (AFS, Zhou et al. 2024; `Denoiser`): the walk's first evaluation is eps = x_T,
    one network call fewer; sampling only. solver_options: the settings of the named stochastic solvers
    (`ddim.sampling.registry.SOLVER_OPTIONS`: churn's s_churn, s_tmin, s_tmax, s_noise; restart's restart, k,
    inner), kept as sorted (name, value) pairs.
    """

    steps: int | None = 50
    eta: float = 0.0
    skip: str | Sequence[int] = "uniform"
    variance: str = "eta"
    clip_denoised: bool | str = False
    solver: str | Solver = "ddim"
    final_alpha: float | str = 1.0
    steps_offset: int = 0
    guidance: float = 1.0
    guidance_mode: str = "cfg"
    guidance_interval: tuple[float, float] | None = None
    guidance_rescale: float = 0.0
    threshold_ratio: float = 0.995
    threshold_max: float | None = None
    afs: bool = False
    solver_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)      # noqa: E731 (frozen)
        steps, skip = check_taus_spec(self.steps, self.skip)
        put("steps", steps)
        put("skip", skip)
        put("steps_offset", check_steps_offset(self.steps_offset))
        put("final_alpha", check_final_alpha(self.final_alpha))
        put("clip_denoised", check_clip(self.clip_denoised))
        put("guidance", check_guidance(self.guidance))
        check_guidance_mode(self.guidance_mode, self.guidance)
        toolbox = ("guidance_interval", "guidance_rescale", "threshold_ratio", "threshold_max")
        for name, value in zip(toolbox, check_toolbox(*(getattr(self, k) for k in toolbox))):
            put(name, value)
        put("afs", check_afs(self.afs))
        put("solver_options", check_solver_options(self.solver, self.solver_options))
        make_solver(self.solver, self.eta, self.variance, self.solver_options)   # the solver validates its options
        put("eta", float(self.eta))

    def make_solver(self) -> Solver:
        """A new template solver (not yet bound to a plan) for these options."""
        return make_solver(self.solver, self.eta, self.variance, self.solver_options)

    def replace(self, **changes: Any) -> "WalkOptions":
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_solver(self, solver: Solver) -> "WalkOptions":
        """These options walked by `solver` (an instance that carries its own eta and variance)."""
        return self.replace(solver=solver, eta=DEFAULTS.eta, variance=DEFAULTS.variance,
                            solver_options=DEFAULTS.solver_options)

    def deterministic(self) -> "WalkOptions":
        """These options on the probability-flow ODE, as encoding (eq. 13) and its decoding walk it: eta 0,
        variance "eta", no clipping (the solver, steps, skip and guidance kept)."""
        return self.replace(eta=DEFAULTS.eta, variance=DEFAULTS.variance, clip_denoised=DEFAULTS.clip_denoised)

    def check_inversion(self) -> None:
        """Refuse the sampling-only options an encoding walk would otherwise ignore (its solver's determinism is
        checked by the sampler)."""
        if self.clip_denoised is not DEFAULTS.clip_denoised:
            raise DDIMError(f"clip_denoised={self.clip_denoised!r}: clipping is an option of sampling; inversion "
                            "takes the network's prediction as it is")
        if self.final_alpha != DEFAULTS.final_alpha:
            raise DDIMError(f"final_alpha={self.final_alpha!r}: inversion starts from clean data (alpha = 1)")
        if self.afs:
            raise DDIMError("afs=True: the analytic first step replaces the network at pure noise, where sampling "
                            "starts; inversion starts from data")

    def kwargs(self) -> dict[str, Any]:
        """These options as keyword arguments of `DDIMSampler.sample` / `iter_sample`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["skip"] = d["skip"] if isinstance(d["skip"], str) else list(d["skip"])
        d["solver_options"] = None if d["solver_options"] is None else dict(d["solver_options"])
        return d

    def toolbox(self) -> dict[str, Any]:
        """The guidance toolbox's options, as keyword arguments of `Denoiser`."""
        return dict(guidance_interval=self.guidance_interval, guidance_rescale=self.guidance_rescale,
                    threshold_ratio=self.threshold_ratio, threshold_max=self.threshold_max)


DEFAULTS = WalkOptions()
