"""The official DDIM/DDPM release's files: the bare state dict `model-790000.ckpt` (also as safetensors, or wrapped
in {"state_dict" | "model" | "ema": ...} by other trainers) and the trainer's `ckpt.pth` list
[model, optimizer, epoch, step, ema]. They carry no config: `config=` (a preset, UNetConfig, dict or the official
YAML, whose `diffusion` section also gives the schedule) or the preset whose key names and shapes match."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ddim.checkpoint.base import CheckpointError, LoadedModel, build_model, resolve_config
from ddim.errors import one_line
from ddim.models.unet import PRESETS, UNet, UNetConfig
from ddim.schedule import NoiseSchedule

__all__ = ["from_torch_object", "from_state_dict", "infer_preset"]

_SHOW = 5


def from_torch_object(path: Path, obj: Any, config: Any, ema: bool) -> LoadedModel:
    """An unpickled official file: the trainer's list (EMA weights by default) or a (wrapped) state dict."""
    if isinstance(obj, (list, tuple)):
        # Official trainer: [model.state_dict(), optimizer.state_dict(), epoch, step, ema_helper.state_dict()].
        if not obj or not isinstance(obj[0], Mapping):
            raise CheckpointError(f"{path}: a list whose first item is not a state dict; not an official ckpt.pth")
        if ema and (len(obj) < 5 or not isinstance(obj[4], Mapping)):
            raise CheckpointError(f"{path}: no EMA state at index 4 (trained with model.ema: false?); "
                                  "pass ema=False (--raw-weights) to load the raw weights")
        state = obj[4] if ema else obj[0]
        info = {"epoch": obj[2] if len(obj) > 2 else None, "step": obj[3] if len(obj) > 3 else None,
                "weights": "ema" if ema else "raw"}
        return from_state_dict(path, state, config, "official-train", info)
    if isinstance(obj, Mapping):
        # Some trainers wrap the weights; the released files are the bare dict.
        for wrapper in ("state_dict", "model", "ema"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping) and not isinstance(obj[wrapper], Tensor):
                obj = obj[wrapper]
                break
        return from_state_dict(path, obj, config, "official-ckpt", {})
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or an official training list")


def from_state_dict(path: Path, state: Mapping, config: Any, fmt: str, info: dict) -> LoadedModel:
    """A bare state dict in the official key names, with the config given (or the matching preset)."""
    state = _strip_prefix(state, "module.")  # DataParallel, as the official trainer saves it
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:_SHOW]}")
    if config is None:
        cfg, official = infer_preset(path, state), None
        info = {**info, "config_inferred": True}
    else:
        cfg, official = resolve_config(config)
    model = build_model(path, cfg, state)
    if official is not None:
        info = {**info, "official_config": official}  # var_type, ema_rate, ... for whoever needs them
    sched = NoiseSchedule.linear()  # the official default (configs/*.yml all use it)
    if official is not None and "diffusion" in official:
        d = official["diffusion"]
        try:
            sched = NoiseSchedule.from_name(d.get("beta_schedule", "linear"),
                                            int(d.get("num_diffusion_timesteps", 1000)),
                                            float(d.get("beta_start", 1e-4)), float(d.get("beta_end", 0.02)))
        except (TypeError, ValueError, AttributeError) as e:    # DDIMError (a ValueError) too
            raise CheckpointError(f"config (--config): its diffusion section: {one_line(e)}") from None
    return LoadedModel(model, sched, "eps", cfg, info, fmt)


def _strip_prefix(state: Mapping, prefix: str) -> dict:
    if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def infer_preset(path: Path, state: Mapping[str, Tensor]) -> UNetConfig:
    """The `PRESETS` config whose state dict has exactly these key names and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for cfg in PRESETS.values():
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
        if expected == shapes:
            return cfg
    raise CheckpointError(f"{path}: official checkpoints carry no model config and this one matches no preset "
                          f"({', '.join(PRESETS)}); pass config= (--config: a preset, UNetConfig, dict or the "
                          "official YAML)")
