"""What every format's room shares: the error, the result of `load`, the model built from a state dict with its
keys checked in the file's own names, the user's `config=` argument resolved, and atomic writes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ddim.errors import DDIMError, WrongTypeError, one_line
from ddim.io import atomic_path, write_failed, write_json_atomic
from ddim.models.unet import PRESETS, UNet, UNetConfig
from ddim.schedule import NoiseSchedule

__all__ = ["CheckpointError", "LoadedModel", "build_model", "resolve_config", "write_atomic", "write_json"]

_SHOW = 5  # how many missing/unexpected keys an error lists


class CheckpointError(DDIMError):
    """A checkpoint file could not be read or does not fit the model; the message names the file."""


@dataclass
class LoadedModel:
    """What `load` returns: a ready model (eval mode) and everything needed to sample from it.

    clip_denoised: how the checkpoint asks to be sampled when the user does not say (a diffusers scheduler's
    `clip_sample`: True for DDPMScheduler, "keep-eps" for DDIMScheduler, as `sampling.Denoiser` reads them).
    """

    model: UNet
    schedule: NoiseSchedule
    prediction: str
    config: UNetConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "ddim"
    clip_denoised: bool | str = False


def build_model(path: Path, cfg: UNetConfig, state: Mapping[str, Tensor],
                rename: Mapping[str, str] | None = None) -> UNet:
    """UNet(cfg) holding `state`; keys/shapes are checked first so a mismatch is reported in the file's own names
    (`rename`: our key -> the file's)."""
    with torch.device("meta"):  # no init work: every tensor comes from the file
        model = UNet(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    rename = rename or {}
    _check_keys(path, cfg, {rename.get(k, k): s for k, s in expected.items()}, state)
    inverse = {v: k for k, v in rename.items()}
    ours = {inverse.get(k, k): v for k, v in state.items()}
    # reshape: linear [C, C] -> 1x1 conv [C, C, 1, 1]. clone: tensors of an mmap-ed torch file stay file-backed,
    # and convolutions on file-backed weights measured ~10x slower on CPU; one copy of the chosen weights only.
    ours = {k: v.reshape(expected[k]).clone() for k, v in ours.items()}
    model.load_state_dict(ours, strict=True, assign=True)
    return model


def _same_shape(got: tuple, want: tuple) -> bool:
    # A linear [C, C] stands for our 1x1 conv [C, C, 1, 1] (diffusers' attention projections).
    return got == want or (len(want) == 4 and want[2:] == (1, 1) and got == want[:2])


def _check_keys(path: Path, cfg: UNetConfig, expected: Mapping[str, tuple], state: Mapping[str, Tensor]) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}" for k in expected
              if k in state and not _same_shape(tuple(state[k].shape), expected[k])]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
            parts.append(f"{label} ({len(keys)}): " + ", ".join(keys[:_SHOW]) + more)
    raise CheckpointError(f"{path}: does not match {cfg}: " + "; ".join(parts))


def resolve_config(config: Any) -> tuple[UNetConfig, dict | None]:
    """The `config=` argument (`--config` on the command line) -> (UNetConfig, the official dict when one was
    given, for its diffusion section): a `PRESETS` name, a UNetConfig, a dict (UNetConfig fields or the official
    layout), or a path to the official YAML or a JSON file."""
    if isinstance(config, UNetConfig):
        return config, None
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config], None
    is_path = isinstance(config, (str, os.PathLike))
    where = f"config {str(config)!r} (--config)" if is_path else "config (--config)"
    if is_path:
        p = Path(config)
        if not p.is_file():
            raise CheckpointError(f"{where} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
        try:
            text = p.read_text()
            if p.suffix in (".yml", ".yaml"):
                import yaml

                config = yaml.safe_load(text)
            else:
                config = json.loads(text)
        except Exception as e:  # OSError, bad UTF-8, bad JSON, PyYAML's YAMLError (a !!python tag, bad syntax)
            raise CheckpointError(f"{where}: not a readable YAML or JSON file ({one_line(e)})") from None
        if not isinstance(config, Mapping):
            raise CheckpointError(f"{where}: holds a {type(config).__name__}, not a mapping of model settings")
    if isinstance(config, Mapping):
        try:
            if "model" in config:
                return UNetConfig.from_official(config), dict(config)
            return UNetConfig.from_dict(config), None
        except (KeyError, TypeError, ValueError, AttributeError) as e:   # DDIMError is a ValueError: kept as said
            raise CheckpointError(f"{where}: {e if isinstance(e, DDIMError) else one_line(e)}") from None
    raise WrongTypeError(f"config (--config) must be a preset name ({', '.join(PRESETS)}), a UNetConfig, a dict or "
                          f"a path, got a {type(config).__name__}")


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Run write(tmp) and rename tmp over path; any failure (safetensors' SafetensorError on a full disk, too)
    is an UnwritableError saying the previous file is intact."""
    try:
        with atomic_path(path) as tmp:  # readers never see half a file
            write(str(tmp))
    except Exception as e:
        raise write_failed(path, e) from e


def write_json(path: Path, obj: Any) -> None:
    """`obj` as JSON at path, atomically; a failure is an UnwritableError naming the file."""
    try:
        write_json_atomic(path, obj)
    except Exception as e:  # the objects are plain JSON, so any failure is the disk's
        raise write_failed(path, e) from e
