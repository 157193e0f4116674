"""Plans: the noise levels a walk visits, as steps (t, a_t, a_s). Sampling and inversion use the same structure.

- Sampling walks tau_S -> ... -> tau_1 -> alpha = 1. A repeated tau (the official "quad" sequence has some at
  large S) would be an identity step: it is dropped, so it costs no network call.
- The level of sampling's last step is alpha = 1 (the paper; diffusers' `set_alpha_to_one=True`) unless
  `final_alpha="alpha_0"` asks for alphas_cumprod[0] (`set_alpha_to_one=False`, the Stable Diffusion
  configs). If tau_1 is timestep 0 that last step would stay at its level: it is dropped like a repeat.
- Inversion (eq. 13) walks alpha = 1 -> tau_1 -> ... -> tau_S. Each step evaluates the network at the level it
  starts from, except the first, which starts from clean data (alpha = 1, where the network was never trained)
  and evaluates it at tau_1. Decoding with the same taus walks the same levels back, so the reconstruction
  error is the solver's discretisation error and shrinks as S grows (Table 2).

A `Plan` also answers the one question a solver may ask about a level that is not the start of a step: at
which timestep to evaluate the network there (`Plan.timestep_at`). The options that choose the levels (steps,
skip, steps_offset, final_alpha) are checked here, each by one function, whoever builds the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import math
import numbers

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.schedule import SKIPS, NoiseSchedule, timesteps

__all__ = ["Step", "Plan", "resolve_taus", "sample_plan", "invert_plan", "FINAL_ALPHAS", "check_taus_spec",
           "check_steps_offset", "check_final_alpha"]

FINAL_ALPHAS: tuple = (1.0, "alpha_0")


@dataclass(frozen=True)
class Step:
    """One step of a walk: evaluate the network at timestep t; move x from level a_t to level a_s."""

    t: int
    a_t: float
    a_s: float


class Plan(tuple):
    """The steps of one walk, a tuple of `Step`, and the one map from a noise level to the network's timestep.

    alphas: the schedule's alphas_cumprod [T] (float64) the levels come from; a plan built from bare steps
    (a tuple a caller wrote) knows only its own levels.
    """

    def __new__(cls, steps: Sequence[Step] = (), alphas: Tensor | None = None) -> "Plan":
        plan = super().__new__(cls, steps)
        plan.alphas = alphas if alphas is not None else getattr(steps, "alphas", None)
        return plan

    def timestep_at(self, level: float) -> int:
        """The timestep at which to evaluate the network for x at noise level `level` (0 < level < 1).

        A level a step starts from is that step's t (exact, whatever the plan's direction). Any other level,
        such as the midpoint a second-order solver evaluates at, maps to the timestep whose level is nearest in
        lambda = log(sqrt(a) / sqrt(1 - a)), the variable the ODE is smooth in; the network takes whole
        timesteps, so this is the nearest one (diffusers rounds its interpolated t the same way).
        """
        for s in self:
            if s.a_t == level:
                return s.t
        if not 0 < level < 1:
            raise DDIMError(f"level {level!r}: the network is evaluated at levels in (0, 1) only")
        if self.alphas is None:
            raise DDIMError(f"level {level!r} is no level of this plan, and the plan has no schedule to map it "
                            "(build plans with sample_plan / invert_plan)")
        a = self.alphas.double().clamp(1e-300, 1 - 1e-16)
        lam = 0.5 * (a.log() - torch.log1p(-a))
        target = 0.5 * (math.log(level) - math.log1p(-level))
        return int(torch.argmin((lam - target).abs()))


def check_taus_spec(steps: int | None, skip: str | Sequence[int] | Tensor) -> tuple[int, str | tuple[int, ...]]:
    """(steps, skip) as a walk uses them: skip a name of `SKIPS`, or explicit ascending-or-equal timesteps (ints
    >= 0, a list, tuple or integer tensor) whose number is S: steps must then be that number or None."""
    if isinstance(skip, str):
        if skip not in SKIPS:
            raise DDIMError(f"skip must be one of {', '.join(map(repr, SKIPS))} or a list of timesteps; got {skip!r}")
    else:
        if isinstance(skip, Tensor):
            if skip.ndim != 1 or skip.dtype.is_floating_point or skip.is_complex() or skip.dtype == torch.bool:
                raise DDIMError(f"skip: a tensor of timesteps must be 1-D integers, got {skip.dtype} "
                                f"{tuple(skip.shape)}")
            skip = skip.tolist()
        try:
            skip = tuple(skip)
        except TypeError:
            raise DDIMError(f"skip must be one of {SKIPS} or a list of timesteps; got {skip!r}") from None
        bad = [t for t in skip if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0]
        if not skip or bad:
            raise DDIMError(f"skip: an explicit list needs timesteps that are integers >= 0, got {list(skip)!r}")
        skip = tuple(int(t) for t in skip)
        if any(b < a for a, b in zip(skip, skip[1:])):
            raise DDIMError(f"skip: an explicit sequence must be ascending timesteps, got {list(skip)}")
        if steps is None:
            steps = len(skip)
        if isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps != len(skip):
            raise DDIMError(f"steps={steps} disagrees with the explicit skip list of {len(skip)} timesteps "
                            f"(S is the list's length): pass steps={len(skip)} or steps=None")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise DDIMError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps), skip


def check_steps_offset(steps_offset: int) -> int:
    """diffusers' steps_offset, an integer >= 0 (it shifts a named skip; see `resolve_taus`)."""
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, numbers.Integral) or steps_offset < 0:
        raise DDIMError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")
    return int(steps_offset)


