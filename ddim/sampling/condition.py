"""What a network is given besides (x, t): a condition, batch-first, and how it batches itself.

A `Condition` holds positional tensors (`args`, e.g. class labels for `model(x, t, y)`) and keyword arguments
(`kwargs`, e.g. `encoder_hidden_states` of a text-conditional U-Net), each tensor with the batch first (one row
per sample, or one row for all). Classifier-free guidance puts the null condition and the condition side by side
in one call of 2B (`Condition.pair`); class labels' null condition is the label -1 (`Condition.labels`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ddim.errors import DDIMError

__all__ = ["Condition"]


def _map(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """fn on every tensor of a (nested) dict / list / tuple; other values as they are."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    return value


def _tensors(value: Any, where: str) -> list[tuple[str, Tensor]]:
    """(name, tensor) for every tensor of a (nested) value, named as the user spelled it."""
    if isinstance(value, Tensor):
        return [(where, value)]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _tensors(v, f"{where}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _tensors(v, f"{where}[{i}]")]
    return []


def _cat(a: Any, b: Any, where: str) -> Any:
    """a and b side by side along the batch (tensors concatenated, equal other values kept)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b.to(a.device)])
    if isinstance(a, Mapping) and isinstance(b, Mapping) and set(a) == set(b):
        return {k: _cat(a[k], b[k], f"{where}[{k!r}]") for k in a}
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return type(a)(_cat(u, v, f"{where}[{i}]") for i, (u, v) in enumerate(zip(a, b)))
    if isinstance(a, (Tensor, Mapping, list, tuple)) or isinstance(b, (Tensor, Mapping, list, tuple)) or a != b:
        raise DDIMError(f"uncond: {where} differs in kind from the condition's; the null condition must have the "
                        "same keywords and tensors as cond")
    return a


class Condition:
    """A network's condition: `model(x, t, *args, **kwargs)`, every tensor batch-first ([B, ...] or [1, ...])."""

    def __init__(self, args: tuple = (), kwargs: Mapping[str, Any] | None = None, name: str = "cond") -> None:
        self.args, self.kwargs, self.name = tuple(args), dict(kwargs or {}), name

    @classmethod
    def make(cls, value: Any, name: str) -> "Condition | None":
        """`cond=` / `uncond=` as given: None, a Condition, a tensor (the network's third positional argument),
        or a dict of the network's keyword arguments."""
        if value is None or isinstance(value, Condition):
            return value
        if isinstance(value, Tensor):
            return cls((value,), name=name)
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return cls((), value, name=name)
        raise DDIMError(f"{name} must be a tensor (batch-first) or a dict of the network's keyword arguments, got "
                        f"{type(value).__name__}")

    @classmethod
    def labels(cls, y: Tensor | int) -> "Condition":
        """Class labels [B] (or one int for all) as the network's third positional argument; -1 is the null label."""
        return cls((torch.as_tensor(y, dtype=torch.long).reshape(-1),), name="y")

    def null_labels(self) -> "Condition":
        """The null condition of class labels: -1 for every sample."""
        return Condition((torch.full_like(self.args[0], -1),), name="y")

    def check_batch(self, batch: int) -> None:
        """Every tensor has one row per sample of the batch, or one row for all."""
        for where, t in _tensors((self.args, self.kwargs), self.name):
            where = where.replace(f"{self.name}[0]", self.name, 1).replace(f"{self.name}[1]", self.name, 1)
            if t.ndim == 0 or t.shape[0] not in (1, batch):
                raise DDIMError(f"{where}: a tensor of shape {tuple(t.shape)} for a batch of {batch}; give the batch "
                                "first, one row per sample or one for all")

    def check_signature(self, model: Any) -> None:
        """Refuse a keyword (or an extra positional argument) the network does not take, before any call."""
        check = getattr(model, "check_condition", None)
        if callable(check):
            check(self.args, self.kwargs, self.name)
            return
        try:
            sig = inspect.signature(model)
        except (TypeError, ValueError):           # a builtin without a signature: the call will tell
            return
        try:
            sig.bind(None, None, *self.args, **self.kwargs)
        except TypeError as e:
            params = ", ".join(list(sig.parameters)[2:]) or "none"
            raise DDIMError(f"{self.name}: the network does not take it ({e}); its arguments after (x, t): "
                            f"{params}") from None

    def expand(self, batch: int, device: torch.device) -> "Condition":
        """Every tensor on `device` with `batch` rows (a single row repeated)."""
        def fit(t: Tensor) -> Tensor:
            t = t.to(device)
            return t.expand(batch, *t.shape[1:]) if t.ndim and t.shape[0] == 1 and batch != 1 else t
        return Condition(_map(self.args, fit), _map(self.kwargs, fit), self.name)

    def pair(self, other: "Condition") -> "Condition":
        """self and other side by side: the condition of one call of 2B (self's rows first)."""
        if len(self.args) != len(other.args):
            raise DDIMError(f"uncond: {len(other.args)} positional tensors against the condition's {len(self.args)}; "
                            "the null condition must have the same form as cond")
        return Condition(_cat(self.args, other.args, "args"), _cat(self.kwargs, other.kwargs, "cond"), self.name)

    def __call__(self, model: Callable[..., Any], x: Tensor, t: Tensor) -> Any:
        return model(x, t, *self.args, **self.kwargs)
