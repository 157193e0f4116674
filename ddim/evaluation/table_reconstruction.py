"""Table 2: reconstruction error vs S: encode real images with the deterministic ODE (eq. 13), decode them, and
report the per-dimension MSE with pixels in [0, 1]."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddim.checkpoint import LoadedModel
from ddim.config import SampleConfig, check_int, check_steps
from ddim.evaluation.plots import figure, log_axes, save_figure
from ddim.evaluation.runner import Table, run_table
from ddim.evaluation.samples import reconstruction_mse
from ddim.generate import (check_plan, decode, encode, image_shape, make_sampler, resolve_batch_size,
                           weights_fingerprint)
from ddim.images import load_images

__all__ = ["table2", "table2_markdown", "TABLE2_STEPS", "T2_FIELDS"]

TABLE2_STEPS: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)
T2_FIELDS = ("solver", "steps", "n", "mse", "seconds")


class Table2(Table):
    name, fields, key_fields = "table2", T2_FIELDS, ("solver", "steps")
    types = dict(steps=int, n=int, mse=float, seconds=float)

    def __init__(self, loaded: LoadedModel, config: SampleConfig, steps: Sequence[int], images: str | Tensor,
                 n: int, solvers: Sequence[str] | None, device: str | torch.device) -> None:
        self.steps = check_steps(steps, loaded.schedule.T)
        n = check_int(n, "n")
        config = config.replace(batch_size=resolve_batch_size(config, loaded, device, n))
        self.configs = {name: config.replace(solver=name) for name in (solvers or [config.solver])}  # validates
        self.x0 = load_images(images, *image_shape(loaded)[:2], n=n, what="images")
        self.loaded, self.config, self.images, self.device = loaded, config, images, device

    def cells(self) -> list[tuple]:
        return [(name, S) for name in self.configs for S in self.steps]

    def check(self) -> None:
        self.sampler = make_sampler(self.loaded, self.config, self.device)   # the solver is a walk option
        for name, S in self.cells():
            check_plan(self.sampler, self.configs[name].replace(steps=S))

    def prepare(self) -> None:
        self.x = self.x0.to(self.device)          # moved once, for every cell

    def settings(self) -> dict[str, Any]:
        return {"model": weights_fingerprint(self.loaded.model),
                "images": self.images if isinstance(self.images, str) else f"{len(self.images)} given images",
                "n": len(self.x0), "skip": self.config.manifest()["skip"], "dtype": self.config.dtype}

    def compute(self, cell: tuple) -> dict[str, Any]:
        name, S = cell
        t0 = time.perf_counter()
        cfg = self.configs[name].replace(steps=S)
        rec = decode(self.sampler, encode(self.sampler, self.x, cfg), cfg)
        return dict(solver=name, steps=S, n=len(self.x0), mse=reconstruction_mse(self.x, rec),
                    seconds=time.perf_counter() - t0)

    def describe(self, row: dict[str, Any]) -> str:
        return f"table2: {row['solver']} S={row['steps']:<5d} MSE {row['mse']:.3g} ({row['seconds']:.1f} s)"

    def markdown(self, rows: list[dict[str, Any]]) -> str:
        return table2_markdown(rows, str(self.config.skip))

    def plot(self, rows: list[dict[str, Any]], path: Path) -> None:
        fig, ax = figure()
        for name in dict.fromkeys(r["solver"] for r in rows):
            mine = [r for r in rows if r["solver"] == name]
            ax.plot([r["steps"] for r in mine], [max(r["mse"], 1e-12) for r in mine], marker="o", label=name)
        log_axes(ax, [r["steps"] for r in rows], True)
        ax.set_xlabel("S (encoding and decoding steps)")
        ax.set_ylabel("per-dimension MSE (pixels in [0, 1])")
        ax.set_title("Table 2: reconstruction error vs S")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, path)


def table2(loaded: LoadedModel, config: SampleConfig = SampleConfig(batch_size=256), *,
           steps: Sequence[int] = TABLE2_STEPS, images: str | Tensor = "digits", n: int = 256,
           solvers: Sequence[str] | None = None, device: str | torch.device = "cpu",
           out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Table 2's shape: encode the first n images with S deterministic steps (eq. 13), decode with S steps, and
    report the per-dimension MSE with pixels in [0, 1], for each solver (default: the config's) and S.
    images: a tensor [N, C, H, W] in [-1, 1] or an image spec (`ddim.images.load_images`); `config` gives
    skip, dtype and batch size. Returns rows dict(solver, steps, n, mse, seconds); with `out`, writes
    table2.md (a row per solver, a column per S), table2.csv, table2.png (log-log) and table2.json. A rerun
    with the same settings reuses the finished cells, also when it asks for more solvers or S."""
    return run_table(Table2(loaded, config, steps, images, n, solvers, device), out, overwrite, progress)


def table2_markdown(rows: list[dict], skip: str = "uniform") -> str:
    """Rows of `table2` as a markdown table: a row per solver, one column per S (the paper's layout)."""
    steps = list(dict.fromkeys(r["steps"] for r in rows))
    mse = {(r["solver"], r["steps"]): r["mse"] for r in rows}
    lines = [f"Reconstruction error (per-dimension MSE, pixels in [0, 1]) of {rows[0]['n'] if rows else 0} images "
             f"encoded and decoded with S deterministic steps, {skip} tau", "",
             "| solver | " + " | ".join(f"S = {S}" for S in steps) + " |", "|---|" + "---:|" * len(steps)]
    for name in dict.fromkeys(r["solver"] for r in rows):
        lines.append(f"| {name} | " + " | ".join(f"{mse[name, S]:.2g}" if (name, S) in mse else "-" for S in steps)
                     + " |")
    return "\n".join(lines) + "\n"