def check_final_alpha(final_alpha: float | str) -> float | str:
    """The level of sampling's last step: 1.0 or "alpha_0" (see the module docstring)."""
    if final_alpha == "alpha_0":
        return final_alpha
    if isinstance(final_alpha, (bool, str)) or not isinstance(final_alpha, numbers.Real) or final_alpha != 1:
        raise DDIMError(f"final_alpha must be 1.0 (the paper, diffusers' set_alpha_to_one=True) or 'alpha_0' "
                        f"(alphas_cumprod[0], set_alpha_to_one=False), got {final_alpha!r}")
    return 1.0


def resolve_taus(T: int, steps: int | None, skip: str | Sequence[int] = "uniform",
                 alphas_cumprod: Tensor | None = None, steps_offset: int = 0) -> Tensor:
    """The ascending sub-sequence tau [S'] (int64), duplicates removed. `skip`: a name or explicit timesteps.

    alphas_cumprod [T] is needed by the skips spaced in noise level ("logsnr", "karras"). steps_offset is
    added to every tau of a named skip (diffusers' `steps_offset`; 1 in the Stable Diffusion configs); an
    explicit list is used as given, so it refuses an offset.
    """
    steps, skip = check_taus_spec(steps, skip)
    steps_offset = check_steps_offset(steps_offset)
    if isinstance(skip, str):
        taus = timesteps(T, steps, skip, alphas_cumprod) + steps_offset
        if steps_offset and int(taus[-1]) >= T:
            raise DDIMError(f"steps_offset={steps_offset} moves the last tau of skip={skip!r} to {int(taus[-1])}, "
                            f"past the last timestep {T - 1}")
    else:
        if steps_offset:
            raise DDIMError(f"steps_offset={steps_offset} shifts a named skip; an explicit skip list is used as "
                            "given (add the offset to its timesteps instead)")
        if skip[-1] >= T:
            raise DDIMError(f"skip: an explicit sequence must be ascending timesteps in [0, {T}); got {skip[-1]}")
        taus = torch.as_tensor(skip, dtype=torch.int64)
    return torch.unique_consecutive(taus)


def sample_plan(schedule: NoiseSchedule, taus: Tensor, final_alpha: float | str = 1.0) -> Plan:
    """tau_S -> ... -> tau_1 -> final level: alpha = 1 (clean data), or "alpha_0" = alphas_cumprod[0]."""
    ac, ts = schedule.alphas_cumprod.tolist(), taus.tolist()
    final = ac[0] if check_final_alpha(final_alpha) == "alpha_0" else 1.0
    plan = [Step(ts[i], ac[ts[i]], ac[ts[i - 1]] if i > 0 else final) for i in reversed(range(len(ts)))]
    if len(plan) > 1 and plan[-1].a_s == plan[-1].a_t:        # tau_1 = 0 with final_alpha = "alpha_0"
        plan.pop()
    return Plan(plan, schedule.alphas_cumprod)


def invert_plan(schedule: NoiseSchedule, taus: Tensor) -> Plan:
    """alpha = 1 -> tau_1 -> ... -> tau_S; the first step evaluates the network at tau_1 (see the module doc)."""
    ac, ts = schedule.alphas_cumprod.tolist(), taus.tolist()
    levels = [1.0] + [ac[t] for t in ts]
    t_net = [ts[0]] + ts[:-1]
    return Plan((Step(t, levels[i], levels[i + 1]) for i, t in enumerate(t_net)), schedule.alphas_cumprod)
