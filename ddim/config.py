"""Training configuration: dataclasses laid out like the official release's YAML (data / model / diffusion /
training / optim), so its `configs/cifar10.yml` reads as-is, plus a few fields of our own in each section.

Precedence: dataclass defaults < YAML file (`--config`) < command-line flags. The model architecture itself is
`ddim.models.UNetConfig`; `ModelConfig` here names a preset and optional per-field overrides of it.

Every value is checked against its field's annotation when a config is read (`config_from_dict`, `load_yaml`)
and again by `TrainConfig.validate()`, which also checks ranges: a bad value is a `DDIMError` naming the key
(`training.n_iters`) before any data set is built or file written, not a TypeError deep inside a run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ddim.data import dataset_name
from ddim.distributed import resolve_device
from ddim.errors import DDIMError, MissingDependencyError, MissingFileError
from ddim.models.deepcache import check_interval
from ddim.predictions import PREDICTIONS
from ddim.sampling.options import DEFAULTS as WALK
from ddim.sampling.options import WalkOptions
from ddim.sampling.registry import SOLVERS
from ddim.schedule import NoiseSchedule

__all__ = [
    "DataConfig", "ModelConfig", "DiffusionConfig", "TrainingConfig", "OptimConfig", "TrainConfig",
    "load_yaml", "config_from_dict", "config_path", "PACKAGED_CONFIGS", "SECTIONS", "TOP_KEYS", "SampleConfig",
    "check_int", "check_steps", "DTYPES",
]


@dataclass
class DataConfig:
    dataset: str = "digits"           # digits | cifar10 | celeba | folder | npz | idx (official names accepted)
    root: str | None = None           # folder or file the dataset reads (not needed for digits)
    image_size: int = 16
    channels: int = 1
    random_flip: bool = False         # horizontal flip with p = 0.5 (official: true for CIFAR-10 / CelebA)
    resize: bool = True               # image folders: resize + centre crop (False: sizes must already match)
    key: str | None = None            # npz: which array
    num_workers: int = 0              # DataLoader workers for file-backed datasets


@dataclass
class ModelConfig:
    preset: str | None = "digits"     # a key of ddim.models.PRESETS; the fields below override it when set
    in_channels: int | None = None
    out_ch: int | None = None
    ch: int | None = None
    ch_mult: list[int] | None = None
    num_res_blocks: int | None = None
    attn_resolutions: list[int] | None = None
    dropout: float | None = None
    resamp_with_conv: bool | None = None
    num_classes: int | None = None    # class-conditional on the data set's labels (None or 0: unconditional)
    ema: bool = True
    ema_rate: float = 0.9999
    ema_warmup: bool = False          # decay_k = min(ema_rate, (1 + k) / (10 + k)) for short runs


@dataclass
class DiffusionConfig:
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000
    prediction: str = "eps"           # the network's target: eps | x0 | v
    loss_reduction: str = "mean"      # over pixels: mean, or sum as the official code does
    antithetic: bool = False          # the official pairing t, T - 1 - t within a batch
    zero_terminal_snr: bool = False   # rescale the betas to alpha_T = 0 (Lin et al. 2024); needs v or x0


@dataclass
class TrainingConfig:
    batch_size: int = 128             # global batch: split across processes and accumulation steps
    n_iters: int = 5000               # optimizer steps
    snapshot_freq: int = 5000         # checkpoint every N steps (and at the end)
    keep_last: int = 3                # training checkpoints to keep
    grad_accum: int = 1
    precision: str = "fp32"           # fp32 | bf16 | fp16 (fp16 uses a grad scaler)
    seed: int = 0
    log_freq: int = 50                # metrics.jsonl line every N steps
    sample_freq: int = 1000           # EMA sample grid every N steps (0: only at the end)
    sample_steps: int = 50            # DDIM steps for the grids
    n_samples: int = 64               # images per grid (fixed x_T)
    p_uncond: float = 0.1             # conditional models: share of labels dropped to the null label (CFG)
    tensorboard: bool = False         # also log scalars and grids to RUN_DIR/tensorboard (needs tensorboard)


@dataclass
class OptimConfig:
    optimizer: str = "Adam"           # Adam | AdamW
    lr: float = 0.0002
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    grad_clip: float = 1.0            # max global grad norm (0: no clipping, norm still logged)
    warmup: int = 0                   # linear LR warmup steps
    lr_schedule: str = "constant"     # after warm-up: constant | cosine (decays to min_lr at n_iters)
    min_lr: float = 0.0               # the cosine schedule's final learning rate


MAX_GRID_SAMPLES = 4096     # training.n_samples: x_T for the grids is held for the whole run


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out_dir: str = "runs/ddim"
    resume: bool = False
    overwrite: bool = False
    device: str | None = None         # None: cuda if available (LOCAL_RANK picks the GPU), else cpu

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "TrainConfig":
        """Raise DDIMError naming the key for a value of the wrong type or a setting that cannot work."""
        _check_types(self)
        t, o, d, m, data = self.training, self.optim, self.diffusion, self.model, self.data
        for key, value in _float_fields(self):
            if value is not None and not math.isfinite(value):
                raise DDIMError(f"{key} must be a finite number, got {value}")
        checks = [
            (t.batch_size >= 1, f"training.batch_size must be >= 1, got {t.batch_size}"),
            (0.0 <= t.p_uncond < 1.0, f"training.p_uncond must lie in [0, 1), got {t.p_uncond}"),
            (m.num_classes is None or m.num_classes >= 0, f"model.num_classes must be >= 0, got {m.num_classes}"),
            (t.n_iters >= 1, f"training.n_iters must be >= 1, got {t.n_iters}"),
            (t.grad_accum >= 1, f"training.grad_accum must be >= 1, got {t.grad_accum}"),
            (t.snapshot_freq >= 1, f"training.snapshot_freq must be >= 1, got {t.snapshot_freq}"),
            (t.keep_last >= 1, f"training.keep_last must be >= 1, got {t.keep_last}"),
            (t.log_freq >= 1, f"training.log_freq must be >= 1, got {t.log_freq}"),
            (t.sample_freq >= 0, f"training.sample_freq must be >= 0, got {t.sample_freq}"),
            (t.n_samples >= 1, f"training.n_samples must be >= 1, got {t.n_samples}"),
            (t.n_samples <= MAX_GRID_SAMPLES, f"training.n_samples must be at most {MAX_GRID_SAMPLES} (the images "
             f"of each sample grid), got {t.n_samples}"),
            (d.num_diffusion_timesteps >= 1,
             f"diffusion.num_diffusion_timesteps must be >= 1, got {d.num_diffusion_timesteps}"),
            (1 <= t.sample_steps <= d.num_diffusion_timesteps, f"training.sample_steps must lie in [1, "
             f"diffusion.num_diffusion_timesteps = {d.num_diffusion_timesteps}], got {t.sample_steps}"),
            (0 <= t.seed < 2**32, f"training.seed must lie in [0, 2**32), got {t.seed}"),
            (t.precision in ("fp32", "bf16", "fp16"), f"training.precision must be fp32, bf16 or fp16, got {t.precision!r}"),
            (o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
            (0.0 <= o.beta1 < 1.0, f"optim.beta1 must lie in [0, 1), got {o.beta1}"),
            (0.0 <= o.beta2 < 1.0, f"optim.beta2 must lie in [0, 1), got {o.beta2}"),
            (o.eps >= 0, f"optim.eps must be >= 0, got {o.eps}"),
            (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
            (o.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {o.grad_clip}"),
            (o.warmup >= 0, f"optim.warmup must be >= 0, got {o.warmup}"),
            (o.lr_schedule in ("constant", "cosine"),
             f"optim.lr_schedule must be constant or cosine, got {o.lr_schedule!r}"),
            (0.0 <= o.min_lr <= o.lr, f"optim.min_lr must lie in [0, optim.lr = {o.lr}], got {o.min_lr}"),
            (o.optimizer.lower() in ("adam", "adamw"), f"optim.optimizer must be Adam or AdamW, got {o.optimizer!r}"),
            (0.0 <= m.ema_rate < 1.0, f"model.ema_rate must lie in [0, 1), got {m.ema_rate}"),
            (m.dropout is None or 0.0 <= m.dropout < 1.0, f"model.dropout must lie in [0, 1), got {m.dropout}"),
            (d.prediction in PREDICTIONS, f"diffusion.prediction must be one of {', '.join(PREDICTIONS)}, got {d.prediction!r}"),
            (d.loss_reduction in ("mean", "sum"), f"diffusion.loss_reduction must be mean or sum, got {d.loss_reduction!r}"),
            (data.channels in (1, 3), f"data.channels must be 1 or 3, got {data.channels}"),
            (data.image_size >= 1, f"data.image_size must be >= 1, got {data.image_size}"),
            (data.num_workers >= 0, f"data.num_workers must be >= 0, got {data.num_workers}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DDIMError(msg)
        _check_dataset(data)
        _check_schedule(d)
        _check_device(self.device)
        if t.tensorboard:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError as e:
                raise MissingDependencyError("training.tensorboard needs the tensorboard package: pip install "
                                             "'ddim[tensorboard]'") from e
        return self


def _check_dataset(data: DataConfig) -> None:
    name = dataset_name(data.dataset)
    if name != "digits" and not data.root:
        raise DDIMError(f"data.root is required for dataset {data.dataset!r} (the file or folder it reads)")
    if name != "digits" and not Path(data.root).exists():
        raise MissingFileError(f"data.root {str(data.root)!r} does not exist (--data-root)")


def _check_schedule(d: DiffusionConfig) -> None:
    if d.zero_terminal_snr and d.prediction == "eps":
        raise DDIMError("diffusion.zero_terminal_snr needs diffusion.prediction v or x0 (an eps network cannot "
                        "give x0 at alpha_T = 0)")
    try:
        NoiseSchedule.from_name(d.beta_schedule, d.num_diffusion_timesteps, d.beta_start, d.beta_end)
    except ValueError as e:
        raise DDIMError(f"diffusion: {e} (diffusion.beta_schedule, beta_start, beta_end)") from None


def _check_device(device: str | None) -> None:
    if device is not None:
        resolve_device(device)


# --- types -------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the annotations are strings (__future__.annotations); evaluate them


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def _show(value: Any) -> str:
    """A value as the YAML file spelled it, with its Python type: true (bool), '64' (str), null."""
    if value is None:
        return "null"
    shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return f"{shown} ({type(value).__name__})"


def _typed(value: Any, hint: Any, key: str) -> Any:
    """`value` checked against the field annotation `hint`; DDIMError naming `key` if it does not fit.

    bool takes only true/false; int only integers (not bools); float integers, floats and numeric strings (PyYAML
    reads 1e-3, without a dot, as a string); `X | None` also null; list[int] a list of integers."""
    out = _convert(value, hint)
    if out is _WRONG:
        raise DDIMError(f"{key} must be {_describe(hint)}, got {_show(value)}")
    return out


_WRONG = object()


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None) and (out := _convert(value, a)) is not _WRONG:
                return out
        return _WRONG
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        items = [_convert(v, args[0]) for v in value]
        return _WRONG if any(v is _WRONG for v in items) else items
    if isinstance(value, bool) or hint is bool:
        return value if hint is bool and isinstance(value, bool) else _WRONG
    if hint is int:
        return int(value) if isinstance(value, numbers.Integral) else _WRONG
    if hint is float:
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _WRONG
        return _WRONG
    if hint is str:
        return value if isinstance(value, str) else _WRONG
    raise TypeError(f"no type check for annotation {hint!r}")  # pragma: no cover - a new field type


def _check_types(cfg: "TrainConfig") -> None:
    """Type-check (and normalise, e.g. "1e-3" -> 0.001) every field of a TrainConfig in place."""
    top = _field_types(TrainConfig)
    for name in TOP_KEYS:
        setattr(cfg, name, _typed(getattr(cfg, name), top[name], name))
    for sec_name in SECTIONS:
        section = getattr(cfg, sec_name)
        hints = _field_types(type(section))
        for f in fields(section):
            setattr(section, f.name, _typed(getattr(section, f.name), hints[f.name], f"{sec_name}.{f.name}"))


def _float_fields(cfg: "TrainConfig") -> list[tuple[str, float | None]]:
    out = []
    for sec_name in SECTIONS:
        section = getattr(cfg, sec_name)
        hints = _field_types(type(section))
        out += [(f"{sec_name}.{f.name}", getattr(section, f.name)) for f in fields(section)
                if hints[f.name] in (float, float | None)]
    return out


# --- YAML / dict -------------------------------------------------------------------------------------------
SECTIONS = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig,
             "training": TrainingConfig, "optim": OptimConfig}
TOP_KEYS = ("out_dir", "resume", "overwrite", "device")
# Keys of the official release's YAML that this trainer reads but does not use (they concern its own
# dequantisation options, the sampler's variance, or its validation loop); accepted so its files load as-is.
_OFFICIAL_IGNORED = {
    "data": {"logit_transform", "uniform_dequantization", "gaussian_dequantization", "rescaled"},
    "model": {"type", "var_type"},
    "training": {"n_epochs", "validation_freq"},
    "optim": set(),
    "diffusion": set(),
}
_IGNORED_SECTIONS = {"sampling"}


def config_from_dict(d: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a TrainConfig from a nested dict (our YAML or the official layout); unknown keys and values of the
    wrong type are a DDIMError naming the key."""
    cfg = _deepcopy(base) if base is not None else TrainConfig()
    unknown = [k for k in d if k not in SECTIONS and k not in TOP_KEYS and k not in _IGNORED_SECTIONS]
    if unknown:
        raise DDIMError(f"unknown config section(s) {unknown}; expected {sorted(SECTIONS) + list(TOP_KEYS)}")
    top = _field_types(TrainConfig)
    for name, value in d.items():
        if name in TOP_KEYS:
            setattr(cfg, name, _typed(value, top[name], name))
            continue
        if name in _IGNORED_SECTIONS:
            continue
        if value is None:  # a section whose keys are all commented out
            continue
        if not isinstance(value, Mapping):
            raise DDIMError(f"config section {name!r} must be a mapping, got {_show(value)}")
        section = getattr(cfg, name)
        known = {f.name for f in fields(section)}
        bad = sorted(str(k) for k in value if k not in known and k not in _OFFICIAL_IGNORED[name])
        if bad:
            raise DDIMError(f"unknown key(s) in config section {name!r}: {bad}; known: {sorted(known)}")
        hints = _field_types(type(section))
        for k, v in value.items():
            if k in known:
                setattr(section, k, _typed(v, hints[k], f"{name}.{k}"))
    cfg.data.dataset = cfg.data.dataset.lower()
    return cfg


