"""Gaussian noise for sampling: drawn from the caller's generator(s), one per sample if asked, on their device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

from ddim.errors import DDIMError

__all__ = ["Generator", "randn", "check_generator"]

Generator = Union[torch.Generator, Sequence[torch.Generator], None]


def check_generator(generator: Generator, batch: int) -> None:
    """generator: None, a torch.Generator, or a sequence of one torch.Generator per sample of the batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    generators = list(generator) if isinstance(generator, Sequence) and not isinstance(generator, str) else None
    if generators is None or not all(isinstance(g, torch.Generator) for g in generators):
        raise DDIMError(f"generator must be a torch.Generator or a list of one per sample, got {generator!r}")
    if len(generators) != batch:
        raise DDIMError(f"generator: a list needs one torch.Generator per sample; got {len(generators)} "
                        f"for a batch of {batch}")


def randn(shape: Sequence[int], generator: Generator = None, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise [B, ...]; a list of generators draws sample i from generator i alone.

    Noise is drawn on the generator's device and moved to `device`, so a CPU generator gives the same
    numbers whatever device the sampler runs on.
    """
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    check_generator(generator, shape[0])
    generators = list(generator)
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
                      for g in generators]).to(device)
