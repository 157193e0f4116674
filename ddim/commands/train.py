"""`ddim train`: a noise-prediction U-Net with the DDPM objective (EMA, checkpoints, resume, torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

from ddim.commands.common import Formatter
from ddim.config import add_train_arguments, config_from_args
from ddim.evaluation import plot_training
from ddim.runs import prepare_output
from ddim.train import train


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="train a noise-prediction U-Net with the DDPM objective",
                       formatter_class=Formatter,
                       epilog="examples:\n  ddim train --config configs/digits.yml --out runs/digits\n"
                              "  ddim train --config configs/digits.yml --out runs/digits --resume\n"
                              "  torchrun --nproc_per_node 8 -m ddim train --config configs/cifar10.yml "
                              "--out runs/c10\n"
                              "then: ddim sample --ckpt runs/digits/model.safetensors")
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


def run(args: argparse.Namespace) -> None:
    run_dir = train(config_from_args(args), progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {run_dir}")


def run_plot(args: argparse.Namespace) -> None:
    out = None if args.out is None else prepare_output(args.out, args.overwrite)
    print(f"wrote {plot_training(args.run_dir, out)}")
