"""The one walk loop: a solver moves x along a plan of noise levels, for sampling and inversion alike."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.errors import DDIMError
from ddim.sampling.noise import Generator, randn
from ddim.sampling.plan import Step
from ddim.sampling.solvers import Denoise, Solver

__all__ = ["walk"]


@torch.no_grad()
def walk(x: Tensor, plan: Sequence[Step], denoise: Denoise, solver: Solver, generator: Generator = None,
         progress: bool = False, desc: str = "sampling") -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield (t, x_s, x0_pred) after each step of `plan`; `solver` is this walk's own (fresh) instance.

    Noise is drawn from `generator` (one per sample if a list) only when the solver asks. The finiteness of
    each step's result is recorded on the device and read once, after the loop (a single host sync); its shape,
    which needs no sync, after every step (a solver must return the whole batch).
    """
    shape = x.shape
    noise = lambda: randn(x.shape, generator, x.device, x.dtype)       # noqa: E731
    sums = torch.zeros(len(plan), dtype=torch.float32, device=x.device)
    for i, step in enumerate(tqdm(plan, desc=desc, unit="step", disable=not progress, leave=False)):
        x, x0_pred = solver.step(denoise, x, i, noise)
        if not isinstance(x, Tensor) or x.shape != shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DDIMError(f"solver {solver!r} returned x_s of shape {got} at step {i + 1} (t={step.t}); "
                            f"the walk's x is {tuple(shape)}")
        torch.sum(x.reshape(-1), 0, dtype=torch.float32, out=sums[i])
        yield step.t, x, x0_pred
    bad = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()
    if bad:
        raise DDIMError(f"non-finite values appeared at step {bad[0] + 1} of {len(plan)} (t={plan[bad[0]].t}); "
                        "check the model's output and the schedule")
