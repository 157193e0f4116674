"""Reading a diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors or .bin), or a
pipeline folder with it in unet/, without diffusers. Only the DDPM-style options this architecture expresses are
accepted (class-conditional `num_class_embeds` included); every other value, and every value of the wrong type,
is a CheckpointError naming the file and the key. The schedule, prediction and clipping come from the
scheduler config beside it (or in ../scheduler/)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from ddim.checkpoint.base import CheckpointError, LoadedModel, build_model
from ddim.checkpoint.diffusers_layout import (DEFAULTS, NULL_CLASS_KEY, PREDICTION_NAMES, REQUIRED, SCHEDULE_NAMES,
                                              WEIGHT_FILES, WHY, diffusers_key_map, rename_legacy_attention)
from ddim.checkpoint.files import read_safetensors, torch_load
from ddim.errors import DDIMError
from ddim.models.unet import UNetConfig
from ddim.schedule import NoiseSchedule

__all__ = ["config_from_diffusers", "load_folder", "is_model_folder", "schedule_from_diffusers"]

# diffusers' own defaults of clip_sample where a scheduler config leaves it out
_CLIP_DEFAULTS = {"DDPMScheduler": True, "DDIMScheduler": True}
# how our denoiser clips like the scheduler does: DDPM's posterior mean uses the clipped x0 (an eps re-derived
# from it gives the same step), DDIM's step keeps the network's eps (use_clipped_model_output=False)
_CLIP_MODES = {"DDIMScheduler": "keep-eps"}


def is_model_folder(path: Path) -> bool:
    """A folder with config.json, or a weights file of one named directly."""
    return (path.is_dir() or (path.name in WEIGHT_FILES and (path.parent / "config.json").exists()))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({type(e).__name__}: {e})") from None


def _int(source: str, key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CheckpointError(f"{source}: {key} must be an integer >= {low}, got {value!r}")
    return value


def _number(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{source}: {key} must be a finite number, got {value!r}")
    return float(value)


def _list(source: str, key: str, value: Any) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise CheckpointError(f"{source}: {key} must be a non-empty list, got {value!r}")
    return list(value)


def config_from_diffusers(dconf: Any, source: str = "config.json") -> UNetConfig:
    """The UNetConfig equal to a diffusers UNet2DModel config; CheckpointError naming any option it cannot express
    (or any value of the wrong type)."""
    if not isinstance(dconf, Mapping):
        raise CheckpointError(f"{source}: holds a JSON {type(dconf).__name__}, not a UNet2DModel config object")
    cls = dconf.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise CheckpointError(f"{source}: _class_name {cls!r} is not supported; only UNet2DModel")
    c = {**DEFAULTS, **{k: v for k, v in dconf.items() if not k.startswith("_")}}
    for key, allowed in REQUIRED.items():
        if c[key] not in allowed:
            why = f" (this architecture fixes {WHY[key]})" if key in WHY else ""
            raise CheckpointError(f"{source}: unsupported option {key}={c[key]!r}; supported: "
                                  f"{' or '.join(repr(a) for a in allowed)}{why}")
    widths = [_int(source, "block_out_channels[]", w) for w in _list(source, "block_out_channels",
                                                                     c["block_out_channels"])]
    ch = widths[0]
    if any(w % ch for w in widths):
        raise CheckpointError(f"{source}: unsupported option block_out_channels={widths}: each must be a multiple "
                              "of the first")
    if c["time_embedding_dim"] not in (None, 4 * ch):
        raise CheckpointError(f"{source}: unsupported option time_embedding_dim={c['time_embedding_dim']!r}; "
                              f"supported: None or 4 * block_out_channels[0] = {4 * ch}")
    if isinstance(c["layers_per_block"], (list, tuple)):
        raise CheckpointError(f"{source}: unsupported option layers_per_block={c['layers_per_block']!r}; "
                              "supported: one int for all levels")
    layers = _int(source, "layers_per_block", c["layers_per_block"])
    down, up = _list(source, "down_block_types", c["down_block_types"]), _list(source, "up_block_types",
                                                                               c["up_block_types"])
    n = len(widths)
    if len(down) != n or len(up) != n:
        raise CheckpointError(f"{source}: down_block_types, up_block_types and block_out_channels differ in length")
    for kind, allowed in ((down, ("DownBlock2D", "AttnDownBlock2D")), (up, ("UpBlock2D", "AttnUpBlock2D"))):
        for b in kind:
            if b not in allowed:
                raise CheckpointError(f"{source}: unsupported block type {b!r}; supported: {', '.join(allowed)}")
    attn_down = []
    for i in range(n):
        has_down, has_up = down[i].startswith("Attn"), up[n - 1 - i].startswith("Attn")
        if has_down != has_up:
            raise CheckpointError(f"{source}: unsupported option: attention in down_block_types[{i}] and "
                                  f"up_block_types[{n - 1 - i}] differ; this architecture has it at both or neither")
        attn_down.append(has_down)
    head = c["attention_head_dim"]
    if head is not None:
        head = _int(source, "attention_head_dim", head)
    for w in [widths[i] for i in range(n) if attn_down[i]] + [widths[-1]]:
        if head is not None and head != w:
            raise CheckpointError(f"{source}: unsupported option attention_head_dim={head!r}: gives "
                                  f"{w // head} heads at width {w}; this architecture uses one head "
                                  "(attention_head_dim null or equal to the width)")
    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        # attention placement depends on the level only; H and W stay free at run time
        size = [_int(source, "sample_size[]", s) for s in _list(source, "sample_size", size)][0]
    size = _int(source, "sample_size", size) if size is not None else max(32, 2 ** (n - 1))
    labels = c["num_class_embeds"]
    if labels is not None and (isinstance(labels, bool) or not isinstance(labels, int) or labels < 1):
        raise CheckpointError(f"{source}: unsupported option num_class_embeds={labels!r}; supported: null or an "
                              "integer >= 1")
    null = bool(c.get(NULL_CLASS_KEY, False)) if labels is not None else UNetConfig.null_class
    dropout = _number(source, "dropout", c["dropout"])
    try:
        return UNetConfig(
            image_size=size, in_channels=_int(source, "in_channels", c["in_channels"]),
            out_channels=_int(source, "out_channels", c["out_channels"]), ch=ch,
            ch_mult=tuple(w // ch for w in widths), num_res_blocks=layers,
            attn_resolutions=tuple(size // 2**i for i in range(n) if attn_down[i]), dropout=dropout,
            resamp_with_conv=True, num_classes=0 if labels is None else labels - int(null), null_class=null,
        )
    except DDIMError as e:
        raise CheckpointError(f"{source}: {e}") from None


def load_folder(path: Path) -> LoadedModel:
    """A UNet2DModel folder, a pipeline folder (the model in unet/), or the weights file of one named directly."""
    folder = path if path.is_dir() else path.parent
    if not (folder / "config.json").exists() and (folder / "unet" / "config.json").exists():
        folder = folder / "unet"  # a pipeline folder: the model lives in unet/
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{folder}: a folder without config.json is not a diffusers model folder")
    dconf = _read_json(cfg_path)
    cfg = config_from_diffusers(dconf, str(cfg_path))       # a config it cannot express is refused unread
    weights = next((folder / w for w in WEIGHT_FILES if (folder / w).exists()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no {' or '.join(WEIGHT_FILES)} beside config.json")
    if weights.suffix == ".safetensors":
        state, header = read_safetensors(weights)
    else:
        state, header = torch_load(weights), {}
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{weights}: holds a {type(state).__name__}, not a state dict")
    if header.get(NULL_CLASS_KEY) == "true":             # our export's marker travels in the weights' metadata
        dconf = {**dconf, NULL_CLASS_KEY: True}
        cfg = config_from_diffusers(dconf, str(cfg_path))
    model = build_model(weights, cfg, rename_legacy_attention(dict(state)), rename=diffusers_key_map(cfg))
    schedule, prediction, clip = _scheduler(folder)
    meta = {"diffusers_config": {k: v for k, v in dconf.items() if not k.startswith("_") and k != NULL_CLASS_KEY}}
    return LoadedModel(model, schedule, prediction, cfg, meta, "diffusers", clip)


def _scheduler(folder: Path) -> tuple[NoiseSchedule, str, bool | str]:
    """Schedule, prediction and clipping from a scheduler_config.json beside the model or in ../scheduler/; else
    DDPM's schedule, eps, no clipping."""
    for p in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json",
              folder.parent / "scheduler_config.json"):
        if p.exists():
            return schedule_from_diffusers(_read_json(p), str(p))
    return NoiseSchedule.linear(1000, 1e-4, 0.02), "eps", False