def _deepcopy(cfg: TrainConfig) -> TrainConfig:
    return TrainConfig(**{k: (type(v)(**asdict(v)) if dataclasses.is_dataclass(v) else v)
                          for k, v in ((f.name, getattr(cfg, f.name)) for f in fields(cfg))})


# The training configs shipped inside the package (ddim/configs/NAME.yml; `configs/` in a checkout points there).
PACKAGED_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
PACKAGED_CONFIGS: tuple[str, ...] = tuple(sorted(p.stem for p in PACKAGED_CONFIGS_DIR.glob("*.yml")))


def config_path(spec: str | Path) -> Path:
    """The YAML file a `--config` value names: an existing file, or the name of a packaged config (`digits`,
    `digits.yml`); MissingFileError listing the packaged names otherwise."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec).removesuffix(".yml")
    if name in PACKAGED_CONFIGS:
        return PACKAGED_CONFIGS_DIR / f"{name}.yml"
    raise MissingFileError(f"config file {str(spec)!r} does not exist (give a YAML file, or the name of a "
                           f"packaged config: {', '.join(PACKAGED_CONFIGS)})")


def load_yaml(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML file in the official layout (data / model / diffusion / training / optim), type-checked.
    `path` may also name a packaged config (`config_path`)."""
    from ddim.readers import read_yaml
    path = config_path(path)
    d = read_yaml(path)       # text only, plain data (no !!python tags), duplicate keys refused by key and line
    d = {} if d is None else d
    if not isinstance(d, Mapping):
        raise DDIMError(f"{path}: a config file must hold a mapping of sections, got {type(d).__name__}")
    try:
        return config_from_dict(d, base)
    except DDIMError as e:
        raise DDIMError(f"{path}: {e}") from None


