"""Load any U-Net checkpoint users arrive with, and save this package's own format: one `load()`, one room per
format.

`load(path)` detects the format and hands the file to its room:

- `native`: "ddim", this package's `.safetensors` file (weights, `UNetConfig`, float64 betas, prediction and
  metadata, all inside a sha256 content hash), and "ddim-train-ckpt", the trainer's `ckpt-N.pt` (EMA by default).
- `official`: "official-ckpt", a released DDPM/DDIM state dict (`model-790000.ckpt`), which carries no config (pass
  `config=`, or the matching preset is used), and "official-train", the trainer's `ckpt.pth` list (EMA by default).
- `diffusers_import`: "diffusers", a `UNet2DModel` folder or a pipeline folder with it in `unet/`, read without
  diffusers; `diffusers_export` writes them (`export_diffusers`, `export_pipeline`).
- `pipeline`: "diffusers-pipeline", a latent pipeline folder (Stable Diffusion's layout: unet/, vae/, scheduler/,
  text_encoder/, tokenizer/), loaded with diffusers and transformers as a `LoadedPipeline`; `scheduler` reads any
  diffusers scheduler (object or config) as schedule, prediction and walk options.
- `hub`: a Hugging Face Hub id (`google/ddpm-cifar10-32`, optionally `@revision`) that is not a local path, fetched
  or found in the cache and read as a diffusers folder.

`files` reads tensor files without running code in them (safetensors; torch files with `weights_only=True`);
`base` holds what the rooms share. Any unreadable or mismatched file raises `CheckpointError` naming the file (and,
for mismatches, the first missing and unexpected keys).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ddim.checkpoint import diffusers_import, native, official, pipeline
from ddim.checkpoint.base import CheckpointError, LoadedModel, resolve_config
from ddim.checkpoint.diffusers_export import CLASS_CONDITIONAL_HINT, export_diffusers, export_pipeline
from ddim.checkpoint.diffusers_import import config_from_diffusers
from ddim.checkpoint.diffusers_layout import diffusers_key_map
from ddim.checkpoint.files import is_safetensors, read_safetensors, torch_load
from ddim.checkpoint.hub import looks_like_hub_id, resolve_hub_id
from ddim.checkpoint.pipeline import LoadedPipeline
from ddim.checkpoint.scheduler import SchedulerSettings, read_scheduler
from ddim.checkpoint.native import BETAS_KEY as _BETAS_KEY, FORMAT_VERSION, save
from ddim.models.unet import UNetConfig
from ddim.schedule import NoiseSchedule

__all__ = ["CheckpointError", "LoadedModel", "load", "save", "export_diffusers", "export_pipeline", "FORMAT_VERSION",
           "config_from_diffusers", "diffusers_key_map", "CLASS_CONDITIONAL_HINT", "read_scheduler", "SchedulerSettings",
           "LoadedPipeline"]

_CARRY_CONFIG = (native.FORMAT, native.TRAIN_FORMAT, "diffusers")   # formats that hold their own UNetConfig


def load(path: str | os.PathLike, *, config: UNetConfig | str | dict | os.PathLike | None = None, ema: bool = True,
         map_location: str | torch.device = "cpu", schedule: NoiseSchedule | None = None,
         dtype: str = "float32") -> LoadedModel | LoadedPipeline:
    """Load a checkpoint of any supported format (see module docstring) into a ready `UNet` in eval mode.

    config: needed only for official files, which carry none: a `PRESETS` name, a `UNetConfig`, a dict (UNetConfig
        fields or the official layout), or a path to the official YAML (`configs/cifar10.yml`) or JSON. Without it,
        the preset whose key names and shapes match the file is used. The official YAML's `diffusion` section also
        gives the schedule; otherwise the official default, linear 1e-4..0.02 with T = 1000.
    ema: for training checkpoints (official `ckpt.pth`, our `ckpt-N.pt`), take the EMA weights (True) or the raw
        ones (False); other formats hold one set of weights and ignore it.
    schedule: overrides the schedule found in (or assumed for) the file.
    Weights keep their stored dtype and go to `map_location`.
    A latent pipeline folder (model_index.json with vae/: Stable Diffusion and the like) or its Hub id gives a
    `LoadedPipeline` (`ddim.checkpoint.pipeline`; needs diffusers and transformers), its weights in `dtype`.
    """
    source = str(path)
    path = Path(path)
    if not path.exists() and looks_like_hub_id(source):
        path = resolve_hub_id(source)            # a local path of the same spelling always wins
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if config is not None:
        wanted = resolve_config(config)[0]       # a bad --config is refused before the file is read
    if pipeline.is_latent_pipeline(path):
        if config is not None:
            raise CheckpointError(f"{path}: a latent pipeline carries its own configs; leave config=None")
        loaded = pipeline.load_pipeline(path, map_location, dtype)
        if schedule is not None:
            loaded.schedule = schedule
        return loaded
    if diffusers_import.is_model_folder(path):
        loaded = diffusers_import.load_folder(path)
    else:
        loaded = _load_file(path, config, ema)
    if config is not None and loaded.format in _CARRY_CONFIG and wanted != loaded.config:
        raise CheckpointError(f"{path}: carries its own config {loaded.config}, which differs from the config "
                              f"passed, {wanted}; leave config=None (no --config) for this format")
    if schedule is not None:
        loaded.schedule = schedule
    loaded.model = loaded.model.to(map_location).eval()
    return loaded


def _load_file(path: Path, config: object, ema: bool) -> LoadedModel:
    """One file: ours (safetensors or ckpt-N.pt), else an official one (safetensors or torch)."""
    if is_safetensors(path):
        tensors, header = read_safetensors(path)
        if native.is_native(header):
            return native.from_safetensors(path, tensors, header)
        return official.from_state_dict(path, tensors, config, "official-ckpt", {})   # a bare state dict
    obj = torch_load(path)
    if native.is_train_ckpt(obj):
        return native.from_train_ckpt(path, obj, ema)
    return official.from_torch_object(path, obj, config, ema)