def schedule_from_diffusers(s: Any, source: str = "scheduler_config.json") -> tuple[NoiseSchedule, str, bool | str]:
    """(schedule, prediction, clip mode for `sampling.Denoiser`) of a diffusers DDPM/DDIM-style scheduler config."""
    if not isinstance(s, Mapping):
        raise CheckpointError(f"{source}: holds a JSON {type(s).__name__}, not a scheduler config object")
    preds = {v: k for k, v in PREDICTION_NAMES.items()}
    prediction = s.get("prediction_type", "epsilon")
    if prediction not in preds:
        raise CheckpointError(f"{source}: unsupported prediction_type {prediction!r}; supported: {', '.join(preds)}")
    cls = s.get("_class_name")
    clip = s.get("clip_sample", _CLIP_DEFAULTS.get(cls, False))
    if not isinstance(clip, bool):
        raise CheckpointError(f"{source}: clip_sample must be true or false, got {clip!r}")
    if clip and _number(source, "clip_sample_range", s.get("clip_sample_range", 1.0)) != 1.0:
        raise CheckpointError(f"{source}: unsupported option clip_sample_range={s['clip_sample_range']!r} with "
                              "clip_sample true; supported: 1.0 (x0_pred clipped to [-1, 1])")
    if s.get("thresholding", False):
        raise CheckpointError(f"{source}: unsupported option thresholding=true (dynamic thresholding); "
                              "supported: false")
    T = _int(source, "num_train_timesteps", s.get("num_train_timesteps", 1000))
    try:
        if s.get("trained_betas") is not None:
            betas = [_number(source, "trained_betas[]", b) for b in _list(source, "trained_betas", s["trained_betas"])]
            schedule = NoiseSchedule(torch.tensor(betas, dtype=torch.float64))
        else:
            names = {v: k for k, v in SCHEDULE_NAMES.items()}
            name = s.get("beta_schedule", "linear")
            if name not in names:
                raise CheckpointError(f"{source}: unsupported beta_schedule {name!r}; supported: {', '.join(names)}")
            schedule = NoiseSchedule.from_name(names[name], T, _number(source, "beta_start", s.get("beta_start", 1e-4)),
                                               _number(source, "beta_end", s.get("beta_end", 0.02)))
    except CheckpointError:
        raise
    except DDIMError as e:               # betas outside (0, 1) and the like, as the schedule refuses them
        raise CheckpointError(f"{source}: {e}") from None
    mode = _CLIP_MODES.get(cls, True) if clip else False
    return schedule, preds[prediction], mode
