"""Plans: the noise levels a walk visits, as steps (t, a_t, a_s). Sampling and inversion use the same structure.

- Sampling walks tau_S -> ... -> tau_1 -> alpha = 1. A repeated tau (the official "quad" sequence has some at
  large S) would be an identity step: it is dropped, so it costs no network call.
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

__all__ = ["Step", "resolve_taus", "sample_plan", "invert_plan"]


@dataclass(frozen=True)
class Step:
    """One step of a walk: evaluate the network at timestep t; move x from level a_t to level a_s."""

    t: int
    a_t: float
    a_s: float


def resolve_taus(T: int, steps: int, skip: str | Sequence[int] = "uniform") -> Tensor:
    """The ascending sub-sequence tau [S'] (int64), duplicates removed. `skip`: a name or explicit timesteps."""
    if isinstance(skip, str):
        taus = timesteps(T, steps, skip)
    else:
        taus = torch.as_tensor(list(skip), dtype=torch.int64)
        if taus.ndim != 1 or taus.numel() < 1 or (taus < 0).any() or (taus >= T).any() \
                or (taus[1:] < taus[:-1]).any():
            raise DDIMError(f"skip: an explicit sequence must be ascending timesteps in [0, {T}); "
                            f"named ones are {SKIPS}")
    return torch.unique_consecutive(taus)


def sample_plan(schedule: NoiseSchedule, taus: Tensor) -> tuple[Step, ...]:
    """tau_S -> ... -> tau_1 -> alpha = 1 (the step after the last tau goes to clean data)."""
    ac, ts = schedule.alphas_cumprod.tolist(), taus.tolist()
    return tuple(Step(ts[i], ac[ts[i]], ac[ts[i - 1]] if i > 0 else 1.0) for i in reversed(range(len(ts))))


def invert_plan(schedule: NoiseSchedule, taus: Tensor) -> tuple[Step, ...]:
    """alpha = 1 -> tau_1 -> ... -> tau_S; the first step evaluates the network at tau_1 (see the module doc)."""
    ac, ts = schedule.alphas_cumprod.tolist(), taus.tolist()
    levels = [1.0] + [ac[t] for t in ts]
    t_net = [ts[0]] + ts[:-1]
    return tuple(Step(t, levels[i], levels[i + 1]) for i, t in enumerate(t_net))
