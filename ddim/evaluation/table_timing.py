"""Figure 4: wall-clock seconds per image of sampling vs S, with a least-squares line and its R^2."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddim.benchmarking import median_seconds, synchronize
from ddim.checkpoint import LoadedModel
from ddim.config import SampleConfig, check_int, check_steps
from ddim.errors import DDIMError
from ddim.evaluation.plots import figure, save_figure
from ddim.evaluation.runner import Table, columns_by_s, run_table
from ddim.generate import check_plan, make_sampler, resolve_batch_size, sample_batch

__all__ = ["timing", "timing_markdown", "linear_fit", "TIMING_STEPS", "TIMING_FIELDS"]

TIMING_STEPS: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)
TIMING_FIELDS = ("steps", "batch_size", "repeats", "seconds_per_image", "seconds_per_batch")


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line y = slope x + intercept; returns (slope, intercept, R^2). Needs 2+ distinct x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise DDIMError("a line needs at least two different x values")
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(((y - (slope * x + intercept)) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


class Timing(Table):
    name, fields, key_fields = "timing", TIMING_FIELDS, ("steps",)
    types = dict(steps=int, batch_size=int, repeats=int, seconds_per_image=float, seconds_per_batch=float)
    resumable = False                      # a timing is of this machine now: never mixed with an earlier run's

    def __init__(self, loaded: LoadedModel, config: SampleConfig, steps: Sequence[int], device: str | torch.device,
                 repeats: int, warmup: int) -> None:
        self.steps = check_steps(steps, loaded.schedule.T)
        self.batch_size = resolve_batch_size(config, loaded, device, sys.maxsize)   # "auto": the largest that fits
        self.repeats = check_int(repeats, "repeats")
        self.warmup = check_int(warmup, "warmup", 0)
        self.loaded, self.config, self.device = loaded, config, device

    def cells(self) -> list[tuple]:
        return [(S,) for S in self.steps]

    def check(self) -> None:
        self.sampler = make_sampler(self.loaded, self.config, self.device)
        for S in self.steps:
            check_plan(self.sampler, self.config.replace(steps=S))

    def prepare(self) -> None:
        c = self.loaded.config
        self.x_T = torch.randn((self.batch_size, c.in_channels, c.image_size, c.image_size),
                               generator=torch.Generator().manual_seed(0)).to(self.device)
        for _ in range(self.warmup):
            sample_batch(self.sampler, self.x_T, self.config.replace(steps=min(self.steps)))
        synchronize(self.device)

    def settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, **self.config.manifest(), "device": str(self.device)}

    def compute(self, cell: tuple) -> dict[str, Any]:
        cfg = self.config.replace(steps=cell[0])
        t = median_seconds(lambda: sample_batch(self.sampler, self.x_T, cfg), self.repeats, self.device)
        return dict(steps=cell[0], batch_size=self.batch_size, repeats=self.repeats,
                    seconds_per_image=t / self.batch_size, seconds_per_batch=t)

    def describe(self, row: dict[str, Any]) -> str:
        return (f"timing: S={row['steps']:<5d} {row['seconds_per_image'] * 1e3:.3f} ms per image "
                f"({row['seconds_per_batch']:.2f} s per batch)")

    def markdown(self, rows: list[dict[str, Any]]) -> str:
        return timing_markdown(rows, str(self.device))

    def plot(self, rows: list[dict[str, Any]], path: Path) -> None:
        fig, ax = figure()
        s = np.array([r["steps"] for r in rows], np.float64)
        t = np.array([r["seconds_per_image"] for r in rows])
        ax.plot(s, t, "o", label="measured")
        if len(set(s)) >= 2:
            a, b, r2 = linear_fit(s, t)
            xs = np.linspace(0, s.max(), 100)
            ax.plot(xs, a * xs + b, "-", lw=1, label=f"linear fit, R$^2$ = {r2:.4f}")
        ax.set_xlabel("S (sampling steps)")
        ax.set_ylabel("seconds per image")
        ax.set_title("Figure 4: sampling time vs S")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        save_figure(fig, path)


def timing(loaded: LoadedModel, config: SampleConfig = SampleConfig(), *, steps: Sequence[int] = TIMING_STEPS,
           device: str | torch.device = "cpu", repeats: int = 3, warmup: int = 1,
           out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Figure 4's shape: wall-clock seconds per image of sampling vs S with the config's sampler (median of
    `repeats` runs of one batch of config.batch_size, after `warmup` untimed runs). Returns rows dict(steps,
    batch_size, repeats, seconds_per_image, seconds_per_batch); with `out`, writes timing.md (with the linear
    fit and R^2), timing.csv, timing.png; an existing timing.csv needs overwrite."""
    return run_table(Timing(loaded, config, steps, device, repeats, warmup), out, overwrite, progress)


def timing_markdown(rows: list[dict], device: str = "cpu") -> str:
    """Rows of `timing` as a markdown table, with the least-squares line through them when there are 2+ S."""
    lines = [f"Sampling time per image (eta = 0, batch {rows[0]['batch_size'] if rows else '?'}, {device}, median "
             f"of {rows[0]['repeats'] if rows else '?'} runs)", "",
             *columns_by_s(rows, "ms per image", [f"{r['seconds_per_image'] * 1e3:.3g}" for r in rows])]
    if len({r["steps"] for r in rows}) >= 2:
        a, b, r2 = linear_fit([r["steps"] for r in rows], [r["seconds_per_image"] for r in rows])
        lines += ["", f"Least-squares line: ms per image = {a * 1e3:.4g} x S {'-' if b < 0 else '+'} "
                      f"{abs(b) * 1e3:.3g}, R^2 = {r2:.4f}"]
    return "\n".join(lines) + "\n"
