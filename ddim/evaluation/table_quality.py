"""Table 1: sample quality (a Frechet distance to a reference) vs S, for each eta and sigma-hat."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddim.checkpoint import LoadedModel
from ddim.config import SampleConfig, check_int, check_steps
from ddim.errors import DDIMError
from ddim.evaluation.metric import METRICS, FeatureMetric, make_metric
from ddim.evaluation.plots import figure, log_axes, save_figure
from ddim.evaluation.runner import Table, fmt, optional_float, run_table
from ddim.evaluation.samples import generate_samples
from ddim.generate import check_plan, make_sampler, weights_fingerprint
from ddim.images import load_images

__all__ = ["table1", "table1_markdown", "TABLE1_STEPS", "TABLE1_ETAS", "T1_FIELDS"]

TABLE1_STEPS: tuple[int, ...] = (10, 20, 50, 100, 1000)
TABLE1_ETAS: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0)
T1_FIELDS = ("sampler", "eta", "variance", "steps", "n", "distance", "metric", "seconds")
REAL = ("real digits", 0)       # the floor row: real images drawn from the reference set


def _sampler_name(config: SampleConfig) -> str:
    return "sigma-hat" if config.variance == "large" else f"eta = {config.eta:g}"


class Table1(Table):
    name, fields, key_fields = "table1", T1_FIELDS, ("sampler", "steps")
    types = dict(eta=optional_float, steps=int, n=int, distance=float, seconds=float)

    def __init__(self, loaded: LoadedModel, config: SampleConfig, steps: Sequence[int], etas: Sequence[float],
                 sigma_hat: bool, n: int, metric: str | FeatureMetric, reference: Any, inception_weights: Any,
                 device: str | torch.device, cache: Path | None, real_baseline: bool, progress: bool) -> None:
        self.loaded, self.config, self.device, self.progress = loaded, config, device, progress
        self.steps = check_steps(steps, loaded.schedule.T)
        self.n = check_int(n, "n", 2)
        samplers = [config.replace(eta=e, variance="eta") for e in etas] + (
            [config.replace(eta=0.0, variance="large")] if sigma_hat else [])      # validates every eta
        if not samplers:
            raise DDIMError("etas: give at least one eta, or keep sigma_hat=True")
        if not isinstance(metric, FeatureMetric) and metric not in METRICS:
            raise DDIMError(f"metric must be one of {METRICS}, got {metric!r}")
        self.samplers = {_sampler_name(c): c for c in samplers}
        self.metric_spec, self.reference, self.inception_weights, self.cache = metric, reference, inception_weights, cache
        self.real_baseline = real_baseline and metric == "classifier"

    def cells(self) -> list[tuple]:
        return [REAL] * self.real_baseline + [(name, S) for name in self.samplers for S in self.steps]

    def check(self) -> None:      # plan every cell (eta too large for eq. 12, a bad skip) before any sampling
        sampler = make_sampler(self.loaded, self.config, self.device)
        for c in self.samplers.values():
            for S in self.steps:
                check_plan(sampler, c.replace(steps=S))

    def prepare(self) -> None:
        self.metric = make_metric(self.metric_spec, self.loaded, self.reference, self.inception_weights,
                                  self.device, cache=self.cache)

    def settings(self) -> dict[str, Any]:
        m = self.metric
        settings = {"ckpt": self.loaded.metadata.get("source", ""), "model": weights_fingerprint(self.loaded.model),
                    "n": self.n, **self.config.manifest(), "metric": m.label, "features": m.fingerprint,
                    "reference": m.reference_name}
        for k in ("steps", "eta", "variance"):        # these vary by cell
            settings.pop(k)
        return settings

    def compute(self, cell: tuple) -> dict[str, Any]:
        t0 = time.perf_counter()
        if cell == REAL:
            real = load_images("digits" if self.reference is None else self.reference, 1,
                               self.loaded.config.image_size, what="reference")
            pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(self.config.seed))[:self.n]
            return dict(sampler=REAL[0], eta="", variance="", steps=0, n=len(pick),
                        distance=self.metric.distance(real[pick]), metric=self.metric.label,
                        seconds=time.perf_counter() - t0)
        name, S = cell
        c = self.samplers[name]
        d = self.metric.distance(generate_samples(self.loaded, self.n, c.replace(steps=S), self.device, self.progress))
        return dict(sampler=name, eta="" if c.variance == "large" else c.eta, variance=c.variance, steps=S,
                    n=self.n, distance=d, metric=self.metric.label, seconds=time.perf_counter() - t0)

    def describe(self, row: dict[str, Any]) -> str:
        if not row["steps"]:
            return f"table1: {row['sampler']} (n={row['n']}): {row['metric']} {row['distance']:.4g}"
        return (f"table1: {row['sampler']:>10} S={row['steps']:<5d} {row['metric']} {row['distance']:.4g} "
                f"({row['seconds']:.1f} s)")

    def markdown(self, rows: list[dict[str, Any]]) -> str:
        return table1_markdown(rows, self.metric.reference_name, str(self.config.skip), self.config.seed)

    def plot(self, rows: list[dict[str, Any]], path: Path) -> None:
        label = self.metric.label
        fig, ax = figure()
        for name in dict.fromkeys(r["sampler"] for r in rows if r["steps"]):
            pts = sorted((r["steps"], r["distance"]) for r in rows if r["sampler"] == name)
            ax.plot(*zip(*pts), marker="o", ls="--" if name == "sigma-hat" else "-", label=name)
        for r in rows:
            if not r["steps"]:
                ax.axhline(r["distance"], color="grey", lw=0.8, ls=":", label=f"{r['sampler']} (floor)")
        log_axes(ax, [r["steps"] for r in rows if r["steps"]], all(r["distance"] > 0 for r in rows))
        ax.set_xlabel("S (sampling steps)")
        ax.set_ylabel(label)
        ax.set_title(f"Table 1: {label} vs S")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        save_figure(fig, path)


def table1(loaded: LoadedModel, config: SampleConfig = SampleConfig(batch_size=250), *,
           steps: Sequence[int] = TABLE1_STEPS, etas: Sequence[float] = TABLE1_ETAS, sigma_hat: bool = True,
           n: int = 1000, metric: str | FeatureMetric = "classifier", reference: Any = None,
           inception_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
           out: str | os.PathLike | None = None, overwrite: bool = False, real_baseline: bool = True,
           progress: bool = True) -> list[dict]:
    """Table 1's shape: the Frechet distance of n samples per (sampler, S) cell to the reference.

    Samplers: eq. 12 with sigma = eta * eq. 16 for each eta, plus sigma-hat (DDPM with variance beta) when
    `sigma_hat`; `config` gives everything else (skip, seed, dtype, batch size, clipping). Every cell starts
    from the same x_T (sample i from the generator seeded from (seed, i)). Returns rows
    dict(sampler, eta, variance, steps, n, distance, metric, seconds); with `real_baseline` (classifier metric
    only) one more row "real digits" (steps 0): n real digits drawn from the reference set, the floor a perfect
    generator reaches at this n. With `out`, writes table1.md, table1.csv, table1.png and table1.json there; a
    rerun with the same settings reuses the cells already in table1.csv.
    """
    out = Path(out) if out is not None else None
    table = Table1(loaded, config, steps, list(etas), sigma_hat, n, metric, reference, inception_weights, device,
                   out, real_baseline, progress)
    return run_table(table, out, overwrite, progress)


def table1_markdown(rows: list[dict], reference_name: str = "reference", skip: str = "uniform", seed: int = 0) -> str:
    """Rows of `table1` as a markdown table: one row per sampler, one column per S (the paper's layout)."""
    label = rows[0]["metric"] if rows else "distance"
    steps = sorted({r["steps"] for r in rows if r["steps"]})
    names = list(dict.fromkeys(r["sampler"] for r in rows if r["steps"]))
    cell = {(r["sampler"], r["steps"]): r["distance"] for r in rows}
    n = sorted({r["n"] for r in rows if r["steps"]})
    lines = [f"{label} to {reference_name} (lower is better); n = {', '.join(map(str, n))} samples per cell, "
             f"{skip} tau, seed {seed}", "",
             "| sampler | " + " | ".join(f"S = {s}" for s in steps) + " |",
             "|---|" + "---:|" * len(steps)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(fmt(cell[(name, s)]) if (name, s) in cell else "-"
                                                 for s in steps) + " |")
    for r in rows:
        if not r["steps"]:
            lines += ["", f"Floor: {r['n']} {r['sampler']} drawn from the reference set score {fmt(r['distance'])}."]
    return "\n".join(lines) + "\n"
