"""Training configuration: dataclasses laid out like the official release's YAML (data / model / diffusion /
training / optim), so its `configs/cifar10.yml` reads as-is, plus a few fields of our own in each section.

Precedence: dataclass defaults < YAML file (`--config`) < command-line flags. The model architecture itself is
`ddim.models.UNetConfig`; `ModelConfig` here names a preset and optional per-field overrides of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ddim.errors import DDIMError
from ddim.sampling.registry import SOLVERS, VARIANCES
from ddim.schedule import SKIPS

__all__ = [
    "DataConfig", "ModelConfig", "DiffusionConfig", "TrainingConfig", "OptimConfig", "TrainConfig",
    "load_yaml", "config_from_dict", "add_train_arguments", "config_from_args", "SampleConfig", "check_int",
    "check_steps", "DTYPES",
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
        """Raise ValueError naming the parameter for settings that cannot work."""
        t, o, d = self.training, self.optim, self.diffusion
        checks = [
            (t.batch_size >= 1, f"training.batch_size must be >= 1, got {t.batch_size}"),
            (t.n_iters >= 1, f"training.n_iters must be >= 1, got {t.n_iters}"),
            (t.grad_accum >= 1, f"training.grad_accum must be >= 1, got {t.grad_accum}"),
            (t.snapshot_freq >= 1, f"training.snapshot_freq must be >= 1, got {t.snapshot_freq}"),
            (t.keep_last >= 1, f"training.keep_last must be >= 1, got {t.keep_last}"),
            (t.log_freq >= 1, f"training.log_freq must be >= 1, got {t.log_freq}"),
            (t.sample_freq >= 0, f"training.sample_freq must be >= 0, got {t.sample_freq}"),
            (t.precision in ("fp32", "bf16", "fp16"), f"training.precision must be fp32, bf16 or fp16, got {t.precision!r}"),
            (o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
            (o.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {o.grad_clip}"),
            (o.warmup >= 0, f"optim.warmup must be >= 0, got {o.warmup}"),
            (o.optimizer.lower() in ("adam", "adamw"), f"optim.optimizer must be Adam or AdamW, got {o.optimizer!r}"),
            (0.0 <= self.model.ema_rate < 1.0, f"model.ema_rate must lie in [0, 1), got {self.model.ema_rate}"),
            (d.prediction in ("eps", "x0", "v"), f"diffusion.prediction must be eps, x0 or v, got {d.prediction!r}"),
            (d.loss_reduction in ("mean", "sum"), f"diffusion.loss_reduction must be mean or sum, got {d.loss_reduction!r}"),
            (self.data.channels in (1, 3), f"data.channels must be 1 or 3, got {self.data.channels}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        return self


# --- YAML / dict -------------------------------------------------------------------------------------------
_SECTIONS = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig,
             "training": TrainingConfig, "optim": OptimConfig}
_TOP = ("out_dir", "resume", "overwrite", "device")
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
    """Build a TrainConfig from a nested dict (our YAML or the official layout); unknown keys are an error."""
    cfg = _deepcopy(base) if base is not None else TrainConfig()
    unknown = [k for k in d if k not in _SECTIONS and k not in _TOP and k not in _IGNORED_SECTIONS]
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; expected {sorted(_SECTIONS) + list(_TOP)}")
    for name, value in d.items():
        if name in _TOP:
            setattr(cfg, name, value)
            continue
        if name in _IGNORED_SECTIONS:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"config section {name!r} must be a mapping, got {type(value).__name__}")
        section = getattr(cfg, name)
        known = {f.name for f in fields(section)}
        bad = sorted(k for k in value if k not in known and k not in _OFFICIAL_IGNORED[name])
        if bad:
            raise ValueError(f"unknown key(s) in config section {name!r}: {bad}; known: {sorted(known)}")
        for k, v in value.items():
            if k in known:
                setattr(section, k, v)
    if isinstance(cfg.data.dataset, str):
        cfg.data.dataset = cfg.data.dataset.lower()
    return cfg


def _deepcopy(cfg: TrainConfig) -> TrainConfig:
    return TrainConfig(**{k: (type(v)(**asdict(v)) if dataclasses.is_dataclass(v) else v)
                          for k, v in ((f.name, getattr(cfg, f.name)) for f in fields(cfg))})


def load_yaml(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML file in the official layout (data / model / diffusion / training / optim)."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, Mapping):
        raise ValueError(f"{path}: a config file must hold a mapping of sections, got {type(d).__name__}")
    try:
        return config_from_dict(d, base)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_json(path: str | Path) -> TrainConfig:
    """Read the config.json a run directory holds."""
    return config_from_dict(json.loads(Path(path).read_text()))


# --- command line ------------------------------------------------------------------------------------------
# Flag names that differ from `--{field}` (to stay unambiguous or read better).
_FLAG_NAMES = {("optim", "eps"): "adam-eps", ("optim", "beta1"): "adam-beta1", ("optim", "beta2"): "adam-beta2",
               ("model", "ema_rate"): "ema-rate", ("data", "root"): "data-root", ("model", "preset"): "model",
               ("training", "n_iters"): "steps", ("training", "snapshot_freq"): "ckpt-every",
               ("training", "log_freq"): "log-every", ("training", "sample_freq"): "sample-every",
               ("model", "out_ch"): "out-channels", ("optim", "warmup"): "warmup-steps"}
_HELP = {
    "dataset": "data set: digits, cifar10, celeba, folder, npz, idx", "data-root": "data folder or file",
    "steps": "optimizer steps to train for (training.n_iters; not sampling steps: those are --sample-steps)", "batch-size": "global batch size (all processes and accumulation steps)",
    "model": "U-Net preset (ddim.models.PRESETS)", "ema-rate": "EMA decay", "prediction": "network target",
}


def _str2bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _int_list(s: str) -> list[int]:
    return [int(v) for v in s.replace(",", " ").split()]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `ddim train`'s flags; flags left unset keep the YAML (or default) value."""
    parser.add_argument("--config", help="training YAML (the official data/model/diffusion/training/optim layout; "
                        "not a checkpoint's architecture as in `ddim sample --config`)")
    parser.add_argument("--out", "--out-dir", dest="out_dir", default=argparse.SUPPRESS,
                        help="run directory (default runs/ddim)")
    parser.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                        help="continue from the latest checkpoint in the run directory")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="allow writing into a non-empty run directory without --resume")
    parser.add_argument("--device", default=argparse.SUPPRESS, help="cpu, cuda, cuda:1 (default: cuda if available)")
    defaults = TrainConfig()
    for sec_name in _SECTIONS:
        group = parser.add_argument_group(sec_name)
        section = getattr(defaults, sec_name)
        for f in fields(section):
            flag = _FLAG_NAMES.get((sec_name, f.name), f.name.replace("_", "-"))
            default = getattr(section, f.name)
            kind = str(f.type)
            if "list" in kind:
                typ = _int_list
            elif "bool" in kind:
                typ = _str2bool
            elif "float" in kind:
                typ = float
            elif "int" in kind:
                typ = int
            else:
                typ = str
            group.add_argument(f"--{flag}", dest=f"{sec_name}.{f.name}", type=typ, default=argparse.SUPPRESS,
                               metavar=f.name.upper() if typ is not _str2bool else "BOOL",
                               help=f"{_HELP.get(flag, sec_name + '.' + f.name)} (default: {default})")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config YAML < explicit flags; validated."""
    ns = vars(args)
    cfg = load_yaml(ns["config"]) if ns.get("config") else TrainConfig()
    for key, value in ns.items():
        if "." in key:
            sec, name = key.split(".", 1)
            setattr(getattr(cfg, sec), name, value)
        elif key in _TOP:
            setattr(cfg, key, value)
    return cfg.validate()


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


DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class SampleConfig:
    """How to sample: every option from the command line to the sampler travels in this one object.

    Validated completely when built (a DDIMError naming the field, which is also the flag's name, before any
    file is written); checks that need the model (steps <= T, eta too large for a plan) happen when the
    sampler is built, still before anything is written. `manifest()` is what changes the images.
    """

    steps: int = 50                         # S, the number of sampling steps (length of tau)
    skip: str | tuple[int, ...] = "uniform"  # how tau is chosen (a name of ddim.schedule.SKIPS) or explicit taus
    solver: str = "ddim"                    # a name of ddim.sampling.SOLVERS
    eta: float = 0.0                        # the ddim solver's eta: 0 = DDIM, 1 = DDPM
    variance: str = "eta"                   # the ddim solver's variance: "eta" or "large" (sigma-hat)
    clip_denoised: bool = False             # clip x0_pred to [-1, 1] at every step
    seed: int = 0                           # sample i is a pure function of (seed, i)
    dtype: str = "float32"                  # network compute dtype (autocast)
    channels_last: bool = False
    compile: bool = False
    batch_size: int | str = 64              # images per network call, or "auto"
    cache_interval: int = 1                 # DeepCache: a full network pass every N calls (1: off, exact)
    cache_branch: int | None = None         # DeepCache's shallow branch (None: the U-Net's whole top level)

    def __post_init__(self) -> None:
        check_int(self.steps, "steps")
        if isinstance(self.skip, str):
            if self.skip not in SKIPS:
                raise DDIMError(f"skip must be one of {', '.join(map(repr, SKIPS))} or a list of timesteps; "
                                f"got {self.skip!r}")
        else:
            object.__setattr__(self, "skip", tuple(check_int(t, "skip: each timestep", 0) for t in self.skip))
            if not self.skip:
                raise DDIMError("skip: an explicit list needs at least one timestep")
        if self.solver not in SOLVERS:
            raise DDIMError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        eta = self.eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise DDIMError(f"eta must be a finite number >= 0, got {eta!r}")
        object.__setattr__(self, "eta", float(eta))
        if self.variance not in VARIANCES:
            raise DDIMError(f"variance must be one of {VARIANCES}, got {self.variance!r}")
        for flag in ("clip_denoised", "channels_last", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise DDIMError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        check_int(self.seed, "seed", 0)
        if self.dtype not in DTYPES:
            raise DDIMError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_size != "auto":
            check_int(self.batch_size, "batch_size (an integer >= 1 or 'auto')")
        check_int(self.cache_interval, "cache_interval")
        if self.cache_branch is not None:
            check_int(self.cache_branch, "cache_branch", 0)
        if self.cache_interval > 1 and self.compile:
            raise DDIMError("compile: torch.compile of the feature cache is not supported yet; use either "
                            "--compile or --cache-interval > 1")

    def walk_options(self) -> dict[str, Any]:
        """The keyword arguments of `DDIMSampler.sample` / `iter_sample` this config sets."""
        return dict(steps=self.steps, eta=self.eta, skip=self.skip if isinstance(self.skip, str) else list(self.skip),
                    variance=self.variance, clip_denoised=self.clip_denoised, solver=self.solver)

    def manifest(self) -> dict[str, Any]:
        """The settings that change the images (what a resumed run must match); JSON-ready."""
        d = asdict(self)
        for k in ("channels_last", "compile", "batch_size"):   # speed only: the same images (tested)
            d.pop(k)
        if self.cache_interval == 1:                            # off: cache_branch changes nothing
            d.pop("cache_branch")
        d["skip"] = d["skip"] if isinstance(d["skip"], str) else list(d["skip"])
        return d

    def replace(self, **changes: Any) -> "SampleConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
