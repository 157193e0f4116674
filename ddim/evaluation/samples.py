"""What a table's cells sample and score: n seeded samples (with the network calls they took) and Table 2's
reconstruction error."""

from __future__ import annotations

import torch
from torch import Tensor

from ddim.checkpoint import LoadedModel
from ddim.config import SampleConfig
from ddim.generate import (image_shape, initial_noise, make_sampler, resolve_batch_size, sample_batch,
                           sample_generators)

__all__ = ["generate_samples", "generate_samples_with_nfe", "reconstruction_mse"]


def generate_samples_with_nfe(loaded: LoadedModel, n: int, config: SampleConfig, device: str | torch.device = "cpu",
                              progress: bool = False, classes: bool = False) -> tuple[Tensor, int]:
    """n samples [n, C, H, W] (CPU, float32, in [-1, 1]) with the config's sampler, and the network calls one
    sample took (NFE, as the sampler's denoiser counted them: a two-call solver's steps count twice). Sample
    i is a function of (config.seed, i) only, so every (steps, eta) cell starts from the same x_T. classes: a
    class-conditional model's sample i gets label i % num_classes (guided by config.guidance); else none."""
    from tqdm.auto import tqdm
    sampler = make_sampler(loaded, config, device)
    bs = resolve_batch_size(config, loaded, device, n)
    out, nfe = [], 0
    for b in tqdm(range(0, n, bs), desc=f"S={config.steps}", unit="batch", disable=not progress, leave=False):
        gens = sample_generators(config.seed, range(b, min(b + bs, n)))
        x_T = initial_noise(image_shape(loaded), gens, device)
        y = torch.arange(b, b + len(gens), device=device) % loaded.config.num_classes if classes else None
        out.append(sample_batch(sampler, x_T, config, gens, y).float().clamp(-1, 1).cpu())
        nfe = max(nfe, sampler.last_nfe or 0)       # every batch walks the same plan: the same count
    return torch.cat(out), nfe


def generate_samples(loaded: LoadedModel, n: int, config: SampleConfig, device: str | torch.device = "cpu",
                     progress: bool = False) -> Tensor:
    """n samples [n, C, H, W] (CPU, float32, in [-1, 1]); see `generate_samples_with_nfe`."""
    return generate_samples_with_nfe(loaded, n, config, device, progress)[0]


def reconstruction_mse(x0: Tensor, x_rec: Tensor) -> float:
    """Per-dimension MSE in [0, 1] pixel units, as in the paper's Table 2 (computed in float64, so that a float64
    round trip's roundoff shows)."""
    return (((x_rec.double().clamp(-1, 1) - x0.double()) / 2) ** 2).mean().item()
