"""The DDIM sampler family (Song, Meng & Ermon 2020): eq. 12 step, eq. 16 sigma, eq. 13 inversion, and slerp.

The step math is a set of pure functions of tensors and float64 Python scalars (no model call, no RNG, no
device logic). `DDIMSampler` pairs noise levels, calls the model once per step and draws noise; sampling and
inversion run the same loop (`_walk`) over different plans of levels.

Conventions (see also `ddim.schedule`):
- Sampling walks tau_S -> ... -> tau_1 -> alpha = 1. A repeated tau (the official "quad" sequence has some
  at large S) is an identity step: it is dropped, so it costs no network call.
- Inversion (eq. 13) walks alpha = 1 -> tau_1 -> ... -> tau_S with eta = 0. Each step evaluates the model at
  the level it starts from, except the first, which starts from clean data (alpha = 1, where the network was
  never trained) and evaluates it at tau_1. Decoding the result with `sample(steps=S, eta=0)` walks the same
  levels back, so the reconstruction error is Euler's error and shrinks as S grows (Table 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.schedule import SKIPS, NoiseSchedule, timesteps

__all__ = ["DDIMSampler", "slerp", "ddim_sigma", "predict_eps_x0", "ddim_step", "ddpm_posterior_step",
           "randn", "PREDICTIONS", "VARIANCES"]

PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")
VARIANCES: tuple[str, ...] = ("eta", "large")

Generator = Union[torch.Generator, Sequence[torch.Generator], None]
Model = Callable[[Tensor, Tensor], Tensor]


# --- pure step math ------------------------------------------------------------------------------------
def ddim_sigma(a_t: float, a_s: float, eta: float) -> float:
    """sigma_tau(eta) of eq. 16: eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s), for a step a_t -> a_s."""
    if eta == 0:
        return 0.0
    return eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)


def predict_eps_x0(output: Tensor, x_t: Tensor, a_t: float, prediction: str = "eps") -> tuple[Tensor, Tensor]:
    """Turn a network output at level a_t into the pair (eps, x0_pred), using x_t = sqrt(a) x0 + sqrt(1-a) eps.

    prediction "eps": the network predicts eps; "x0": it predicts x_0; "v": it predicts
    v = sqrt(a) eps - sqrt(1-a) x_0 (Salimans & Ho 2022). All tensors [B, ...].
    """
    sa, sb = math.sqrt(a_t), math.sqrt(1 - a_t)
    if prediction == "eps":
        return output, torch.add(x_t, output, alpha=-sb).div_(sa)           # "predicted x_0" of eq. 12
    if prediction == "x0":
        return torch.add(x_t, output, alpha=-sa).div_(sb), output
    if prediction == "v":
        return torch.add(x_t * sb, output, alpha=sa), torch.add(x_t * sa, output, alpha=-sb)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def ddim_step(x0_pred: Tensor, eps: Tensor, a_s: float, sigma: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """Eq. 12: x_s = sqrt(a_s) x0_pred + sqrt(1 - a_s - sigma^2) eps + sigma z. Tensors [B, ...]."""
    direction = math.sqrt(max(1 - a_s - sigma**2, 0.0))     # roundoff at eta = 1 can give -1e-17
    x_s = torch.mul(x0_pred, math.sqrt(a_s)).add_(eps, alpha=direction)
    return x_s if noise is None else x_s.add_(noise, alpha=sigma)


def ddpm_posterior_step(x_t: Tensor, x0_pred: Tensor, a_t: float, a_s: float,
                        noise: Tensor | None = None) -> Tensor:
    """Table 1's sigma-hat row, sampled as the official release does: mean of q(x_s | x_t, x0_pred), std sqrt(beta).

    beta = 1 - a_t / a_s is the step's variance (DDPM's beta_t when every step is taken). x0_pred is used as
    given (the caller clips it to [-1, 1]). Tensors [B, ...].
    """
    beta = 1 - a_t / a_s
    c_x0 = math.sqrt(a_s) * beta / (1 - a_t)                     # posterior mean coefficients (Ho et al., eq. 7)
    c_xt = math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
    mean = torch.mul(x0_pred, c_x0).add_(x_t, alpha=c_xt)
    return mean if noise is None else mean.add_(noise, alpha=math.sqrt(beta))


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
        raise ValueError(f"generator: a list needs one torch.Generator per sample; got {len(generators)} "
                         f"for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
                      for g in generators]).to(device)


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor, dot_threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation of latents, per sample over all non-batch dims (the paper's Sec. 5.3).

    z0, z1 [B, ...]; alpha a float or a tensor [B]. Exact at alpha = 0 and 1. Where the latents are nearly
    parallel or anti-parallel (|cos| > dot_threshold) the arc is ill-conditioned and linear interpolation
    is used instead.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.ndim < 2:
        raise ValueError(f"z0, z1 need a batch dimension [B, ...], got shape {tuple(z0.shape)}")
    f0, f1 = z0.flatten(1), z1.flatten(1)
    work = torch.promote_types(z0.dtype, torch.float32)
    a = torch.as_tensor(alpha, dtype=work, device=z0.device).reshape(-1, 1)
    cos = (f0 * f1).sum(1, dtype=work) / (f0.norm(dim=1, dtype=work) * f1.norm(dim=1, dtype=work))
    theta = torch.arccos(cos.clamp(-1, 1)).unsqueeze(1)
    w0 = torch.sin((1 - a) * theta) / torch.sin(theta)
    w1 = torch.sin(a * theta) / torch.sin(theta)
    linear = cos.abs().unsqueeze(1) > dot_threshold
    w0 = torch.where(linear, 1 - a, w0)
    w1 = torch.where(linear, a, w1)
    return (w0 * f0 + w1 * f1).to(z0.dtype).reshape(z0.shape)


# --- the sampler -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    """One step of a walk: evaluate the model at timestep t, move from level a_t to level a_s."""
    t: int
    a_model: float    # alpha at t, for turning x0/v outputs into eps
    a_t: float
    a_s: float
    sigma: float


class DDIMSampler:
    """Sampling (eq. 12) and deterministic encoding (eq. 13) with a trained network.

    model(x [B, ...], t LongTensor [B]) returns the prediction named by `prediction` ("eps", "x0" or "v"),
    same shape as x. The sampler keeps no state between calls.
    """

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if prediction == "eps" and schedule.alphas_cumprod[-1] <= 0:
            raise ValueError("schedule: the last alpha is 0 (zero terminal SNR), where an eps-prediction "
                             "model cannot give x0 (division by sqrt(alpha) = 0); use prediction='v' or 'x0'")
        self.model = model
        self.schedule = schedule
        self.prediction = prediction

    # -- planning: float64 scalars on the host, computed once before the loop
    def taus(self, steps: int, skip: str | Sequence[int] = "uniform") -> Tensor:
        """The ascending sub-sequence tau, duplicates removed. `skip` a name or an explicit list of timesteps."""
        T = self.schedule.T
        if isinstance(skip, str):
            taus = timesteps(T, steps, skip)
        else:
            taus = torch.as_tensor(list(skip), dtype=torch.int64)
            if taus.ndim != 1 or taus.numel() < 1 or (taus < 0).any() or (taus >= T).any() \
                    or (taus[1:] < taus[:-1]).any():
                raise ValueError(f"skip: an explicit sequence must be ascending timesteps in [0, {T}); "
                                 f"named ones are {SKIPS}")
        return torch.unique_consecutive(taus)

    def _plan_sample(self, steps: int, eta: float, skip: str | Sequence[int], variance: str) -> list[_Step]:
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        taus = self.taus(steps, skip).tolist()
        ac = self.schedule.alphas_cumprod.tolist()
        plan = []
        for i in reversed(range(len(taus))):
            a_t, a_s = ac[taus[i]], (ac[taus[i - 1]] if i > 0 else 1.0)
            sigma = ddim_sigma(a_t, a_s, eta) if variance == "eta" else math.sqrt(1 - a_t / a_s)
            if variance == "eta" and 1 - a_s - sigma**2 < -1e-12:
                raise ValueError(f"eta={eta} makes 1 - a_s - sigma^2 negative at t={taus[i]} (eq. 12 needs its "
                                 "square root); use eta <= 1, or variance='large' for the sigma-hat sampler")
            plan.append(_Step(taus[i], a_t, a_t, a_s, sigma))
        return plan

    def _plan_invert(self, steps: int, skip: str | Sequence[int]) -> list[_Step]:
        taus = self.taus(steps, skip).tolist()
        ac = self.schedule.alphas_cumprod.tolist()
        levels = [1.0] + [ac[t] for t in taus]
        t_model = [taus[0]] + taus[:-1]     # the first step, from clean data, evaluates the model at tau_1
        return [_Step(t, ac[t], levels[i], levels[i + 1], 0.0) for i, t in enumerate(t_model)]

    # -- the one loop
    @torch.no_grad()
    def _walk(self, x: Tensor, plan: list[_Step], variance: str = "eta", generator: Generator = None,
              clip_denoised: bool = False, progress: bool = False) -> Iterator[tuple[int, Tensor, Tensor]]:
        B = x.shape[0]
        t_all = torch.tensor([s.t for s in plan], dtype=torch.long, device=x.device).view(-1, 1).expand(-1, B)
        t_all = t_all.contiguous()
        sums = torch.zeros(len(plan), dtype=torch.float32, device=x.device)   # finiteness record, read once at the end
        for i, step in enumerate(tqdm(plan, desc="sampling", unit="step", disable=not progress, leave=False)):
            out = self.model(x, t_all[i])
            if out.shape != x.shape:
                raise ValueError(f"model output has shape {tuple(out.shape)} but x has {tuple(x.shape)} "
                                 f"(step {i}, t={step.t}); the model must return a prediction shaped like x")
            eps, x0_pred = predict_eps_x0(out, x, step.a_model, self.prediction)
            if step.a_t != step.a_model:    # inversion's first step: x is clean data (a_t = 1), not at level t
                x0_pred = torch.add(x, eps, alpha=-math.sqrt(1 - step.a_t)).div_(math.sqrt(step.a_t))
            if clip_denoised or variance == "large":
                x0_pred = x0_pred.clamp(-1, 1)
                if variance == "eta":   # keep eps consistent with the clipped x0, so the step stays on eq. 12
                    eps = torch.add(x, x0_pred, alpha=-math.sqrt(step.a_t)).div_(math.sqrt(1 - step.a_t))
            last = i == len(plan) - 1
            noise = randn(x.shape, generator, x.device, x.dtype) if step.sigma > 0 and not (
                variance == "large" and last) else None
            if variance == "large":
                x = ddpm_posterior_step(x, x0_pred, step.a_t, step.a_s, noise)
            else:
                x = ddim_step(x0_pred, eps, step.a_s, step.sigma, noise)
            torch.sum(x.reshape(-1), 0, dtype=torch.float32, out=sums[i])
            yield step.t, x, x0_pred
        bad = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()   # one host sync, after the loop
        if bad:
            i = bad[0]
            raise ValueError(f"non-finite values appeared at step {i + 1} of {len(plan)} (t={plan[i].t}); "
                             "check the model's output and the schedule")

    # -- public API
    def iter_sample(self, x_T: Tensor, steps: int = 50, eta: float = 0.0, skip: str | Sequence[int] = "uniform",
                    variance: str = "eta", generator: Generator = None, clip_denoised: bool = False,
                    progress: bool = False) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Like `sample`, yielding (t, x_s, x0_pred) after each step; the last x_s is the sample."""
        plan = self._plan_sample(steps, eta, skip, variance)   # validate before the first next()
        return self._walk(x_T, plan, variance, generator, clip_denoised, progress)

    def sample(self, x_T: Tensor, steps: int = 50, eta: float = 0.0, skip: str | Sequence[int] = "uniform",
               variance: str = "eta", generator: Generator = None, clip_denoised: bool = False,
               progress: bool = False) -> Tensor:
        """Generate x_0 [B, ...] from noise x_T [B, ...] over the sub-sequence tau (eq. 12, sigma of eq. 16).

        steps: S, the length of tau. eta: 0 is DDIM (deterministic), 1 is DDPM. skip: "uniform", "quad",
        "trailing", "linspace" or an explicit ascending list of timesteps. variance: "eta" (eq. 16 times
        eta) or "large" (Table 1's sigma-hat: DDPM ancestral steps with variance 1 - a_t/a_s, x0_pred
        clipped to [-1, 1], no noise on the final step; eta is then ignored). generator: a torch.Generator,
        or a list of one per sample so that sample i does not depend on its batch. clip_denoised: clip
        x0_pred to [-1, 1] each step (eps is recomputed from the clipped x0_pred).
        """
        x = x_T
        for _, x, _ in self.iter_sample(x_T, steps, eta, skip, variance, generator, clip_denoised, progress):
            pass
        return x

    def invert(self, x_0: Tensor, steps: int = 50, skip: str | Sequence[int] = "uniform",
               progress: bool = False) -> Tensor:
        """Encode data x_0 [B, ...] into the latent x_T at level tau_S with the deterministic ODE (eq. 13).

        See the module docstring for the convention; `sample(invert(x_0, S), S)` reconstructs x_0.
        """
        x = x_0
        for _, x, _ in self._walk(x_0, self._plan_invert(steps, skip), progress=progress):
            pass
        return x
