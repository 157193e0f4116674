"""This package's own files: the `.safetensors` format `save` writes, and the trainer's `ckpt-N.pt`.

The safetensors format holds the weights, the schedule's betas (float64, as the reserved tensor
`__schedule__.betas`) and a string header: format, format_version, config (UNetConfig JSON), schedule, prediction,
metadata (JSON) and sha256, the content hash.

Format versions and their hash:
- 2 (written now): sha256 over every header entry (sorted key, value) and then every tensor (sorted name:
  name, dtype, shape, bytes). Editing the prediction, schedule, config or metadata breaks it like a flipped bit.
- 1: the same tensor part only; its files are still read and checked that way (they were written before the
  header was covered). A file without a hash (the oldest, and the shipped `digits*.safetensors`) loads
  unchecked only at version <= 1; a version-2 file without one is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ddim.checkpoint.base import CheckpointError, LoadedModel, build_model, write_atomic
from ddim.errors import DDIMError, WrongTypeError
from ddim.models.unet import UNet, UNetConfig
from ddim.predictions import PREDICTIONS
from ddim.schedule import NoiseSchedule

__all__ = ["FORMAT", "FORMAT_VERSION", "save", "is_native", "from_safetensors", "is_train_ckpt", "from_train_ckpt",
           "content_hash"]

FORMAT = "ddim"
FORMAT_VERSION = 2
BETAS_KEY = "__schedule__.betas"  # reserved tensor name: the schedule travels bit-exact in float64
HASH_KEY = "sha256"               # header key of the content hash
TRAIN_FORMAT = "ddim-train-ckpt"
_TRAIN_KEYS = ("step", "model", "ema", "unet", "schedule", "prediction")  # what ddim.train writes in ckpt-N.pt


def save(path: str | os.PathLike, model: UNet, schedule: NoiseSchedule, *, prediction: str = "eps",
         metadata: dict | None = None) -> None:
    """Write `model` with its config, `schedule` and JSON-able `metadata` to one safetensors file, atomically."""
    from safetensors.torch import save_file

    if prediction not in PREDICTIONS:
        raise DDIMError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if not isinstance(model, UNet):
        raise WrongTypeError(f"save() takes a ddim UNet as model, got a {type(model).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise WrongTypeError(f"save() takes a NoiseSchedule as schedule, got a {type(schedule).__name__}")
    try:
        meta = json.dumps(metadata or {})
    except (TypeError, ValueError) as e:
        raise WrongTypeError(f"save(): metadata must be JSON-able (dicts, lists, strings, numbers), got {e}") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[BETAS_KEY] = schedule.betas.to(torch.float64).contiguous()
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "schedule": json.dumps({"name": schedule.name, "T": schedule.T}),
        "prediction": prediction,
        "metadata": meta,
    }
    header[HASH_KEY] = content_hash(tensors, header)
    write_atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def content_hash(tensors: Mapping[str, Tensor], header: Mapping[str, str] | None = None) -> str:
    """The hash `save` stores and `load` checks: sha256 (hex) over the header's entries but the hash itself
    (sorted key, value; none for format version 1), then each tensor by sorted name: name, dtype, shape, bytes."""
    h = hashlib.sha256()
    for key in sorted(k for k in (header or {}) if k != HASH_KEY):
        h.update(f"{key}\0{header[key]}\0".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the stored bytes, whatever the dtype (bf16 too)
    return h.hexdigest()


def is_native(header: Mapping[str, str]) -> bool:
    """Whether a safetensors header is this package's format (else the file is a bare state dict)."""
    return header.get("format") == FORMAT


def _version(path: Path, header: Mapping[str, str]) -> int:
    text = header.get("format_version", "0")
    if not (isinstance(text, str) and text.isdigit()):
        raise CheckpointError(f"{path}: header format_version {text!r} is not a version number; the file is "
                              "damaged or was not written by ddim")
    version = int(text)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer ddim (format version {version} > {FORMAT_VERSION}); "
                              "upgrade ddim to read it")
    return version


def from_safetensors(path: Path, tensors: dict[str, Tensor], header: Mapping[str, str]) -> LoadedModel:
    """A file `save` wrote, its content hash checked first."""
    version = _version(path, header)
    stored = header.get(HASH_KEY)
    if stored is None and version >= 2:
        raise CheckpointError(f"{path}: format version {version} without its content hash (header key "
                              f"{HASH_KEY}): the header was edited; restore the file from a copy")
    if stored is not None and content_hash(tensors, header if version >= 2 else None) != stored:
        raise CheckpointError(f"{path}: the {'header or ' if version >= 2 else ''}tensors do not match the content "
                              f"hash saved with them (sha256 {stored[:12]}...): the file is corrupt or was edited; "
                              "restore it from a copy")
    try:
        stored_cfg = UNetConfig.from_dict(json.loads(header["config"]))
        sched_info = json.loads(header["schedule"])
        metadata = json.loads(header.get("metadata", "{}"))
        betas = tensors.pop(BETAS_KEY)
        name = sched_info.get("name", "custom")
        schedule = NoiseSchedule(betas, name=name)
    except (KeyError, ValueError, TypeError, AttributeError) as e:   # DDIMError is a ValueError too
        raise CheckpointError(f"{path}: damaged ddim header ({type(e).__name__}: {e})") from None
    prediction = header.get("prediction", "eps")
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"{path}: header prediction {prediction!r} is not one of {PREDICTIONS}")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: header metadata is a {type(metadata).__name__}, not a JSON object")
    model = build_model(path, stored_cfg, tensors)
    return LoadedModel(model, schedule, prediction, stored_cfg, metadata, FORMAT)


def is_train_ckpt(obj: Any) -> bool:
    """Whether an unpickled torch object is `ddim.train`'s ckpt-N.pt."""
    return isinstance(obj, Mapping) and all(k in obj for k in _TRAIN_KEYS)


def from_train_ckpt(path: Path, obj: Mapping, ema: bool) -> LoadedModel:
    """`ddim.train`'s ckpt-N.pt: the weights with the U-Net config, schedule and prediction saved beside them."""
    try:
        cfg = UNetConfig.from_dict(obj["unet"])
        schedule = NoiseSchedule.from_dict(obj["schedule"])
        prediction, step = obj["prediction"], int(obj["step"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: damaged training checkpoint ({type(e).__name__}: {e})") from None
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"{path}: unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    if ema and obj["ema"] is None:
        raise CheckpointError(f"{path}: holds no EMA weights (trained with model.ema: false); pass ema=False "
                              "(--raw-weights) to load the raw weights")
    state = obj["ema"] if ema else obj["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: the {'ema' if ema else 'model'} entry is not a state dict")
    info = {"step": step, "weights": "ema" if ema else "raw", "train_config": obj.get("config")}
    return LoadedModel(build_model(path, cfg, state), schedule, prediction, cfg, info, TRAIN_FORMAT)
