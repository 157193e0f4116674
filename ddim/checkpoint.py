"""Load any U-Net checkpoint users arrive with, and save this package's own format.

`load(path)` detects the format:

- "ddim": this package's `.safetensors` file; weights, `UNetConfig`, schedule betas (float64) and metadata together.
- "official-ckpt": a released DDPM/DDIM state dict (`model-790000.ckpt`); it carries no config, so pass `config=`
  (a preset name, `UNetConfig`, dict, or the official YAML/JSON file) or let it be inferred from the presets.
- "official-train": the official trainer's `ckpt.pth` list [model, optimizer, epoch, step, ema]; EMA by default.
- "ddim-train-ckpt": this package's training checkpoint `ckpt-N.pt` (`ddim.train`); EMA by default, with the
  U-Net config, schedule and prediction it was trained with.
- "diffusers": a `UNet2DModel` folder (`config.json` + `diffusion_pytorch_model.safetensors` or `.bin`), or a
  pipeline folder with it in `unet/`, read without diffusers; only the DDPM-style options this architecture
  expresses are accepted (class-conditional `num_class_embeds` included).
- a Hugging Face Hub id (`google/ddpm-cifar10-32`, optionally `@revision`) that is not a local path: its snapshot
  is fetched or found in the cache (`ddim.hub`) and read as a diffusers folder.

Own files carry a sha256 of their tensors (header key "sha256"); `load` recomputes it and refuses a file whose
bytes changed since it was written (files written before the hash existed load without the check).
Torch files are read with `weights_only=True`: no pickled code ever runs. Any unreadable or mismatched file raises
`CheckpointError` naming the file (and, for mismatches, the first missing and unexpected keys).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ddim.errors import DDIMError
from ddim.hub import looks_like_hub_id, resolve_hub_id
from ddim.io import atomic_path, write_failed, write_json_atomic
from ddim.models.unet import PRESETS, UNet, UNetConfig
from ddim.sampling import PREDICTIONS
from ddim.schedule import NoiseSchedule

__all__ = ["CheckpointError", "LoadedModel", "load", "save", "export_diffusers", "export_pipeline", "FORMAT_VERSION"]

FORMAT = "ddim"
FORMAT_VERSION = 1
_BETAS_KEY = "__schedule__.betas"  # reserved tensor name: the schedule travels bit-exact in float64
_TRAIN_FORMAT = "ddim-train-ckpt"
_TRAIN_KEYS = ("step", "model", "ema", "unet", "schedule", "prediction")  # what ddim.train writes in ckpt-N.pt
_HASH_KEY = "sha256"  # header key of the content hash (files written before it existed have none)
_SHOW = 5  # how many missing/unexpected keys an error lists


class CheckpointError(DDIMError):
    """A checkpoint file could not be read or does not fit the model; the message names the file."""


@dataclass
class LoadedModel:
    """What `load` returns: a ready model (eval mode) and everything needed to sample from it."""

    model: UNet
    schedule: NoiseSchedule
    prediction: str
    config: UNetConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT


# --- saving -----------------------------------------------------------------------------------------------------

def save(path: str | os.PathLike, model: UNet, schedule: NoiseSchedule, *, prediction: str = "eps",
         metadata: dict | None = None) -> None:
    """Write `model` with its config, `schedule` and JSON-able `metadata` to one safetensors file, atomically."""
    from safetensors.torch import save_file

    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if not isinstance(model, UNet):
        raise TypeError(f"save() takes a ddim UNet, got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[_BETAS_KEY] = schedule.betas.to(torch.float64).contiguous()
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "schedule": json.dumps({"name": schedule.name, "T": schedule.T}),
        "prediction": prediction,
        "metadata": json.dumps(metadata or {}),  # raises TypeError early for non-JSON metadata
        _HASH_KEY: _content_hash(tensors),
    }
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def _content_hash(tensors: Mapping[str, Tensor]) -> str:
    """The hash `save` stores and `load` checks: sha256 (hex) over each tensor by sorted name: name, dtype, shape, bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the stored bytes, whatever the dtype (bf16 too)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Run write(tmp) and rename tmp over path; any failure (safetensors' SafetensorError on a full disk, too)
    is an UnwritableError saying the previous file is intact."""
    try:
        with atomic_path(path) as tmp:  # readers never see half a file
            write(str(tmp))
    except Exception as e:
        raise write_failed(path, e) from e


# --- loading ----------------------------------------------------------------------------------------------------

def load(path: str | os.PathLike, *, config: UNetConfig | str | dict | os.PathLike | None = None, ema: bool = True,
         map_location: str | torch.device = "cpu", schedule: NoiseSchedule | None = None) -> LoadedModel:
    """Load a checkpoint of any supported format (see module docstring) into a ready `UNet` in eval mode.

    config: needed only for official files, which carry none: a `PRESETS` name, a `UNetConfig`, a dict (UNetConfig
        fields or the official layout), or a path to the official YAML (`configs/cifar10.yml`) or JSON. Without it,
        the preset whose key names and shapes match the file is used. The official YAML's `diffusion` section also
        gives the schedule; otherwise the official default, linear 1e-4..0.02 with T = 1000.
    ema: for training checkpoints (official `ckpt.pth`, our `ckpt-N.pt`), take the EMA weights (True) or the raw
        ones (False); other formats hold one set of weights and ignore it.
    schedule: overrides the schedule found in (or assumed for) the file.
    Weights keep their stored dtype and go to `map_location`.
    """
    source = str(path)
    path = Path(path)
    if not path.exists() and looks_like_hub_id(source):
        path = resolve_hub_id(source)            # a local path of the same spelling always wins
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        loaded = _load_diffusers(path)
    elif path.name in _WEIGHT_FILES and (path.parent / "config.json").exists():
        loaded = _load_diffusers(path.parent)  # the weights file of a diffusers folder, named directly
    elif _is_safetensors(path):
        loaded = _load_safetensors(path, config)  # config is used only if the file has no ddim header
    else:
        loaded = _load_torch_file(path, config, ema)
    if config is not None and loaded.format in ("ddim", "diffusers", _TRAIN_FORMAT):
        wanted = _resolve_config(config)[0]
        if wanted != loaded.config:
            raise CheckpointError(f"{path}: carries its own config {loaded.config}, which differs from the config "
                                  f"passed, {wanted}; leave config=None for this format")
    if schedule is not None:
        loaded.schedule = schedule
    loaded.model = loaded.model.to(map_location).eval()
    return loaded


def _is_safetensors(path: Path) -> bool:
    # safetensors files start with an 8-byte little-endian header length followed by "{"; torch zips start with "PK".
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors.torch import load_file

    header = _read_safetensors_header(path)
    try:
        return load_file(str(path)), header
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True (no pickled code runs); every failure becomes a CheckpointError."""
    import pickle
    import zipfile

    try:
        # mmap avoids a second copy of large files; only the zip format (torch >= 1.6) supports it.
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain containers, and "
            f"checkpoints are only read with weights_only=True so no code inside them runs ({first})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?) "
                              f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
                              ) from None


