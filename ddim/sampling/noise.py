"""Gaussian noise for sampling: drawn from the caller's generator(s), one per sample if asked, on their device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

from ddim.errors import DDIMError

__all__ = ["Generator", "randn"]

Generator = Union[torch.Generator, Sequence[torch.Generator], None]


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
    generators = list(generator)
    if len(generators) != shape[0]:
        raise DDIMError(f"generator: a list needs one torch.Generator per sample; got {len(generators)} "
                         f"for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
                      for g in generators]).to(device)
