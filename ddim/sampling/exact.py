"""Exactly invertible solvers: BDIA and EDICT. Their inversion is the algebraic inverse of their sampling step,
so `sample(invert(x_0))` gives x_0 back up to roundoff at any step count, guided or not.

- BDIA (Zhang, Lewis & Kleijn, ECCV 2024, "Exact Diffusion Inversion via Bi-directional Integration
  Approximation"): one network call per step. With D_k(z) = sqrt(a_k) x0_pred(z) + sqrt(1 - a_k) eps(z), the
  DDIM move of z's prediction to level k, a step from level i to i + 1 (towards the data) is
  z_{i+1} = D_{i+1}(z_i) + gamma (z_{i-1} - D_{i-1}(z_i)): the forward DDIM move plus gamma times the error
  of the backward move to the previous state. gamma = 0 is DDIM; the first step (no z_{i-1}) is DDIM. Solved
  for z_{i-1} it runs backwards exactly (dividing by gamma, so inversion needs gamma > 0).
- EDICT (Wallace, Gokul & Naik, CVPR 2023, "Exact Diffusion Inversion via Coupled Transformations"): two
  sequences x, y, two network calls per step. x moves with the prediction made at y, then y with the
  prediction made at the moved x, then both are mixed with weight p (x' = p x + (1-p) y, y' = p y + (1-p) x');
  every stage is invertible. "leapfrog" swaps which sequence moves first on every other step (the authors'
  default).

Both need two tensors to resume exactly: inversion returns a `Coupled` latent (BDIA: z at tau_S and z one
level below; EDICT: x and y at tau_S), which `sample` takes in place of x_T. A plain tensor x_T starts them
from noise as usual (BDIA: its first step is DDIM; EDICT: x = y = x_T).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.sampling.solvers import Denoise, Noise, Solver
from ddim.sampling.steps import ddim_step

__all__ = ["Coupled", "ExactSolver", "BDIA", "EDICT"]


@dataclass(frozen=True)
class Coupled:
    """A latent of an exactly invertible solver: what `invert(..., solver="bdia"|"edict")` returns and
    `sample(...)` takes back in place of x_T.

    x [B, ...]: the latent at tau_S (the one to edit, interpolate or look at). y [B, ...]: BDIA, the state one
    level below (at the plan's second level); EDICT, the second sequence at tau_S. solver: the solver's name.
    taus: the timesteps of the sampling plan it was made for (checked when sampling). It slices like a batch
    (`z[i:j]`), concatenates (`Coupled.cat`), moves (`z.to(device)`), and `stack()` gives [2, B, ...].
    """

    x: Tensor
    y: Tensor
    solver: str
    taus: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> torch.Size:
        return self.x.shape

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def __getitem__(self, index) -> "Coupled":
        return Coupled(self.x[index], self.y[index], self.solver, self.taus)

    def to(self, *args, **kwargs) -> "Coupled":
        return Coupled(self.x.to(*args, **kwargs), self.y.to(*args, **kwargs), self.solver, self.taus)

    def stack(self) -> Tensor:
        """[2, B, ...]: x then y."""
        return torch.stack([self.x, self.y])

    @staticmethod
    def cat(parts: Sequence["Coupled"]) -> "Coupled":
        """Batches of one coupled latent joined along the batch dimension (same solver and plan)."""
        first = parts[0]
        if any(p.solver != first.solver or p.taus != first.taus for p in parts):
            raise DDIMError("Coupled.cat: the parts come from different solvers or plans")
        return Coupled(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), first.solver, first.taus)


class ExactSolver(Solver):
    """Base of the solvers with an algebraic inverse. The sampler uses, besides `step`:
    `load(x_T)` (a tensor, or a `Coupled` from this solver's inversion: the tensor the walk carries),
    `unstep(denoise, x, i, noise)` (undo sampling step i: x at plan[i].a_s -> plan[i].a_t; inversion walks the
    sampling plan backwards with it) and `coupled(x)` (the latent inversion returns)."""

    exact_inverse = True
    has_history = True          # it keeps the previous state (BDIA) or the second sequence (EDICT)

    def load(self, x_T: Tensor | Coupled) -> Tensor:
        if isinstance(x_T, Coupled):
            taus = tuple(s.t for s in self.plan)
            if x_T.solver != self.name:
                raise DDIMError(f"x_T: a coupled latent of solver {x_T.solver!r} samples only with "
                                f"solver={x_T.solver!r}, not {self.name!r}")
            if x_T.taus != taus:
                raise DDIMError(f"x_T: this coupled latent was made for the timesteps {list(x_T.taus)}, but the "
                                f"plan has {list(taus)}; pass the steps and skip it was inverted with")
            if x_T.x.shape != x_T.y.shape:
                raise DDIMError(f"x_T: the coupled latent's two tensors differ in shape: {tuple(x_T.x.shape)} "
                                f"and {tuple(x_T.y.shape)}")
            return self.resume(x_T)
        return x_T

    def resume(self, x_T: Coupled) -> Tensor:
        raise NotImplementedError

    def unstep(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def coupled(self, x: Tensor) -> Coupled:
        raise NotImplementedError


def _check_final(plan: Sequence, name: str) -> None:
    if any(s.a_t >= 1 for s in plan):
        raise DDIMError(f"solver {name!r}: a plan step starts at alpha = 1; it needs sampling levels")


class BDIA(ExactSolver):
    """BDIA-DDIM (Zhang, Lewis & Kleijn 2024), gamma in [0, 1]: gamma = 0 is DDIM (bit for bit), gamma = 1 the
    authors' default (their code's; their README suggests 0.5 at 10 steps for sampling). One network call per
    step; sampling from a `Coupled` latent skips the first step (its result is the latent's y): S - 1 calls.
    Inverting costs S calls: the first (from the data, where no earlier state exists) is eq. 13's DDIM step,
    the rest are the exact inverse, which divides by gamma (roundoff grows like gamma^-S; needs gamma > 0)."""

    name = "bdia"

    def __init__(self, gamma: float = 1.0) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
            raise DDIMError(f"gamma must be a number in [0, 1] (0: DDIM; BDIA's default 1), got {gamma!r}")
        self.gamma = float(gamma)

    def begin(self) -> None:
        _check_final(self.plan, self.name)
        self._prev: Tensor | None = None     # sampling: z at the previous level; inversion: z at the next level
        self._given: Tensor | None = None    # a Coupled latent's y: the result of step 0

    def resume(self, x_T: Coupled) -> Tensor:
        self._given = x_T.y
        return x_T.x

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s = self.plan[i]
        if i == 0 and self._given is not None:
            # Step 0 was done by the inversion: its result is given. x0_pred: the x0 of the DDIM line through
            # both points (no network call).
            y, self._given = self._given, None
            ct, cs = math.sqrt(1 - s.a_t), math.sqrt(1 - s.a_s)
            x0_pred = (y * ct - x * cs) / (math.sqrt(s.a_s) * ct - math.sqrt(s.a_t) * cs)
            self._prev = x
            return y, x0_pred
        eps, x0_pred = denoise(x, s.t, s.a_t)
        x_s = ddim_step(x0_pred, eps, s.a_s)                        # D_{i+1}(z_i): the DDIM move
        if self._prev is not None and self.gamma != 0:
            back = ddim_step(x0_pred, eps, self.plan[i - 1].a_t)   # D_{i-1}(z_i): the same prediction moved back
            x_s.add_(self._prev - back, alpha=self.gamma)
        self._prev = x
        return x_s, x0_pred

    def unstep(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        """Undo step i: x at plan[i].a_s -> plan[i].a_t. The first call (i = last, x the data) is eq. 13's DDIM
        step; later ones solve step i + 1 for z_i: z_i = (z_{i+2} - D_{i+2}(z_{i+1})) / gamma + D_i(z_{i+1})."""
        if self.gamma == 0:
            raise DDIMError("solver 'bdia' with gamma=0 is DDIM, which has no exact inverse; use gamma > 0")
        if self._prev is None:
            s = self.plan[i]
            eps, x0_pred = denoise(x, s.t, s.a_s)                     # eq. 13: the network at tau_1 on the data
            self._prev = x
            return ddim_step(x0_pred, eps, s.a_t), x0_pred
        s = self.plan[i + 1]                                           # the sampling step that produced z_{i+2}
        eps, x0_pred = denoise(x, s.t, s.a_t)
        forward = ddim_step(x0_pred, eps, s.a_s)
        back = ddim_step(x0_pred, eps, self.plan[i].a_t)
        z = (self._prev - forward).div_(self.gamma).add_(back)
        self._prev = x
        return z, x0_pred

    def coupled(self, x: Tensor) -> Coupled:
        return Coupled(x, self._prev, self.name, tuple(s.t for s in self.plan))


class EDICT(ExactSolver):
    """EDICT (Wallace, Gokul & Naik 2023): two coupled sequences and a mixing weight p in (0, 1] (the authors'
    0.93; closer to 1 inverts with less roundoff growth, lower keeps the two sequences closer). Two network calls
    per step, sampling and inversion alike. leapfrog=True (the authors' default) alternates which sequence moves
    first. The sample is the x sequence.

    Each move uses the (eps, x0_pred) made at the other sequence's point w, translated to the moved point v:
    v -> sqrt(a_s) (x0_pred + (v - w) / sqrt(a_t)) + sqrt(1 - a_s) eps, which for an eps network is EDICT's
    v -> a v + b eps with the DDIM coefficients, and which keeps a guidance mode's own pair (CFG++).
    """

    name = "edict"

    def __init__(self, p: float = 0.93, leapfrog: bool = True) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise DDIMError(f"p must be a number in (0, 1] (EDICT's mixing weight; default 0.93), got {p!r}")
        if not isinstance(leapfrog, bool):
            raise DDIMError(f"leapfrog must be True or False, got {leapfrog!r}")
        self.p, self.leapfrog = float(p), leapfrog

    def begin(self) -> None:
        _check_final(self.plan, self.name)
        self._y: Tensor | None = None

    def resume(self, x_T: Coupled) -> Tensor:
        self._y = x_T.y
        return x_T.x

    def _swap(self, i: int) -> bool:
        return self.leapfrog and i % 2 == 1

    @staticmethod
    def _move(v: Tensor, w: Tensor, pair: tuple[Tensor, Tensor], a_t: float, a_s: float) -> Tensor:
        eps, x0_pred = pair
        return ddim_step(torch.add(x0_pred, v - w, alpha=1 / math.sqrt(a_t)), eps, a_s)

    @staticmethod
    def _unmove(v: Tensor, w: Tensor, pair: tuple[Tensor, Tensor], a_t: float, a_s: float) -> Tensor:
        eps, x0_pred = pair
        x0_v = torch.add(v, eps, alpha=-math.sqrt(1 - a_s)).div_(math.sqrt(a_s))
        return torch.add(w, x0_v - x0_pred, alpha=math.sqrt(a_t))

    def step(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s, p = self.plan[i], self.p
        y = x if self._y is None else self._y
        if self._swap(i):
            x, y = y, x
        first = denoise(y, s.t, s.a_t)
        x_mid = self._move(x, y, first, s.a_t, s.a_s)
        y_mid = self._move(y, x_mid, denoise(x_mid, s.t, s.a_t), s.a_t, s.a_s)
        if self._swap(i):
            x_mid, y_mid = y_mid, x_mid
        x_s = torch.add(x_mid * p, y_mid, alpha=1 - p)                 # the mixing layer
        self._y = torch.add(y_mid * p, x_s, alpha=1 - p)
        return x_s, first[1]

    def unstep(self, denoise: Denoise, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        s, p = self.plan[i], self.p
        y = x if self._y is None else self._y
        y_mid = torch.add(y, x, alpha=-(1 - p)).div_(p)                 # the mixing layer, undone
        x_mid = torch.add(x, y_mid, alpha=-(1 - p)).div_(p)
        if self._swap(i):
            x_mid, y_mid = y_mid, x_mid
        y_t = self._unmove(y_mid, x_mid, denoise(x_mid, s.t, s.a_t), s.a_t, s.a_s)
        last = denoise(y_t, s.t, s.a_t)
        x_t = self._unmove(x_mid, y_t, last, s.a_t, s.a_s)
        if self._swap(i):
            x_t, y_t = y_t, x_t
        self._y = y_t
        return x_t, last[1]

    def coupled(self, x: Tensor) -> Coupled:
        return Coupled(x, x if self._y is None else self._y, self.name, tuple(s.t for s in self.plan))