def _load_safetensors(path: Path, config: Any) -> LoadedModel:
    tensors, header = _read_safetensors(path)
    if header.get("format") != FORMAT:
        # A bare state dict stored as safetensors: treat it like a released official file.
        return _from_state_dict(path, tensors, config, "official-ckpt", {})
    version = int(header.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer ddim (format version {version} > {FORMAT_VERSION})")
    if _HASH_KEY in header and _content_hash(tensors) != header[_HASH_KEY]:
        raise CheckpointError(f"{path}: the tensors do not match the content hash saved with them (sha256 "
                              f"{header[_HASH_KEY][:12]}...): the file is corrupt; restore it from a copy")
    try:
        stored = UNetConfig.from_dict(json.loads(header["config"]))
        sched_info = json.loads(header["schedule"])
        metadata = json.loads(header.get("metadata", "{}"))
        betas = tensors.pop(_BETAS_KEY)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged ddim header ({type(e).__name__}: {e})") from None
    model = _build(path, stored, tensors)
    schedule = NoiseSchedule(betas, name=sched_info.get("name", "custom"))
    return LoadedModel(model, schedule, header.get("prediction", "eps"), stored, metadata, FORMAT)


def _load_torch_file(path: Path, config: Any, ema: bool) -> LoadedModel:
    obj = _torch_load(path)
    if isinstance(obj, (list, tuple)):
        # Official trainer: [model.state_dict(), optimizer.state_dict(), epoch, step, ema_helper.state_dict()].
        if not obj or not isinstance(obj[0], Mapping):
            raise CheckpointError(f"{path}: a list whose first item is not a state dict; not an official ckpt.pth")
        if ema and (len(obj) < 5 or not isinstance(obj[4], Mapping)):
            raise CheckpointError(f"{path}: no EMA state at index 4 (trained with model.ema: false?); "
                                  "pass ema=False to load the raw weights")
        state = obj[4] if ema else obj[0]
        info = {"epoch": obj[2] if len(obj) > 2 else None, "step": obj[3] if len(obj) > 3 else None,
                "weights": "ema" if ema else "raw"}
        return _from_state_dict(path, state, config, "official-train", info)
    if isinstance(obj, Mapping) and all(k in obj for k in _TRAIN_KEYS):
        return _from_train_ckpt(path, obj, ema)
    if isinstance(obj, Mapping):
        # Some trainers wrap the weights; the released files are the bare dict.
        for wrapper in ("state_dict", "model", "ema"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping) and not isinstance(obj[wrapper], Tensor):
                obj = obj[wrapper]
                break
        return _from_state_dict(path, obj, config, "official-ckpt", {})
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or an official training list")


def _from_train_ckpt(path: Path, obj: Mapping, ema: bool) -> LoadedModel:
    """`ddim.train`'s ckpt-N.pt: the weights with the U-Net config, schedule and prediction saved beside them."""
    try:
        cfg = UNetConfig.from_dict(obj["unet"])
        schedule = NoiseSchedule.from_dict(obj["schedule"])
        prediction, step = obj["prediction"], int(obj["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged training checkpoint ({type(e).__name__}: {e})") from None
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"{path}: unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    if ema and obj["ema"] is None:
        raise CheckpointError(f"{path}: holds no EMA weights (trained with model.ema: false); pass ema=False to "
                              "load the raw weights")
    state = obj["ema"] if ema else obj["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: the {'ema' if ema else 'model'} entry is not a state dict")
    info = {"step": step, "weights": "ema" if ema else "raw", "train_config": obj.get("config")}
    return LoadedModel(_build(path, cfg, state), schedule, prediction, cfg, info, _TRAIN_FORMAT)


def _from_state_dict(path: Path, state: Mapping, config: Any, fmt: str, info: dict) -> LoadedModel:
    state = _strip_prefix(state, "module.")  # DataParallel, as the official trainer saves it
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:_SHOW]}")
    if config is None:
        cfg, official = _infer_preset(path, state), None
        info = {**info, "config_inferred": True}
    else:
        cfg, official = _resolve_config(config)
    model = _build(path, cfg, state)
    if official is not None:
        info = {**info, "official_config": official}  # var_type, ema_rate, ... for whoever needs them
    if official is not None and "diffusion" in official:
        d = official["diffusion"]
        sched = NoiseSchedule.from_name(d.get("beta_schedule", "linear"), int(d.get("num_diffusion_timesteps", 1000)),
                                        float(d.get("beta_start", 1e-4)), float(d.get("beta_end", 0.02)))
    else:
        sched = NoiseSchedule.linear()  # the official default (configs/*.yml all use it)
    return LoadedModel(model, sched, "eps", cfg, info, fmt)


