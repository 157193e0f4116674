"""Writing a model as diffusers files, no diffusers needed: a `UNet2DModel` folder (config.json +
diffusion_pytorch_model.safetensors, with a DDIMScheduler config beside it), or a complete `DDIMPipeline` folder.

A class-conditional model is a UNet2DModel with num_class_embeds = classes + 1: the last label is the learned
null label of classifier-free guidance (our -1), marked in the weights file's metadata for `load`. DDIMPipeline
itself calls the network without labels, so such a model is run with its unet and scheduler and `class_labels`
(README, "Use a pretrained model"; `CLASS_CONDITIONAL_HINT`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ddim.checkpoint.base import LoadedModel, write_atomic, write_json
from ddim.checkpoint.diffusers_layout import (DEFAULTS, NULL_CLASS_KEY, PREDICTION_NAMES, REQUIRED, SCHEDULE_NAMES,
                                              WEIGHT_FILES, diffusers_key_map)
from ddim.errors import DDIMError
from ddim.models.unet import UNet
from ddim.schedule import NoiseSchedule

__all__ = ["export_diffusers", "export_pipeline", "CLASS_CONDITIONAL_HINT"]

CLASS_CONDITIONAL_HINT = ("a class-conditional model: DDIMPipeline's own call takes no labels; run its unet with "
                          "class_labels (0..num_class_embeds-2; num_class_embeds-1 is the null label for guidance) "
                          "and its scheduler, as the README's 'Class-conditional models in diffusers' shows")


def export_diffusers(loaded_or_model: LoadedModel | UNet, folder: str | os.PathLike,
                     schedule: NoiseSchedule | None = None) -> None:
    """Write a diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors), no diffusers needed.

    With a schedule (given, or the LoadedModel's), a DDIMScheduler `scheduler_config.json` is written beside them.
    """
    from safetensors.torch import save_file

    if isinstance(loaded_or_model, LoadedModel):
        model, prediction = loaded_or_model.model, loaded_or_model.prediction
        schedule = schedule if schedule is not None else loaded_or_model.schedule
    else:
        model, prediction = loaded_or_model, "eps"
    cfg = model.config
    if cfg.ch_mult[0] != 1:
        raise DDIMError(f"export: UNet2DModel cannot express the model's ch_mult[0]={cfg.ch_mult[0]} != 1 (its first "
                        "level keeps the stem width)")
    if not cfg.resamp_with_conv:
        raise DDIMError("export: UNet2DModel cannot express the model's resamp_with_conv=False (it always "
                        "resamples with a conv)")
    n = len(cfg.ch_mult)
    attn = [cfg.image_size // 2**i in cfg.attn_resolutions for i in range(n)]
    dconf = {
        "_class_name": "UNet2DModel",  # no _diffusers_version: diffusers does not need one, and none wrote this
        **dict(DEFAULTS),
        **{k: v[0] for k, v in REQUIRED.items()},
        "act_fn": "silu", "sample_size": cfg.image_size, "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels, "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks, "dropout": cfg.dropout, "attention_head_dim": None,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "num_class_embeds": cfg.num_classes + int(cfg.null_class) if cfg.num_classes else None,
    }
    meta = {"format": "pt"}
    if cfg.num_classes and cfg.null_class:
        meta[NULL_CLASS_KEY] = "true"       # label num_classes is the null label (our -1)
    key_map = diffusers_key_map(cfg)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if ".attn" in k and v.ndim == 4:  # 1x1 conv [C, C, 1, 1] -> linear [C, C]
            v = v.reshape(v.shape[0], v.shape[1])
        tensors[key_map[k]] = v.contiguous()
    folder = Path(folder)
    # The weights first: the large write is the one a full disk stops, and then no file of the folder changed.
    write_atomic(folder / WEIGHT_FILES[0], lambda tmp: save_file(tensors, tmp, metadata=meta))
    write_json(folder / "config.json", dconf)
    if schedule is not None:
        write_json(folder / "scheduler_config.json", scheduler_config(schedule, prediction))


def export_pipeline(loaded: LoadedModel, folder: str | os.PathLike) -> Path:
    """Write a complete diffusers `DDIMPipeline` folder: model_index.json, unet/ and scheduler/ (our schedule and
    prediction as a DDIMScheduler with set_alpha_to_one=True, steps_offset=0: the paper's sampler), so that
    `DDIMPipeline.from_pretrained(folder)` gives our samples from the same x_T (a class-conditional model: see
    `CLASS_CONDITIONAL_HINT`). No diffusers needed to write it."""
    folder = Path(folder)
    export_diffusers(loaded.model, folder / "unet")
    write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config(loaded.schedule, loaded.prediction))
    write_json(folder / "model_index.json", {"_class_name": "DDIMPipeline", "_diffusers_version": "0.20.0",
                                             "scheduler": ["diffusers", "DDIMScheduler"],
                                             "unet": ["diffusers", "UNet2DModel"]})
    return folder


def scheduler_config(schedule: NoiseSchedule, prediction: str) -> dict[str, Any]:
    """A DDIMScheduler config: a named schedule when `schedule` is one exactly, else the betas themselves."""
    b = schedule.betas
    conf = {"_class_name": "DDIMScheduler", "num_train_timesteps": schedule.T,
            "prediction_type": PREDICTION_NAMES[prediction],
            "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0}
    if schedule.name in SCHEDULE_NAMES:
        start, end = b[0].item(), b[-1].item()
        rebuilt = NoiseSchedule.from_name(schedule.name, schedule.T, start, end)
        if torch.allclose(rebuilt.betas, b, rtol=1e-12, atol=0):
            return {**conf, "beta_schedule": SCHEDULE_NAMES[schedule.name], "beta_start": start, "beta_end": end,
                    "trained_betas": None}
    return {**conf, "beta_schedule": "linear", "trained_betas": b.tolist()}
