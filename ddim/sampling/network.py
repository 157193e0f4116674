"""Any network as the sampler calls it: `net(x [B, ...], t LongTensor [B], *args, **kwargs) -> Tensor` like x.

Our U-Net and any callable `model(x, t, **cond) -> Tensor` are that already and are used as they are. diffusers'
`UNet2DModel`, `UNet2DConditionModel` and `UNet1DModel` are wrapped (`DiffusersUNet`): their output object is
unwrapped, a positional condition goes to the argument it means (class labels, text embeddings), and a
class-conditional UNet2DModel's null label -1 becomes its last embedding, num_class_embeds - 1. diffusers is never
imported here: a model is recognised by its class.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ddim.errors import DDIMError

__all__ = ["DiffusersUNet", "as_network", "diffusers_kind"]

# class name -> the keyword a positional condition (cond= as a tensor, y=) stands for
_KINDS: dict[str, str | None] = {"UNet2DModel": "class_labels", "UNet2DConditionModel": "encoder_hidden_states",
                                 "UNet1DModel": None}


def diffusers_kind(model: Any) -> str | None:
    """The class name of a diffusers U-Net this module adapts, or None."""
    for cls in type(model).__mro__:
        if cls.__module__.split(".")[0] == "diffusers" and cls.__name__ in _KINDS:
            return cls.__name__
    return None


class DiffusersUNet(nn.Module):
    """A diffusers U-Net object as the sampler calls it; `unet` is the object itself (its weights, device, dtype)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        kind = diffusers_kind(unet)
        if kind is None:
            raise DDIMError(f"model: {type(unet).__name__} is not a diffusers {', '.join(_KINDS)}")
        self.unet, self.kind, self.positional = unet, kind, _KINDS[kind]
        config = getattr(unet, "config", {})
        self.num_class_embeds = config.get("num_class_embeds") if kind == "UNet2DModel" else None
        self.cross_attention_dim = config.get("cross_attention_dim") if kind == "UNet2DConditionModel" else None
        names = list(inspect.signature(unet.forward).parameters)
        self.keywords = tuple(n for n in names[2:] if n != "return_dict")

    def check_condition(self, args: tuple, kwargs: Mapping[str, Any], name: str) -> None:
        """The condition fits this U-Net: known keywords, at most one positional, embeddings of its width."""
        if len(args) > 1 or (args and self.positional is None):
            allowed = f"one positional ({self.positional})" if self.positional else "no positional condition"
            raise DDIMError(f"{name}: {len(args)} positional tensors for a {self.kind}, which takes {allowed}; "
                            f"pass keywords of {', '.join(self.keywords) or 'none'}")
        unknown = sorted(set(kwargs) - set(self.keywords))
        if unknown:
            raise DDIMError(f"{name}: the {self.kind} takes no keyword {unknown[0]!r}; it takes "
                            f"{', '.join(self.keywords)}")
        kw = self._keywords(args, kwargs)
        if self.kind == "UNet2DModel" and kw.get("class_labels") is not None and not self.num_class_embeds:
            raise DDIMError(f"{name}: this UNet2DModel is unconditional (no num_class_embeds); it takes no class labels")
        emb = kw.get("encoder_hidden_states")
        if isinstance(emb, Tensor) and self.cross_attention_dim is not None:
            width = self.cross_attention_dim
            width = width[0] if isinstance(width, (list, tuple)) else width
            if emb.ndim != 3 or emb.shape[-1] != width:
                raise DDIMError(f"{name}: embeddings of shape {tuple(emb.shape)}; this UNet2DConditionModel takes "
                                f"[B, tokens, {width}] (cross_attention_dim {width})")

    def _keywords(self, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        kw = dict(kwargs)
        if args:
            kw[self.positional] = args[0]
        return kw

    def forward(self, x: Tensor, t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        kw = self._keywords(args, kwargs)
        labels = kw.get("class_labels")
        if self.num_class_embeds and isinstance(labels, Tensor):       # the null label -1: the last embedding
            kw["class_labels"] = torch.where(labels < 0, self.num_class_embeds - 1, labels)
        dtype = next(self.unet.parameters()).dtype        # half-precision weights: inputs in theirs, output in x's
        if dtype != x.dtype:
            kw = {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in kw.items()}
        out = self.unet(x.to(dtype), t, return_dict=False, **kw)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.to(x.dtype)


def as_network(model: Any) -> Any:
    """`model` as the sampler calls it: a diffusers U-Net wrapped in `DiffusersUNet`, anything else as it is."""
    if isinstance(model, DiffusersUNet) or diffusers_kind(model) is None:
        return model
    return DiffusersUNet(model)