# What `ddim train` records in a run's config.json beside the config itself: the resolved U-Net, the number of
# processes and the device it ran on. They describe the run, not a setting, so reading the config back skips
# them (the config's own `device` field, None for "pick one", is kept as given).
RUN_RECORD_KEYS = ("unet", "world_size", "resolved_device")


def load_json(path: str | Path) -> TrainConfig:
    """Read the config.json a run directory holds (the keys of RUN_RECORD_KEYS are the run's record: skipped)."""
    from ddim.readers import read_json
    d = read_json(path)
    return config_from_dict({k: v for k, v in d.items() if k not in RUN_RECORD_KEYS})


# --- sampling --------------------------------------------------------------------------------------------------
def check_int(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]; a DDIMError naming `name` otherwise (bools are not ints)."""
    import numpy as np
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum \
        and (maximum is None or value <= maximum)
    if not ok:
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DDIMError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_steps(steps: Any, T: int, name: str = "steps") -> list[int]:
    """A non-empty list of step counts, each an integer in [1, T]."""
    steps = list(steps)
    if not steps:
        raise DDIMError(f"{name}: give at least one step count")
    return [check_int(s, f"{name}: each step count S", 1, T) for s in steps]


# float32, or autocast to bfloat16 / float16 with the sampler's arithmetic in float32; float64: the network's
# weights and the latents in float64 (roundoff studies, e.g. exact inversion; ddim's own pixel models only)
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


@dataclass(frozen=True)
class SampleConfig:
    """How to sample: every option from the command line to the sampler travels in this one object.

    The walk's options (steps .. steps_offset, marked below) are a `ddim.sampling.WalkOptions`, which defaults
    and validates each of them once (`walk`); this object adds how the network runs and how many images a
    call takes. Validated completely when built (a DDIMError naming the field, which is also the flag's name,
    before any file is written); checks that need the model (steps <= T, eta too large for a plan) happen in
    `DDIMSampler.prepare`, still before anything is written. `manifest()` is what changes the images.
    """

    steps: int = WALK.steps                         # walk: S, the number of sampling steps (length of tau)
    skip: str | tuple[int, ...] = WALK.skip         # walk: a name of ddim.schedule.SKIPS or explicit taus
    solver: str = WALK.solver                       # walk: a name of ddim.sampling.SOLVERS
    eta: float = WALK.eta                           # walk: the ddim solver's eta: 0 = DDIM, 1 = DDPM
    variance: str = WALK.variance                   # walk: the ddim solver's variance: "eta" or "large"
    clip_denoised: bool | str = WALK.clip_denoised  # walk: clip x0_pred to [-1, 1] (True, or "keep-eps")
    seed: int = 0                                   # sample i is a pure function of (seed, i)
    dtype: str = "float32"                          # network compute dtype (autocast); float64: network and latents
    channels_last: bool = False
    compile: bool = False
    batch_size: int | str = 64                      # images per network call, or "auto" (`generate.resolve_batch_size`)
    guidance: float = WALK.guidance                 # walk: classifier-free guidance weight (conditional models)
    final_alpha: float | str = WALK.final_alpha     # walk: the last step's level: 1.0 or "alpha_0"
    steps_offset: int = WALK.steps_offset           # walk: diffusers' steps_offset, added to a named skip's taus
    cache_interval: int = 1                         # DeepCache: a full network pass every N calls (1: off, exact)
    cache_branch: int | None = None                 # DeepCache's shallow branch (None: the U-Net's whole top level)
    guidance_mode: str = WALK.guidance_mode         # walk: "cfg", or "cfg++" (guidance is then lambda in [0, 1])
    guidance_interval: tuple[float, float] | None = WALK.guidance_interval   # walk: w only at t_lo <= t <= t_hi
    guidance_rescale: float = WALK.guidance_rescale  # walk: CFG rescale phi (Lin et al.)
    threshold_ratio: float = WALK.threshold_ratio    # walk: clip_denoised="dynamic": Imagen's percentile
    threshold_max: float | None = WALK.threshold_max  # walk: clip_denoised="dynamic": the largest threshold
    afs: bool = WALK.afs                            # walk: the analytic first step (one network call fewer)
    solver_options: Any = WALK.solver_options       # walk: churn's / restart's settings by name (a dict)
    guide: str | None = None                        # autoguidance: the guide's checkpoint or embedded name

    def __post_init__(self) -> None:
        if not isinstance(self.solver, str):
            raise DDIMError(f"solver must be one of {', '.join(SOLVERS)} (a config names its solver), "
                            f"got {self.solver!r}")
        walk = WalkOptions(**{name: getattr(self, name) for name in WalkOptions.__dataclass_fields__})
        for name in WalkOptions.__dataclass_fields__:                 # as normalised (e.g. skip a tuple)
            object.__setattr__(self, name, getattr(walk, name))
        object.__setattr__(self, "_walk", walk)
        for flag in ("channels_last", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise DDIMError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        check_int(self.seed, "seed", 0)
        if isinstance(self.guide, os.PathLike):
            object.__setattr__(self, "guide", os.fspath(self.guide))
        if self.guide is not None and (not isinstance(self.guide, str) or not self.guide.strip()):
            raise DDIMError(f"guide (--guide) must be a checkpoint path or an embedded model's name, got "
                            f"{self.guide!r}")
        if self.dtype not in DTYPES:
            raise DDIMError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_size != "auto":
            check_int(self.batch_size, "batch_size (an integer >= 1 or 'auto')")
        check_interval(self.cache_interval)
        if self.cache_branch is not None:
            check_int(self.cache_branch, "cache_branch", 0)

    @property
    def walk(self) -> WalkOptions:
        """The walk's options, the object `DDIMSampler.walk` takes."""
        return self._walk

    def walk_options(self) -> dict[str, Any]:
        """The keyword arguments of `DDIMSampler.sample` / `iter_sample` this config sets."""
        return self._walk.kwargs()

    def manifest(self) -> dict[str, Any]:
        """The settings that change the images (what a resumed run must match); JSON-ready."""
        d = asdict(self)
        for k in ("channels_last", "compile", "batch_size"):   # speed only: the same images (tested)
            d.pop(k)
        if self.cache_interval == 1:                            # off: cache_branch changes nothing
            d.pop("cache_branch")
        if self.guidance_mode == WALK.guidance_mode:            # runs recorded before CFG++ resume unchanged
            d.pop("guidance_mode")
        d["skip"] = d["skip"] if isinstance(d["skip"], str) else list(d["skip"])
        for k, off in (("guidance_interval", None), ("guidance_rescale", 0.0)):   # at their defaults: as before
            if d[k] == off:
                d.pop(k)
            elif k == "guidance_interval":
                d[k] = list(d[k])
        for k, off in (("afs", False), ("solver_options", None), ("guide", None)):   # off: earlier runs' manifests
            if d[k] == off:
                d.pop(k)
        if "solver_options" in d:
            d["solver_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.solver_options}
        if self.clip_denoised != "dynamic":                     # they only matter to dynamic thresholding
            d.pop("threshold_ratio")
            d.pop("threshold_max")
        return d

    def replace(self, **changes: Any) -> "SampleConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
