"""Training curves: the loss and learning rate of a `ddim train` run, from its metrics.jsonl, as a PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ddim.errors import DDIMError, MissingFileError
from ddim.evaluation.plots import figure, save_figure
from ddim.train import read_metrics_lines as train_metrics

__all__ = ["training_records", "plot_training"]


def training_records(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl, in order (a torn last line, from a crash mid-write, is left out;
    `ddim.train.read_metrics_lines` reads the file)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"run directory {str(run_dir)!r} has no metrics.jsonl (is it a `ddim train` run?)")
    records = [rec for _, rec in train_metrics(path)[0]]
    if not records:
        raise DDIMError(f"{path} holds no records yet")
    return records


def plot_training(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """The loss curve of a training run (raw per logged step and, from 40 logged steps on, its running mean
    over 5% of them) and the learning rate, from metrics.jsonl, as a PNG (default: RUN_DIR/loss.png)."""
    records = training_records(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "loss.png"
    steps = np.array([r["step"] for r in records if "loss" in r], np.float64)
    loss = np.array([r["loss"] for r in records if "loss" in r], np.float64)
    fig, ax = figure((6.5, 3.8))
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss (logged steps)")
    k = len(loss) // 20        # a running mean over 5% of the logged steps, once that spans 2 or more
    if k >= 2:
        mean = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], mean, lw=1.6, label=f"running mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("L_simple")
    ax.set_title(f"training loss: {Path(run_dir).name}")
    ax.grid(True, which="both", alpha=0.3)
    if any("lr" in r for r in records):
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in records if "lr" in r], [r["lr"] for r in records if "lr" in r],
                   color="grey", lw=0.8, ls="--", label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    save_figure(fig, out)
    return out