def _strip_prefix(state: Mapping, prefix: str) -> dict:
    if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _resolve_config(config: Any) -> tuple[UNetConfig, dict | None]:
    """A config argument -> (UNetConfig, the official dict when one was given, for its diffusion section)."""
    if isinstance(config, UNetConfig):
        return config, None
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config], None
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        if not p.is_file():
            raise ValueError(f"config {str(config)!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        from ddim.readers import read_json, read_yaml
        # plain data only (no !!python tags), duplicate keys refused, binary files refused: one line each
        config = read_yaml(p) if p.suffix in (".yml", ".yaml") else read_json(p, expect=object)
        if not isinstance(config, Mapping):
            raise ValueError(f"config file {p} does not hold a mapping")
    if isinstance(config, Mapping):
        if "model" in config:
            return UNetConfig.from_official(config), dict(config)
        return UNetConfig.from_dict(config), None
    raise TypeError(f"config must be a UNetConfig, preset name, dict or path, got {type(config).__name__}")


def _infer_preset(path: Path, state: Mapping[str, Tensor]) -> UNetConfig:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for cfg in PRESETS.values():
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
        if expected == shapes:
            return cfg
    raise CheckpointError(f"{path}: official checkpoints carry no model config and this one matches no preset "
                          f"({', '.join(PRESETS)}); give its architecture: --config on the command line, config= in Python "
                          "(a preset name or the official YAML)")


def _build(path: Path, cfg: UNetConfig, state: Mapping[str, Tensor], rename: Mapping[str, str] | None = None) -> UNet:
    """UNet(cfg) holding `state`; keys/shapes are checked first so a mismatch is reported in the file's own names."""
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


# --- diffusers UNet2DModel --------------------------------------------------------------------------------------

# UNet2DModel's constructor defaults: a config.json only lists what differed when it was written, and old ones
# (google/ddpm-*) predate some options.
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
}
# The options that make a UNet2DModel Ho et al.'s network (as in google/ddpm-cifar10-32).
_DIFFUSERS_REQUIRED: dict[str, tuple] = {
    "center_input_sample": (False,), "time_embedding_type": ("positional",), "freq_shift": (1,),
    "flip_sin_to_cos": (False,), "mid_block_type": ("UNetMidBlock2D",), "mid_block_scale_factor": (1,),
    "downsample_padding": (0,), "downsample_type": ("conv",), "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"), "norm_num_groups": (32,), "attn_norm_num_groups": (None, 32), "norm_eps": (1e-6,),
    "resnet_time_scale_shift": ("default",), "add_attention": (True,), "class_embed_type": (None,),
}
# The key our exports add to config.json (diffusers ignores keys it does not know): the last of the
# num_class_embeds labels is the learned null label of classifier-free guidance.
_NULL_CLASS_KEY = "ddim_null_class"
_WHY = {
    "freq_shift": "the time embedding's frequencies", "flip_sin_to_cos": "the time embedding's [sin, cos] order",
    "downsample_padding": "the downsampling padding (right/bottom only)", "norm_eps": "GroupNorm eps",
    "resnet_time_scale_shift": "time conditioning by addition", "num_class_embeds": "class conditioning",
    "class_embed_type": "class conditioning", "center_input_sample": "inputs used as given",
}
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def config_from_diffusers(dconf: Mapping[str, Any], source: str = "config.json") -> UNetConfig:
    """The UNetConfig equal to a diffusers UNet2DModel config; CheckpointError naming any option it cannot express."""
    cls = dconf.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise CheckpointError(f"{source}: _class_name {cls!r} is not supported; only UNet2DModel")
    c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in dconf.items() if not k.startswith("_")}}
    for key, allowed in _DIFFUSERS_REQUIRED.items():
        if c[key] not in allowed:
            why = f" (this architecture fixes {_WHY[key]})" if key in _WHY else ""
            raise CheckpointError(f"{source}: unsupported option {key}={c[key]!r}; supported: "
                                  f"{' or '.join(repr(a) for a in allowed)}{why}")
    widths = [int(w) for w in c["block_out_channels"]]
    ch = widths[0]
    if any(w % ch for w in widths):
        raise CheckpointError(f"{source}: unsupported option block_out_channels={widths}: each must be a multiple "
                              "of the first")
    if c["time_embedding_dim"] not in (None, 4 * ch):
        raise CheckpointError(f"{source}: unsupported option time_embedding_dim={c['time_embedding_dim']!r}; "
                              f"supported: None or 4 * block_out_channels[0] = {4 * ch}")
    if not isinstance(c["layers_per_block"], int):
        raise CheckpointError(f"{source}: unsupported option layers_per_block={c['layers_per_block']!r}; "
                              "supported: one int for all levels")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    n = len(widths)
    if len(down) != n or len(up) != n:
        raise CheckpointError(f"{source}: down_block_types, up_block_types and block_out_channels differ in length")
    attn_down = []
    for kind, allowed in ((down, ("DownBlock2D", "AttnDownBlock2D")), (up, ("UpBlock2D", "AttnUpBlock2D"))):
        for b in kind:
            if b not in allowed:
                raise CheckpointError(f"{source}: unsupported block type {b!r}; supported: {', '.join(allowed)}")
    for i in range(n):
        has_down, has_up = down[i].startswith("Attn"), up[n - 1 - i].startswith("Attn")
        if has_down != has_up:
            raise CheckpointError(f"{source}: unsupported option: attention in down_block_types[{i}] and "
                                  f"up_block_types[{n - 1 - i}] differ; this architecture has it at both or neither")
        attn_down.append(has_down)
    head = c["attention_head_dim"]
    for i, w in [(i, widths[i]) for i in range(n) if attn_down[i]] + [(n, widths[-1])]:
        if head is not None and head != w:
            raise CheckpointError(f"{source}: unsupported option attention_head_dim={head!r}: gives "
                                  f"{w // head} heads at width {w}; this architecture uses one head "
                                  "(attention_head_dim null or equal to the width)")
    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        size = size[0]  # attention placement depends on the level only; H and W stay free at run time
    factor = 2 ** (n - 1)
    size = int(size) if size is not None else max(32, factor)
    labels = c["num_class_embeds"]
    if labels is not None and (isinstance(labels, bool) or not isinstance(labels, int) or labels < 1):
        raise CheckpointError(f"{source}: unsupported option num_class_embeds={labels!r}; supported: null or an "
                              "integer >= 1")
    null = bool(c.get(_NULL_CLASS_KEY, False)) if labels is not None else UNetConfig.null_class
    try:
        return UNetConfig(
            image_size=size, in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]), ch=ch,
            ch_mult=tuple(w // ch for w in widths), num_res_blocks=c["layers_per_block"],
            attn_resolutions=tuple(size // 2**i for i in range(n) if attn_down[i]), dropout=float(c["dropout"]),
            resamp_with_conv=True, num_classes=0 if labels is None else labels - int(null), null_class=null,
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def diffusers_key_map(cfg: UNetConfig) -> dict[str, str]:
    """Our state-dict key -> UNet2DModel's. Its up blocks run in forward order (ours: by resolution)."""
    n = len(cfg.ch_mult)
    with torch.device("meta"):
        keys = list(UNet(cfg).state_dict())
    resnet = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

    def sub(rest: str, table: dict[str, str]) -> str:
        head, _, tail = rest.partition(".")
        return f"{table.get(head, head)}.{tail}"

    out = {}
    for k in keys:
        if k.startswith("label_emb."):
            new = "class_embedding." + k[len("label_emb."):]
        elif k.startswith("temb.dense."):
            new = re.sub(r"^temb\.dense\.(\d)", lambda m: f"time_embedding.linear_{int(m[1]) + 1}", k)
        elif k.startswith(("conv_in.", "conv_out.")):
            new = k
        elif k.startswith("norm_out."):
            new = "conv_norm_out." + k[len("norm_out."):]
        elif m := re.match(r"^mid\.(block|attn)_(\d)\.(.*)$", k):
            kind, j, rest = m[1], int(m[2]), m[3]
            new = (f"mid_block.resnets.{j - 1}.{sub(rest, resnet)}" if kind == "block"
                   else f"mid_block.attentions.{j - 1}.{sub(rest, attn)}")
        elif m := re.match(r"^(down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.*)$", k):
            side, i, kind, rest = m[1], int(m[2]), m[3], m[4]
            prefix = f"down_blocks.{i}" if side == "down" else f"up_blocks.{n - 1 - i}"
            if kind in ("block", "attn"):
                j, _, rest = rest.partition(".")
                new = (f"{prefix}.resnets.{j}.{sub(rest, resnet)}" if kind == "block"
                       else f"{prefix}.attentions.{j}.{sub(rest, attn)}")
            else:
                new = f"{prefix}.{kind}rs.0.{rest}"
        else:  # pragma: no cover - every UNet key is handled above
            raise AssertionError(k)
        out[k] = new
    return out


# Attention names of diffusers < 0.15 (the google/ddpm-* uploads); diffusers renames them on load, and so do we.
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _load_diffusers(folder: Path) -> LoadedModel:
    if not (folder / "config.json").exists() and (folder / "unet" / "config.json").exists():
        folder = folder / "unet"  # a pipeline folder: the model lives in unet/
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{folder}: a folder without config.json is not a diffusers model folder")
    try:
        dconf = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable JSON ({e})") from None
    cfg = config_from_diffusers(dconf, str(cfg_path))
    weights = next((folder / w for w in _WEIGHT_FILES if (folder / w).exists()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no {' or '.join(_WEIGHT_FILES)} beside config.json")
    if weights.suffix == ".safetensors":
        state, _ = _read_safetensors(weights)
    else:
        state = _torch_load(weights)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{weights}: holds a {type(state).__name__}, not a state dict")
    state = {re.sub(r"\.attentions\.(\d+)\.(query|key|value|proj_attn)\.",
                    lambda m: f".attentions.{m[1]}.{_LEGACY_ATTN[m[2]]}.", k): v for k, v in state.items()}
    model = _build(weights, cfg, state, rename=diffusers_key_map(cfg))
    schedule, prediction = _diffusers_schedule(folder)
    meta = {"diffusers_config": {k: v for k, v in dconf.items() if not k.startswith("_")}}
    return LoadedModel(model, schedule, prediction, cfg, meta, "diffusers")


def _diffusers_schedule(folder: Path) -> tuple[NoiseSchedule, str]:
    """Schedule and prediction from a scheduler_config.json beside the model or in ../scheduler/; else DDPM's."""
    for p in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json",
              folder.parent / "scheduler_config.json"):
        if p.exists():
            try:
                s = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{p}: unreadable JSON ({e})") from None
            break
    else:
        return NoiseSchedule.linear(1000, 1e-4, 0.02), "eps"
    preds = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
    prediction = s.get("prediction_type", "epsilon")
    if prediction not in preds:
        raise CheckpointError(f"{p}: unsupported prediction_type {prediction!r}; supported: {', '.join(preds)}")
    T = int(s.get("num_train_timesteps", 1000))
    if s.get("trained_betas") is not None:
        return NoiseSchedule(torch.tensor(s["trained_betas"], dtype=torch.float64)), preds[prediction]
    names = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine"}
    name = s.get("beta_schedule", "linear")
    if name not in names:
        raise CheckpointError(f"{p}: unsupported beta_schedule {name!r}; supported: {', '.join(names)}")
    sched = NoiseSchedule.from_name(names[name], T, float(s.get("beta_start", 1e-4)), float(s.get("beta_end", 0.02)))
    return sched, preds[prediction]


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
        raise ValueError(f"UNet2DModel cannot express ch_mult[0]={cfg.ch_mult[0]} != 1 (its first level keeps the "
                         "stem width)")
    if not cfg.resamp_with_conv:
        raise ValueError("UNet2DModel cannot express resamp_with_conv=False (it always resamples with a conv)")
    n = len(cfg.ch_mult)
    attn = [cfg.image_size // 2**i in cfg.attn_resolutions for i in range(n)]
    dconf = {
        "_class_name": "UNet2DModel",  # no _diffusers_version: diffusers does not need one, and none wrote this
        **{k: v for k, v in _DIFFUSERS_DEFAULTS.items()},
        **{k: v[0] for k, v in _DIFFUSERS_REQUIRED.items()},
        "act_fn": "silu", "sample_size": cfg.image_size, "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels, "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks, "dropout": cfg.dropout, "attention_head_dim": None,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "num_class_embeds": cfg.num_classes + int(cfg.null_class) if cfg.num_classes else None,
    }
    if cfg.num_classes and cfg.null_class:
        dconf[_NULL_CLASS_KEY] = True       # label num_classes is the null label (our -1)
    key_map = diffusers_key_map(cfg)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if ".attn" in k and v.ndim == 4:  # 1x1 conv [C, C, 1, 1] -> linear [C, C]
            v = v.reshape(v.shape[0], v.shape[1])
        tensors[key_map[k]] = v.contiguous()
    folder = Path(folder)
    # The weights first: the large write is the one a full disk stops, and then no file of the folder changed.
    _atomic_write(folder / _WEIGHT_FILES[0], lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _write_json(folder / "config.json", dconf)
    if schedule is not None:
        _write_json(folder / "scheduler_config.json", _scheduler_config(schedule, prediction))


def export_pipeline(loaded: LoadedModel, folder: str | os.PathLike) -> Path:
    """Write a complete diffusers `DDIMPipeline` folder: model_index.json, unet/ and scheduler/ (our schedule and
    prediction as a DDIMScheduler with set_alpha_to_one=True, steps_offset=0: the paper's sampler), so that
    `DDIMPipeline.from_pretrained(folder)` gives our samples from the same x_T. No diffusers needed to write it."""
    folder = Path(folder)
    export_diffusers(loaded.model, folder / "unet")
    _write_json(folder / "scheduler" / "scheduler_config.json", _scheduler_config(loaded.schedule, loaded.prediction))
    _write_json(folder / "model_index.json", {"_class_name": "DDIMPipeline", "_diffusers_version": "0.20.0",
                                              "scheduler": ["diffusers", "DDIMScheduler"],
                                              "unet": ["diffusers", "UNet2DModel"]})
    return folder


def _write_json(path: Path, obj: Any) -> None:
    try:
        write_json_atomic(path, obj)
    except Exception as e:  # the objects are plain JSON, so any failure is the disk's
        raise write_failed(path, e) from e


def _scheduler_config(schedule: NoiseSchedule, prediction: str) -> dict[str, Any]:
    """A DDIMScheduler config: a named schedule when `schedule` is one exactly, else the betas themselves."""
    b = schedule.betas
    conf = {"_class_name": "DDIMScheduler", "num_train_timesteps": schedule.T,
            "prediction_type": {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[prediction],
            "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0}
    names = {"linear": "linear", "quad": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    if schedule.name in names:
        start, end = b[0].item(), b[-1].item()
        rebuilt = NoiseSchedule.from_name(schedule.name, schedule.T, start, end)
        if torch.allclose(rebuilt.betas, b, rtol=1e-12, atol=0):
            return {**conf, "beta_schedule": names[schedule.name], "beta_start": start, "beta_end": end,
                    "trained_betas": None}
    return {**conf, "beta_schedule": "linear", "trained_betas": b.tolist()}
