"""`ddim train`: a noise-prediction U-Net with the DDPM objective (EMA, checkpoints, resume, torchrun); `ddim plot`.

The flags are generated from `ddim.config.TrainConfig`: one flag per field (`--{field}` with dashes, or the name
in `_FLAG_NAMES`), in one help group per config section. Precedence: defaults < `--config` YAML < flags.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from dataclasses import fields
from typing import Iterator

from ddim.commands.common import Formatter
from ddim.config import PACKAGED_CONFIGS, SECTIONS, TOP_KEYS, TrainConfig, load_yaml
from ddim.errors import DDIMError
from ddim.evaluation import plot_training
from ddim.runs import prepare_output
from ddim.train import run_training

__all__ = ["register", "add_train_arguments", "config_from_args", "flag_for"]

# Flag names that differ from `--{field}` (to stay unambiguous or read better).
_FLAG_NAMES = {("optim", "eps"): "adam-eps", ("optim", "beta1"): "adam-beta1", ("optim", "beta2"): "adam-beta2",
               ("model", "ema_rate"): "ema-rate", ("data", "root"): "data-root", ("model", "preset"): "model",
               ("training", "n_iters"): "steps", ("training", "snapshot_freq"): "ckpt-every",
               ("training", "log_freq"): "log-every", ("training", "sample_freq"): "sample-every",
               ("model", "out_ch"): "out-channels", ("optim", "warmup"): "warmup-steps"}
_HELP = {
    "dataset": "data set: digits, cifar10, celeba, folder, npz, idx", "data-root": "data folder or file",
    "steps": "optimizer steps to train for (training.n_iters; not sampling steps: those are --sample-steps)",
    "batch-size": "global batch size (all processes and accumulation steps)",
    "model": "U-Net preset (ddim.models.PRESETS)", "ema-rate": "EMA decay", "prediction": "network target",
}


def flag_for(section: str, name: str) -> str:
    """The `ddim train` flag that sets config key `section.name`, e.g. ("training", "n_iters") -> "--steps"."""
    return "--" + _FLAG_NAMES.get((section, name), name.replace("_", "-"))


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
    parser.add_argument("--config", help="training YAML in the official data/model/diffusion/training/optim "
                        f"layout, or the name of a packaged one ({', '.join(PACKAGED_CONFIGS)}); not a "
                        "checkpoint's architecture as in `ddim sample --config`")
    parser.add_argument("--out", "--out-dir", dest="out_dir", default=argparse.SUPPRESS,
                        help="run directory (default runs/ddim)")
    parser.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                        help="continue from the latest checkpoint in the run directory")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="allow writing into a non-empty run directory without --resume")
    parser.add_argument("--device", default=argparse.SUPPRESS, help="cpu, cuda, cuda:1 (default: cuda if available)")
    defaults = TrainConfig()
    for sec_name in SECTIONS:
        group = parser.add_argument_group(sec_name)
        section = getattr(defaults, sec_name)
        for f in fields(section):
            flag = flag_for(sec_name, f.name)
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
            bare = {"nargs": "?", "const": True} if typ is _str2bool else {}    # `--flag` alone means true
            group.add_argument(flag, dest=f"{sec_name}.{f.name}", type=typ, default=argparse.SUPPRESS,
                               metavar=f.name.upper() if typ is not _str2bool else "BOOL",
                               help=f"{_HELP.get(flag[2:], sec_name + '.' + f.name)} (default: {default})", **bare)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config YAML < explicit flags; validated."""
    ns = vars(args)
    cfg = load_yaml(ns["config"]) if ns.get("config") else TrainConfig()
    for key, value in ns.items():
        if "." in key:
            sec, name = key.split(".", 1)
            setattr(getattr(cfg, sec), name, value)
        elif key in TOP_KEYS:
            setattr(cfg, key, value)
    return cfg.validate()


_KEY = re.compile(r"\b(" + "|".join(SECTIONS) + r")\.([a-z0-9_]+)\b")


def _name_flags(message: str) -> str:
    """The library names config keys (training.n_iters); on the command line, add the flag the user typed:
    "training.n_iters (--steps)", once per key, unless the message names the flag already."""
    seen: set[str] = set()

    def add(m: re.Match) -> str:
        sec, name = m.group(1), m.group(2)
        if name not in {f.name for f in fields(SECTIONS[sec])} or m.group(0) in seen:
            return m.group(0)
        seen.add(m.group(0))
        flag = flag_for(sec, name)
        return m.group(0) if flag in message else f"{m.group(0)} ({flag})"

    return _KEY.sub(add, message)


@contextlib.contextmanager
def _errors_name_flags() -> Iterator[None]:
    try:
        yield
    except DDIMError as e:
        named = _name_flags(str(e))
        if named == str(e):
            raise
        raise type(e)(named) from e


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="train a noise-prediction U-Net with the DDPM objective",
                       formatter_class=Formatter,
                       epilog="examples:\n  ddim train --config digits --out runs/digits\n"
                              "  ddim train --config digits --out runs/digits --resume\n"
                              "  torchrun --nproc_per_node 8 -m ddim train --config cifar10 "
                              "--data-root /data/cifar-10-batches-py --out runs/c10\n"
                              f"packaged configs (--config NAME): {', '.join(PACKAGED_CONFIGS)}; or a YAML file of "
                              "your own\n"
                              "then: ddim sample --ckpt runs/digits/model.safetensors\n"
                              "Ctrl-C or SIGTERM: checkpoint the current step, then exit 130 / 143")
    add_train_arguments(s)
    s.set_defaults(fn=run, resume_hint="rerun with --resume to continue")

    s = sub.add_parser("plot", help="draw a training run's loss curve from its metrics.jsonl",
                       formatter_class=Formatter,
                       epilog="example: ddim plot runs/digits   (writes runs/digits/loss.png)")
    s.add_argument("run_dir", help="a `ddim train` run directory")
    s.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/loss.png, the run's own plot, "
                   "which a rerun replaces)")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(fn=run_plot)


def run(args: argparse.Namespace) -> int:
    with _errors_name_flags():
        outcome = run_training(config_from_args(args))
    if outcome.stopped_by is not None:
        # Pre-empted, not finished: `train && sample` and job schedulers must see it (as `sample` does: 130).
        return 128 + outcome.stopped_by
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {outcome.run_dir}")
    return 0


def run_plot(args: argparse.Namespace) -> None:
    out = None if args.out is None else prepare_output(args.out, args.overwrite)
    print(f"wrote {plot_training(args.run_dir, out)}")
