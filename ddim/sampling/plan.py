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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.schedule import SKIPS, NoiseSchedule, timesteps

__all__ = ["Step", "resolve_taus", "sample_plan", "invert_plan", "FINAL_ALPHAS"]

FINAL_ALPHAS: tuple = (1.0, "alpha_0")


@dataclass(frozen=True)
class Step:
    """One step of a walk: evaluate the network at timestep t; move x from level a_t to level a_s."""

    t: int
    a_t: float
    a_s: float


def resolve_taus(T: int, steps: int, skip: str | Sequence[int] = "uniform", alphas_cumprod: Tensor | None = None,
                 steps_offset: int = 0, order: int = 2) -> Tensor:
    """The ascending sub-sequence tau [S'] (int64), duplicates removed. `skip`: a name or explicit timesteps.

    alphas_cumprod [T] is needed by the skips spaced in noise level ("logsnr", "karras", "optimized"; order:
    the solver order "optimized" is fitted for). steps_offset is added to every tau of a named skip
    (diffusers' `steps_offset`; 1 in the Stable Diffusion configs); an explicit list is used as given, so it
    refuses an offset. An explicit list may be ascending or descending (diffusers' `scheduler.timesteps` as
    they are, a tensor included); `steps` does not apply to it.
    """
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise DDIMError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")
    if isinstance(skip, str):
        taus = timesteps(T, steps, skip, alphas_cumprod, order) + steps_offset
        if steps_offset and int(taus[-1]) >= T:
            raise DDIMError(f"steps_offset={steps_offset} moves the last tau of skip={skip!r} to {int(taus[-1])}, "
                            f"past the last timestep {T - 1}")
    else:
        if steps_offset:
            raise DDIMError(f"steps_offset={steps_offset} shifts a named skip; an explicit skip list is used as "
                            "given (add the offset to its timesteps instead)")
        taus = torch.as_tensor([int(t) for t in skip], dtype=torch.int64)
        if taus.numel() > 1 and (taus[1:] <= taus[:-1]).all():
            taus = taus.flip(0)                               # diffusers' descending timesteps
        if taus.ndim != 1 or taus.numel() < 1 or (taus < 0).any() or (taus >= T).any() \
                or (taus[1:] < taus[:-1]).any():
            raise DDIMError(f"skip: an explicit sequence must be ascending (or descending) timesteps in [0, {T}); "
                            f"named ones are {SKIPS}")
    return torch.unique_consecutive(taus)


def sample_plan(schedule: NoiseSchedule, taus: Tensor, final_alpha: float | str = 1.0) -> tuple[Step, ...]:
    """tau_S -> ... -> tau_1 -> final level: alpha = 1 (clean data), or "alpha_0" = alphas_cumprod[0]."""
    ac, ts = schedule.alphas_cumprod.tolist(), taus.tolist()
    if final_alpha == "alpha_0":
        final = ac[0]
    elif not isinstance(final_alpha, str) and final_alpha == 1:
        final = 1.0
    else:
        raise DDIMError(f"final_alpha must be 1.0 (the paper, diffusers' set_alpha_to_one=True) or 'alpha_0' "
                        f"(alphas_cumprod[0], set_alpha_to_one=False), got {final_alpha!r}")
    plan = [Step(ts[i], ac[ts[i]], ac[ts[i - 1]] if i > 0 else final) for i in reversed(range(len(ts)))]
    if len(plan) > 1 and plan[-1].a_s == plan[-1].a_t:        # tau_1 = 0 with final_alpha = "alpha_0"
        plan.pop()
    return tuple(plan)


def invert_plan(schedule: NoiseSchedule, taus: Tensor) -> tuple[Step, ...]:
    """alpha = 1 -> tau_1 -> ... -> tau_S; the first step evaluates the network at tau_1 (see the module doc)."""
    ac, ts = schedule.alphas_cumprod.tolist(), taus.tolist()
    levels = [1.0] + [ac[t] for t in ts]
    t_net = [ts[0]] + ts[:-1]
    return tuple(Step(t, levels[i], levels[i + 1]) for i, t in enumerate(t_net))
