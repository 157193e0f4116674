"""`ddim distill`: progressive distillation of any teacher into few-step students (Salimans & Ho 2022)."""

from __future__ import annotations

import argparse
import sys

import torch

from ddim.commands.common import Formatter, load, nonnegative_int, positive_int
from ddim.config import TrainConfig, config_from_dict, load_yaml
from ddim.distill import STUDENT_PREDICTIONS, DistillSpec, distill
from ddim.schedule import SKIPS

EPILOG = """examples:
  ddim distill --ckpt digits --steps-from 64 --steps-to 1 --iters-per-round 2000 --out runs/distill
  ddim distill --ckpt digits-cond --guidance 2 --steps-to 4 --out runs/cond-w2
  ddim distill --ckpt runs/c10/model.safetensors --config configs/cifar10.yml --data-root data/cifar10 --out d
  ddim distill ... --resume          (continues the round in progress; finished rounds are kept)
then: ddim sample --ckpt runs/distill/model.safetensors   (the student's step count and grid are its defaults)
Each round trains a student to take one DDIM step where its teacher took two, then makes it the next teacher.
OUT/steps-NNNN holds each round's run (checkpoints, metrics.jsonl, samples/, model.safetensors)."""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("distill", help="progressive distillation: students that halve a teacher's DDIM steps",
                       formatter_class=Formatter, epilog=EPILOG)
    s.add_argument("--ckpt", default=None, help="the teacher: any checkpoint `ddim sample` loads, or an embedded "
                   "name (digits, digits-cond, digits-cond-distilled); default: the embedded digits model")
    s.add_argument("--raw-weights", action="store_true", help="training checkpoints: the raw weights, not EMA")
    s.add_argument("--config", default=None, help="training YAML (as `ddim train --config`): its data section "
                   "names the data set the teacher was trained on (the rest of it is training's, not read)")
    s.add_argument("--dataset", default=None, help="data set: digits, cifar10, celeba, folder, npz, idx "
                   "(default: the config's, else digits)")
    s.add_argument("--data-root", default=None, help="data folder or file")
    s.add_argument("--steps-from", type=positive_int, default=None,
                   help="the teacher's DDIM steps, a power of two (default: a distilled teacher's own, else 64)")
    s.add_argument("--steps-to", type=positive_int, default=1, help="the last student's steps, a power of two")
    s.add_argument("--iters-per-round", type=positive_int, default=None,
                   help="optimizer steps per round (default: 2000, or the config's training.n_iters)")
    s.add_argument("--guidance", type=float, default=None, help="class-conditional teachers: the classifier-free "
                   "guidance weight w baked into the student (default: none, w = 1)")
    s.add_argument("--prediction", default="v", choices=STUDENT_PREDICTIONS, help="the student's parameterization")
    s.add_argument("--skip", default="trailing", choices=SKIPS, help="the teacher's grid at --steps-from "
                   "(trailing nests: each student's grid is trailing at its own step count)")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4), cosine-decayed to 0 "
                   "within each round")
    s.add_argument("--batch-size", type=positive_int, default=None, help="images per step (default: 64)")
    s.add_argument("--ema-rate", type=float, default=None, help="EMA decay of the student's weights (with warm-up; "
                   "default 0.999); the EMA student is the next teacher")
    s.add_argument("--seed", type=nonnegative_int, default=None, help="seed of data order and noise (default: 0)")
    s.add_argument("--ckpt-every", type=positive_int, default=None, help="a training checkpoint every N steps "
                   "of a round (default: 500), and at its end")
    s.add_argument("--log-every", type=positive_int, default=None, help="a metrics.jsonl line every N steps "
                   "(default: 50)")
    s.add_argument("--out", default="runs/distill", help="output folder (one run folder per round)")
    s.add_argument("--resume", action="store_true", help="continue a stopped distillation in --out")
    s.add_argument("--overwrite", action="store_true", help="start again in a --out that holds another one")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    s.set_defaults(fn=run)


# The distillation's own defaults where they differ from `ddim train`'s (the paper fine-tunes, at a lower rate).
DEFAULTS = {("training", "n_iters"): 2000, ("training", "batch_size"): 64, ("optim", "lr"): 1e-4,
            ("optim", "lr_schedule"): "cosine", ("optim", "min_lr"): 0.0, ("optim", "warmup"): 0,
            ("model", "ema_rate"): 0.999, ("model", "ema_warmup"): True, ("training", "log_freq"): 50,
            ("training", "snapshot_freq"): 500, ("training", "sample_freq"): 0}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Distillation defaults < --config YAML < flags, as one TrainConfig (validated by `distill`)."""
    base = TrainConfig()
    for (sec, key), value in DEFAULTS.items():
        setattr(getattr(base, sec), key, value)
    if args.config:
        base.data = load_yaml(args.config).data
    cfg = config_from_dict({}, base)
    flags = {("data", "dataset"): args.dataset, ("data", "root"): args.data_root,
             ("training", "n_iters"): args.iters_per_round, ("training", "batch_size"): args.batch_size,
             ("training", "seed"): args.seed, ("optim", "lr"): args.lr, ("model", "ema_rate"): args.ema_rate,
             ("training", "snapshot_freq"): args.ckpt_every, ("training", "log_freq"): args.log_every}
    for (sec, key), value in flags.items():
        if value is not None:
            setattr(getattr(cfg, sec), key, value)
    cfg.data.dataset = cfg.data.dataset.lower()
    cfg.out_dir, cfg.resume, cfg.overwrite, cfg.device = args.out, args.resume, args.overwrite, args.device
    return cfg


def run(args: argparse.Namespace) -> None:
    spec = DistillSpec(args.steps_from, args.steps_to, args.guidance, args.prediction, args.skip)
    cfg = train_config(args)
    args.ckpt_config = None
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.device = args.device
    teacher = load(args)
    path = distill(teacher, spec, cfg, source=teacher.metadata["source"], progress=sys.stderr.isatty())
    if path is not None:
        print(f"wrote {path}; sample with: ddim sample --ckpt {path}")
