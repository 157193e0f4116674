"""The solver table: sample quality (a Frechet distance) vs network calls, for each solver (`ddim eval solvers`)."""

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
from ddim.evaluation.metric import FeatureMetric, make_metric
from ddim.evaluation.plots import figure, log_axes, save_figure
from ddim.evaluation.runner import Table, fmt, run_table
from ddim.evaluation.samples import generate_samples_with_nfe
from ddim.generate import check_plan, make_sampler, weights_fingerprint

__all__ = ["solvers_table", "SOLVER_NFES", "TS_FIELDS", "parse_variant"]

SOLVER_NFES: tuple[int, ...] = (5, 8, 10, 15, 20, 50)
TS_FIELDS = ("solver", "nfe", "steps", "n", "distance", "metric", "seconds")


def parse_variant(spec: str) -> dict[str, Any]:
    """A row of the solver table, `SOLVER[@SKIP][,afs][,gi=LO:HI][,SETTING=VALUE ...]`, as SampleConfig changes:
    a solver name, optionally its grid (a name of `ddim.schedule.SKIPS`, e.g. @optimized), the analytic first
    step, a guidance interval and the settings of churn / restart (`ddim.sampling.registry.SOLVER_OPTIONS`;
    restart=LO:HI). E.g. "dpm++2m@optimized,afs", "restart,k=1,inner=1", "ddim@trailing,gi=100:600"."""
    from ddim.sampling import SOLVERS
    from ddim.sampling.registry import SOLVER_OPTIONS
    from ddim.schedule import SKIPS
    head, *mods = spec.split(",")             # "," since "+" is in solver names
    name, _, skip = head.partition("@")
    if name not in SOLVERS:
        raise DDIMError(f"solvers: {spec!r}: {name!r} is not one of {', '.join(SOLVERS)}")
    changes: dict[str, Any] = {"solver": name}
    if skip:
        if skip not in SKIPS:
            raise DDIMError(f"solvers: {spec!r}: the grid {skip!r} is not one of {', '.join(SKIPS)}")
        changes["skip"] = skip
    settings: dict[str, Any] = {}
    for mod in mods:
        key, eq, value = mod.partition("=")
        pair = value.split(":")
        number = key in SOLVER_OPTIONS.get(name, ()) and key != "restart" and eq
        if mod == "afs":
            changes["afs"] = True
        elif key in ("gi", "restart") and eq and len(pair) == 2 and all(map(_is_number, pair)):
            lo, hi = float(pair[0]), float(pair[1])
            if key == "gi":
                changes["guidance_interval"] = (lo, hi)
            else:
                settings[key] = (lo, hi)
        elif number and key in ("k", "inner") and value.isdigit():
            settings[key] = int(value)
        elif number and key not in ("k", "inner") and _is_number(value):
            settings[key] = float(value)
        else:
            raise DDIMError(f"solvers: {spec!r}: {mod!r} is not afs, gi=LO:HI or a setting of {name!r} "
                            f"({', '.join(SOLVER_OPTIONS.get(name, ())) or 'none'})")
    if settings:
        changes["solver_options"] = settings
    return changes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class SolversTable(Table):
    name, fields, key_fields = "solvers", TS_FIELDS, ("solver", "steps")
    types = dict(nfe=int, steps=int, n=int, distance=float, seconds=float)

    def __init__(self, loaded: LoadedModel, config: SampleConfig, solvers: Sequence[str], steps: Sequence[int],
                 n: int, metric: str | FeatureMetric, reference: Any, inception_weights: Any,
                 device: str | torch.device, cache: Path | None, progress: bool) -> None:
        self.loaded, self.config, self.device, self.progress = loaded, config, device, progress
        self.n = check_int(n, "n", 2)
        self.steps = check_steps(steps, loaded.schedule.T, "nfes")
        self.variants = {spec: parse_variant(spec) for spec in solvers}
        self.solvers = list(solvers)
        self.classes = bool(getattr(loaded.config, "num_classes", 0))      # labels i % classes, guided as config
        self.metric_spec, self.reference, self.inception_weights, self.cache = metric, reference, inception_weights, cache

    def _config(self, cell: tuple) -> SampleConfig:
        variant, steps = cell
        return self.config.replace(steps=steps, eta=0.0, variance="eta", **self.variants[variant])

    def cells(self) -> list[tuple]:
        return [(name, k) for name in self.solvers for k in self.steps]

    def check(self) -> None:
        sampler = make_sampler(self.loaded, self.config, self.device)
        for cell in self.cells():
            check_plan(sampler, self._config(cell), conditional=self.classes)

    def prepare(self) -> None:
        self.metric = make_metric(self.metric_spec, self.loaded, self.reference, self.inception_weights,
                                  self.device, cache=self.cache)

    def settings(self) -> dict[str, Any]:
        m = self.metric
        settings = {"model": weights_fingerprint(self.loaded.model), "n": self.n, **self.config.manifest(),
                    "metric": m.label, "features": m.fingerprint, "reference": m.reference_name}
        for k in ("steps", "solver", "eta", "variance"):
            settings.pop(k)
        return settings

    def compute(self, cell: tuple) -> dict[str, Any]:
        t0 = time.perf_counter()
        images, nfe = generate_samples_with_nfe(self.loaded, self.n, self._config(cell), self.device, self.progress,
                                                classes=self.classes)
        return dict(solver=cell[0], nfe=nfe, steps=cell[1], n=self.n, distance=self.metric.distance(images),
                    metric=self.metric.label, seconds=time.perf_counter() - t0)

    def describe(self, row: dict[str, Any]) -> str:
        return f"solvers: {row['solver']:>10} NFE={row['nfe']:<4d} {row['metric']} {row['distance']:.4g}"

    def markdown(self, rows: list[dict[str, Any]]) -> str:
        """A row per solver, a column per number of network calls made ("-" where a solver made other counts)."""
        nf = sorted({r["nfe"] for r in rows})
        cell = {(r["solver"], r["nfe"]): r["distance"] for r in rows}
        lines = [f"{self.metric.label} to {self.metric.reference_name} (lower is better) vs network calls; "
                 f"n = {self.n} per cell, {self.config.skip} grid unless a row names one, seed {self.config.seed}"
                 + (f", labels i % classes, guidance {self.config.guidance:g}" if self.classes else ""), "",
                 "| solver | " + " | ".join(f"NFE {k}" for k in nf) + " |", "|---|" + "---:|" * len(nf)]
        for name in self.solvers:
            lines.append(f"| {name} | " + " | ".join(fmt(cell[name, k]) if (name, k) in cell else "-" for k in nf)
                         + " |")
        return "\n".join(lines) + "\n"

    def plot(self, rows: list[dict[str, Any]], path: Path) -> None:
        fig, ax = figure()
        for name in self.solvers:
            pts = sorted((r["nfe"], r["distance"]) for r in rows if r["solver"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        log_axes(ax, [r["nfe"] for r in rows], all(r["distance"] > 0 for r in rows))
        ax.set_xlabel("network calls (NFE)")
        ax.set_ylabel(self.metric.label)
        ax.set_title("solvers: quality vs network calls")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        save_figure(fig, path)


def solvers_table(loaded: LoadedModel, config: SampleConfig = SampleConfig(skip="trailing", batch_size=250), *,
                  solvers: Sequence[str] = ("ddim", "plms", "dpm++2m", "dpm++3m", "unipc"),
                  nfes: Sequence[int] = SOLVER_NFES, n: int = 1000, metric: str | FeatureMetric = "classifier",
                  reference: Any = None, inception_weights: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu", out: str | os.PathLike | None = None,
                  overwrite: bool = False, progress: bool = True) -> list[dict]:
    """The Frechet distance of n samples per (solver, steps) cell, every cell from the same per-sample x_T
    (`ddim eval solvers`). A solver is a row spec, `parse_variant` (a name, or e.g. "dpm++2m@optimized,afs",
    "restart,k=1,inner=1", "dpm++2m,gi=100:600"). A class-conditional model samples label i % classes for sample
    i, guided by config.guidance. `nfes` are the step counts to run; each row's `nfe` is the network calls one sample
    actually took, as the sampler counted them (a one-call solver's NFE is its steps; Heun's at 10 steps is 19),
    and the table and plot are laid out by it. With `out`, writes solvers.md, solvers.csv, solvers.png
    (distance vs NFE) and solvers.json; a rerun resumes like table1."""
    out = Path(out) if out is not None else None
    table = SolversTable(loaded, config, solvers, nfes, n, metric, reference, inception_weights, device, out, progress)
    return run_table(table, out, overwrite, progress)
