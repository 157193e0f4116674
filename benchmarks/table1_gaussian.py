"""Table 1's samplers with a perfect model: is eta = 0 the best at small S when the network makes no error?

The data is a full-covariance Gaussian fitted to the digits (16x16, pixels in [-1, 1], the embedded models'
training data). Its eps is known exactly at every level: with a_t = alphas_cumprod[t],
eps(x_t) = sqrt(1 - a_t) (a_t C + (1 - a_t) I)^-1 (x_t - sqrt(a_t) mu). The same DDIMSampler that Table 1 runs
draws n samples per (eta, S) from the same x_T (float64); the score is the Frechet distance in pixel space
between the samples' mean and covariance and the Gaussian's own (the floor: n exact samples). The embedded
network's Table 1 (docs/RESULTS.md) can then be read against a model without error.

    python benchmarks/table1_gaussian.py [--n 4000] [--steps 10 20 50] [--etas 0 0.2 0.5 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.images import digits_images
from ddim.metrics.fid import frechet_distance


class GaussianEps(torch.nn.Module):
    """The exact eps of N(mu, C) under the schedule, computed in C's eigenbasis."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.mu, self.a = mu, alphas_cumprod
        self.lam, self.U = torch.linalg.eigh(cov)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.a[t].view(-1, 1)
        d = (x.flatten(1).double() - a.sqrt() * self.mu) @ self.U
        return ((1 - a).sqrt() * d / (a * self.lam + 1 - a) @ self.U.T).view_as(x).to(x.dtype)


def frechet(samples: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> float:
    """The Frechet distance between the samples' mean and covariance and N(mu, cov)."""
    return frechet_distance(samples.mean(0).numpy(), np.cov(samples.numpy().T), mu.numpy(), cov.numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000, help="samples per cell")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.2, 0.5, 1.0])
    args = p.parse_args()
    torch.set_num_threads(1)
    x, _ = digits_images(16)
    data = x.flatten(1).double()
    mu, cov = data.mean(0), torch.cov(data.T) + 1e-4 * torch.eye(data.shape[1])   # a floor keeps C invertible
    schedule = NoiseSchedule.linear()
    model = GaussianEps(mu, cov, schedule.alphas_cumprod.double())
    sampler = DDIMSampler(model, schedule, "eps")
    x_T = torch.randn(args.n, *x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    root = model.U * model.lam.clamp(min=0).sqrt()
    exact = mu + torch.randn(args.n, data.shape[1], generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64) @ root.T
    print(f"Frechet distance in pixel space to the digits' Gaussian, n = {args.n}; floor (n exact samples): "
          f"{frechet(exact, mu, cov):.3f}\n")
    print("| sampler | " + " | ".join(f"S = {s}" for s in args.steps) + " |")
    print("|---|" + "---:|" * len(args.steps))
    for eta in args.etas:
        cells = [frechet(sampler.sample(x_T, steps=s, eta=eta, generator=torch.Generator().manual_seed(2))
                         .flatten(1), mu, cov) for s in args.steps]
        print(f"| eta = {eta:g} | " + " | ".join(f"{v:.3f}" for v in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
