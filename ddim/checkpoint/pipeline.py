"""A diffusers latent pipeline folder (model_index.json, unet/, vae/, scheduler/, text_encoder/, tokenizer/), e.g.
a Stable Diffusion snapshot, loaded as its parts: the U-Net object as it is, the VAE's latent space, the prompt
encoder, and the scheduler read as this package's schedule, prediction and walk options.

Needs the optional diffusers and transformers (`pip install 'ddim[latent]'`), imported only here, only when such
a folder is loaded. A folder whose unet/ is a UNet2DModel without vae/ is a pixel pipeline, read by
`diffusers_import` without diffusers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddim.checkpoint.base import CheckpointError
from ddim.checkpoint.scheduler import SchedulerSettings, read_scheduler
from ddim.errors import MissingDependencyError
from ddim.models.latent import LatentSpace, PromptEncoder
from ddim.schedule import NoiseSchedule

__all__ = ["LoadedPipeline", "is_latent_pipeline", "load_pipeline", "DTYPES"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedPipeline:
    """What `load` returns for a latent pipeline folder. `model` is the diffusers U-Net object (DDIMSampler takes it
    as it is), `latent` its VAE's latent space, `prompts` the prompt encoder (None without text_encoder/)."""

    model: Any
    schedule: NoiseSchedule
    prediction: str
    latent: LatentSpace
    prompts: PromptEncoder | None
    scheduler: SchedulerSettings
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "diffusers-pipeline"
    config: None = None             # no UNetConfig: the U-Net is diffusers' own

    def encode_prompt(self, prompt: str | list[str]) -> torch.Tensor:
        """Embeddings of prompt(s) by the pipeline's tokenizer and text encoder."""
        if self.prompts is None:
            raise CheckpointError("prompt: this pipeline has no text_encoder/ and tokenizer/ to encode prompts")
        return self.prompts(prompt)


def _index(folder: Path) -> dict[str, Any] | None:
    path = folder / "model_index.json"
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(index, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(index).__name__}, not a pipeline index")
    return index


def is_latent_pipeline(path: Path) -> bool:
    """A pipeline folder whose index names a VAE (or a UNet2DConditionModel): latent diffusion."""
    index = _index(path) if path.is_dir() else None
    if index is None:
        return False
    unet = index.get("unet")
    return "vae" in index or (isinstance(unet, list) and unet[-1:] == ["UNet2DConditionModel"])


def _libraries() -> tuple[Any, Any]:
    try:
        import diffusers
        import transformers
    except ImportError as e:
        raise MissingDependencyError(f"a latent diffusion pipeline needs diffusers and transformers ({e.name} is "
                                     "missing): pip install 'ddim[latent]'") from e
    return diffusers, transformers


def load_pipeline(folder: Path, map_location: str | torch.device = "cpu", dtype: str = "float32") -> LoadedPipeline:
    """The parts of a latent pipeline folder, weights in `dtype` on `map_location`, in eval mode."""
    index = _index(folder)
    if index is None:
        raise CheckpointError(f"{folder}: no model_index.json; a diffusers pipeline folder has one beside unet/, "
                              "vae/ and scheduler/")
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {tuple(DTYPES)} for a latent pipeline (float64 is for ddim's "
                              f"own pixel models), got {dtype!r}")
    for part in ("unet", "vae", "scheduler"):
        if not (folder / part).is_dir():
            raise CheckpointError(f"{folder}: no {part}/ folder; a latent pipeline needs unet/, vae/ and scheduler/")
    diffusers, transformers = _libraries()
    torch_dtype = DTYPES[dtype]

    def component(part: str, library: Any) -> Any:
        entry = index.get(part)
        cls_name = entry[-1] if isinstance(entry, list) and entry else None
        cls = getattr(library, cls_name, None) if isinstance(cls_name, str) else None
        if cls is None:
            raise CheckpointError(f"{folder / 'model_index.json'}: {part} is {entry!r}, not a class of "
                                  f"{library.__name__}")
        try:
            kw = {} if part in ("scheduler", "tokenizer") else {"torch_dtype": torch_dtype}
            return cls.from_pretrained(folder / part, **kw)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder / part}: could not be loaded as {cls_name} ({str(e).splitlines()[0]})") \
                from None

    unet = component("unet", diffusers).to(map_location).eval()
    vae = component("vae", diffusers).to(map_location).eval()
    scheduler = component("scheduler", diffusers)
    prompts = None
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        text_encoder = component("text_encoder", transformers).to(map_location).eval()
        prompts = PromptEncoder(component("tokenizer", transformers), text_encoder)
    settings = read_scheduler(scheduler, source=str(folder / "scheduler"))
    meta = {"pipeline": index.get("_class_name"), "scheduler_object": scheduler}
    return LoadedPipeline(unet, settings.schedule, settings.prediction, LatentSpace(vae), prompts, settings, meta)
