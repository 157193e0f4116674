"""Latent diffusion's two helpers around the U-Net: the VAE's latent space and the prompt encoder.

`LatentSpace` wraps a diffusers `AutoencoderKL` object: images in [-1, 1] -> latents (z - shift) * scale and back,
decoding in slices of a few samples to bound memory. `PromptEncoder` wraps a pipeline's own tokenizer and text
encoder (transformers): prompts -> the embeddings a UNet2DConditionModel takes as encoder_hidden_states, padded to
the tokenizer's length as Stable Diffusion pipelines do. Neither imports diffusers or transformers: they are
given the objects (`ddim.checkpoint.pipeline` loads them from a pipeline folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ddim.errors import DDIMError

__all__ = ["LatentSpace", "PromptEncoder"]


def _output(out: Any, name: str) -> Any:
    """The first field of a diffusers / transformers output object or tuple."""
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, name) if hasattr(out, name) else out[0]


class LatentSpace:
    """The latent space of a VAE: `encode(images) -> latents`, `decode(latents) -> images` (images in [-1, 1]).

    scaling_factor, shift_factor: the VAE config's (latents = (z - shift) * scale, z = latents / scale + shift);
    given explicitly they override it. slice_size: how many samples one decoder (and encoder) call takes.
    """

    def __init__(self, vae: Any, scaling_factor: float | None = None, shift_factor: float | None = None,
                 slice_size: int = 8) -> None:
        config = getattr(vae, "config", {})
        self.vae = vae
        self.scale = float(scaling_factor if scaling_factor is not None else config.get("scaling_factor", 1.0))
        shift = shift_factor if shift_factor is not None else config.get("shift_factor")
        self.shift = float(shift) if shift is not None else 0.0
        if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
            raise DDIMError(f"slice_size must be an integer >= 1, got {slice_size!r}")
        self.slice_size = slice_size
        self.factor = 2 ** (len(config.get("block_out_channels", (0,))) - 1)
        self.channels = int(config.get("latent_channels", 4))
        self.image_channels = int(config.get("out_channels", 3))

    def image_shape(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
        """(C, H, W) of the images that latents of shape (c, h, w) decode to."""
        h, w = latent_shape[-2:]
        return (self.image_channels, h * self.factor, w * self.factor)

    def shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The latent shape (C', H / f, W / f) of images of shape (C, H, W)."""
        _, h, w = image_shape
        return (self.channels, h // self.factor, w // self.factor)

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Latents of images [B, C, H, W] in [-1, 1]: the posterior's mode (deterministic; inversion starts here),
        or a draw from it with `generator`."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise DDIMError(f"images must be a tensor [B, C, H, W] in [-1, 1], got "
                            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
        dtype = next(self.vae.parameters()).dtype
        parts = []
        for chunk in images.split(self.slice_size):
            dist = _output(self.vae.encode(chunk.to(dtype)), "latent_dist")
            z = dist.mode() if generator is None else dist.sample(generator)
            parts.append((z.float() - self.shift) * self.scale)
        return torch.cat(parts).to(images.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images [B, C, H, W] (about [-1, 1]) of latents [B, C', h, w], `slice_size` samples per decoder call."""
        dtype = next(self.vae.parameters()).dtype
        parts = [_output(self.vae.decode((chunk / self.scale + self.shift).to(dtype)), "sample").float()
                 for chunk in latents.split(self.slice_size)]
        return torch.cat(parts).to(latents.dtype)


class PromptEncoder:
    """Prompts -> text embeddings [B, tokens, width] with a pipeline's own tokenizer and text encoder."""

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        config = getattr(text_encoder, "config", None)
        self.width = getattr(config, "hidden_size", None)

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str]) -> Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise DDIMError(f"prompt must be a string or a list of strings, got {prompts!r}")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return _output(self.text_encoder(ids.to(device)), "last_hidden_state")
