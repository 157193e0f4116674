"""DeepCache (Ma, Fang & Wang, CVPR 2024): a training-free cache of the U-Net's deep features across steps.

Consecutive sampling steps' deep features are nearly equal, so every `interval`-th call runs the full network
and keeps the features entering its shallow branch; the calls in between run only the shallow branch (conv_in,
the top level's first blocks and its last up blocks) on the cached features. interval 1 is the plain network.
The sampler resets the cache at the start of each walk (`reset_cache`), so every walk starts with a full pass;
it works with every solver and with any batch (a batch of another size triggers a full pass). With
`compile`, the U-Net's two passes (full and shallow) are compiled, and the cache's bookkeeping stays in Python.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddim.errors import DDIMError
from ddim.models.unet import UNet

__all__ = ["DeepCache", "check_interval"]


def check_interval(interval: int) -> int:
    """cache_interval: an integer >= 1 (1: every call a full pass, the cache off)."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise DDIMError(f"cache_interval must be an integer >= 1, got {interval!r}")
    return interval


class DeepCache(nn.Module):
    """`DeepCache(unet, interval, branch)(x, t) -> eps`: a stateful wrapper; branch None is num_res_blocks
    (the whole top level is the shallow branch, DeepCache's D1/U1)."""

    def __init__(self, unet: UNet, interval: int, branch: int | None = None, compile: bool = False) -> None:
        super().__init__()
        if not isinstance(unet, UNet):
            raise DDIMError(f"cache_interval > 1 needs a ddim.models.UNet, got {type(unet).__name__}")
        check_interval(interval)
        nrb = unet.config.num_res_blocks
        branch = nrb if branch is None else branch
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch <= nrb:
            raise DDIMError(f"cache_branch must be an integer in [0, num_res_blocks = {nrb}], got {branch!r}")
        self.unet, self.interval, self.branch = unet, interval, branch
        # compiled at the first call, not here: the wrapper may still be copied or cast before sampling
        self.compile_passes, self._features = compile, None
        self.reset_cache()

    def __getstate__(self) -> dict:
        # a copy (deepcopy, pickle) must bind its own U-Net: drop the pass bound (or compiled) to this one's
        return {**self.__dict__, "_features": None}

    def reset_cache(self) -> None:
        """Forget the cached features: the next call is a full pass."""
        self.calls, self.full_calls, self._deep = 0, 0, None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        fresh = self._deep is None or self._deep.shape[0] != x.shape[0] or self.calls % self.interval == 0
        if self._features is None:
            self._features = (torch.compile(self.unet.forward_features, dynamic=False) if self.compile_passes
                              else self.unet.forward_features)
        if self.interval == 1:
            eps, deep = self._features(x, t, y)
        elif fresh:
            eps, deep = self._features(x, t, y, branch=self.branch)
        else:
            eps, deep = self._features(x, t, y, branch=self.branch, deep=self._deep)
        self.full_calls += fresh
        self.calls += 1
        self._deep = deep
        return eps
