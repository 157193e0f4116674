"""The paper's evaluations as commands: Table 1 (sample quality vs S and eta), Table 2 (reconstruction error vs
S) and Figure 4 (sampling time vs S). Each writes a markdown table, a CSV and a PNG plot into one folder.

- `table1`: n samples per (sampler, S) cell, all cells starting from the same x_T (sample i of every cell uses
  the generator seeded from (seed, i)), scored by the Frechet distance of their features to a reference:
  metric "classifier" uses the digits classifier's feature space against the real digits (the numbers are a
  *classifier Frechet distance*, not FID, and are not comparable with the paper's); metric "inception" is FID
  with the FID Inception-v3 network against a statistics file or an image set.
- `table2`: encode real images with the eta = 0 ODE (eq. 13), decode with S steps, report the per-dimension
  MSE with pixels in [0, 1].
- `timing`: seconds per image of eta = 0 sampling vs S, with a least-squares line and its R^2.

Runs are resumable: each finished cell is written to the CSV at once, and a rerun with the same settings in the
same folder reuses the cells already there. How to sample (skip, seed, dtype, batch size, solver, ...) comes in
one `SampleConfig`; `ddim.commands.eval` is the command line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddim.checkpoint import LoadedModel
from ddim.config import SampleConfig, check_int, check_steps
from ddim.errors import DDIMError, MissingDependencyError, MissingFileError, OutputExistsError
from ddim.generate import (check_plan, decode, encode, image_shape, initial_noise, make_sampler,
                           resolve_batch_size, sample_batch, sample_generators, weights_fingerprint)
from ddim.images import load_images
from ddim.io import atomic_path, write_text_atomic
from ddim.metrics import fid
from ddim.metrics.fid import feature_statistics, frechet_distance, load_statistics, save_statistics
from ddim.metrics.inception import resolve_inception_weights
from ddim.runs import open_run
from ddim.train import read_metrics as train_metrics

__all__ = ["FeatureMetric", "classifier_metric", "inception_metric", "make_metric", "generate_samples",
           "table1", "solvers_table", "table2", "timing", "linear_fit", "reconstruction_mse", "read_metrics", "plot_training",
           "METRICS", "TABLE1_STEPS",
           "TABLE1_ETAS", "TABLE2_STEPS", "TIMING_STEPS"]

METRICS: tuple[str, ...] = ("classifier", "inception")
TABLE1_STEPS: tuple[int, ...] = (10, 20, 50, 100, 1000)
TABLE1_ETAS: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0)
TABLE2_STEPS: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)
TIMING_STEPS: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)


# --- metrics: features -> Gaussian -> Frechet distance to a reference --------------------------------------------
@dataclass
class FeatureMetric:
    """A Frechet distance in some feature space: `features(images [N, C, H, W] in [-1, 1]) -> [N, D]`, and the
    reference Gaussian (mu [D], sigma [D, D]). `label` names the number in tables ("FID", "classifier Frechet
    distance"); `reference_name` says what the reference is."""

    label: str
    features: Callable[[Tensor], np.ndarray]
    mu: np.ndarray
    sigma: np.ndarray
    reference_name: str = "reference"
    fingerprint: str = ""     # identifies the feature network's weights, so cached numbers are not mixed up

    def distance(self, images: Tensor) -> float:
        """Frechet distance between the features of images [N, C, H, W] (N >= 2) and the reference."""
        if len(images) < 2:
            raise DDIMError(f"n: a Frechet distance needs at least 2 images (a covariance), got {len(images)}")
        mu, sigma = feature_statistics(self.features(images))
        return frechet_distance(mu, sigma, self.mu, self.sigma)


def _batched_features(fn: Callable[[Tensor], Tensor], batch_size: int, device: str | torch.device
                      ) -> Callable[[Tensor], np.ndarray]:
    @torch.no_grad()
    def features(images: Tensor) -> np.ndarray:
        out = [fn(images[i:i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out).flatten(1).numpy()
    return features


def _cached_statistics(cache: Path | None, key: dict, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Reference (mu, sigma) from `cache/reference-<hash of key>.npz` when present, else computed and stored."""
    if cache is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache) / f"reference-{key['metric']}-{digest}.npz"
    if path.exists():
        return load_statistics(path)
    mu, sigma = compute()
    save_statistics(path, mu, sigma)
    _write_text(path.with_suffix(".json"), json.dumps(key, indent=1))    # what the cached numbers came from
    return mu, sigma


def classifier_metric(reference: str | Tensor = "digits", image_size: int = 16, batch_size: int = 256,
                      device: str | torch.device = "cpu", cache: str | os.PathLike | None = None) -> FeatureMetric:
    """Frechet distance in the digits classifier's feature space (`ddim.metrics.classifier`), against the
    reference images (default: all 1797 real digits). For 1-channel 16x16 models only; it is not FID."""
    try:
        from ddim.metrics.classifier import load_digits_classifier
    except ImportError as e:
        raise MissingDependencyError("metric 'classifier' needs ddim.metrics.classifier (the digits classifier)") from e
    if image_size != 16:
        raise DDIMError(f"metric 'classifier' scores 1x16x16 digits; this model makes {image_size}x{image_size} "
                         "images: use --metric inception")
    clf = load_digits_classifier()
    clf = clf.to(device).eval() if isinstance(clf, torch.nn.Module) else clf
    features = _batched_features(clf.features, batch_size, device)
    name = reference if isinstance(reference, str) else f"{len(reference)} given images"
    fingerprint = _weights_fingerprint(clf)
    key = {"metric": "classifier", "reference": name, "image_size": image_size, "classifier": fingerprint}
    if isinstance(reference, Tensor):
        key["sha"] = hashlib.sha256(reference.float().cpu().numpy().tobytes()).hexdigest()[:16]
    mu, sigma = _cached_statistics(
        cache, key, lambda: _feature_stats(features, load_images(reference, 1, image_size, what='reference')))
    ref_name = "the 1797 real digits" if isinstance(reference, str) and reference == "digits" else name
    return FeatureMetric("classifier Frechet distance", features, mu, sigma, ref_name, fingerprint)


def _weights_fingerprint(module: Any) -> str:
    return weights_fingerprint(module) if isinstance(module, torch.nn.Module) else ""


def _feature_stats(features: Callable[[Tensor], np.ndarray], images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return feature_statistics(features(images))


def inception_metric(reference: str | os.PathLike | None, weights: str | os.PathLike | None,
                     batch_size: int = 50, device: str | torch.device = "cpu",
                     cache: str | os.PathLike | None = None, image_size: int = 32, channels: int = 3
                     ) -> FeatureMetric:
    """FID: Frechet distance of FID Inception-v3 pool3 features against `reference`, a statistics .npz
    (keys mu, sigma, e.g. from `ddim fid-stats`) or an image folder / image .npz."""
    if reference is None:
        raise DDIMError("reference: metric 'inception' needs --reference, a statistics .npz (mu, sigma; "
                         "make one with `ddim fid-stats`) or a folder / .npz of real images")
    try:
        weights = resolve_inception_weights(weights)
    except FileNotFoundError as e:
        raise DDIMError(f"inception_weights: metric 'inception' needs the FID Inception weights: {e}") from e
    extract = fid.InceptionFeatures(weights, device)
    features = lambda images: extract(images, batch_size)   # noqa: E731  (tensors [N, C, H, W] in [-1, 1])
    ref = Path(reference)
    if not ref.exists():
        raise MissingFileError(f"reference {str(ref)!r} does not exist")
    if ref.suffix == ".npz" and fid.is_statistics_file(ref):
        mu, sigma = fid.load_statistics(ref)
    else:
        stat = ref.stat()
        key = {"metric": "inception", "reference": str(ref.resolve()), "mtime": stat.st_mtime, "size": stat.st_size}
        mu, sigma = _cached_statistics(cache, key, lambda: fid.feature_statistics(extract(fid.load_images(ref),
                                                                                          batch_size)))
    return FeatureMetric("FID", features, mu, sigma, str(reference), Path(weights).name)


def make_metric(metric: str | FeatureMetric, loaded: LoadedModel, reference: Any = None,
                inception_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                cache: str | os.PathLike | None = None) -> FeatureMetric:
    """A `FeatureMetric` from its name ("classifier" or "inception") for this model's image size."""
    if isinstance(metric, FeatureMetric):
        return metric
    if metric == "classifier":
        if loaded.config.in_channels != 1:
            raise DDIMError(f"metric 'classifier' scores 1-channel digits; this model makes "
                             f"{loaded.config.in_channels}-channel images: use metric 'inception'")
        return classifier_metric("digits" if reference is None else reference, loaded.config.image_size,
                                 device=device, cache=cache)
    if metric == "inception":
        return inception_metric(reference, inception_weights, device=device, cache=cache)
    raise DDIMError(f"metric must be one of {METRICS}, got {metric!r}")


# --- sampling --------------------------------------------------------------------------------------------------
def generate_samples(loaded: LoadedModel, n: int, config: SampleConfig, device: str | torch.device = "cpu",
                     progress: bool = False) -> Tensor:
    """n samples [n, C, H, W] (CPU, float32, in [-1, 1]) with the config's sampler; sample i is a function of
    (config.seed, i) only, so every (steps, eta) cell starts from the same x_T."""
    from tqdm.auto import tqdm
    sampler = make_sampler(loaded, config, device)
    bs = resolve_batch_size(config, loaded, device, n)
    out = []
    for b in tqdm(range(0, n, bs), desc=f"S={config.steps}", unit="batch", disable=not progress, leave=False):
        gens = sample_generators(config.seed, range(b, min(b + bs, n)))
        x_T = initial_noise(image_shape(loaded), gens, device)
        out.append(sample_batch(sampler, x_T, config, gens).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def reconstruction_mse(x0: Tensor, x_rec: Tensor) -> float:
    """Per-dimension MSE in [0, 1] pixel units, as in the paper's Table 2."""
    return (((x_rec.float().clamp(-1, 1) - x0.float()) / 2) ** 2).mean().item()


# --- files: atomic writes, manifests, resumable CSVs -------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _write_csv(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    _write_text(path, buf.getvalue())


def _start_run(out: Path, name: str, settings: dict, overwrite: bool) -> list[dict]:
    """The manifest out/<name>.json (see `ddim.runs.open_run`); the CSV rows of an earlier run with the same
    settings (to be reused), or [] for a fresh one."""
    resume = open_run(out, f"{name}.json", settings, overwrite, f"{name} run", exclusive=False)
    table = out / f"{name}.csv"
    if not (resume and table.exists()):
        return []
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _figure(figsize: tuple[float, float] = (5.5, 3.8)):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend, no display
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError("the plots need matplotlib: pip install 'ddim[eval]'") from e
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _log_axes(ax: Any, steps: Sequence[int], log_y: bool) -> None:
    """Log x with the S values as plain tick labels; log y (when asked) with plain-number labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(steps)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if log_y:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 1000 else f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if ax.get_ylim()[1] / ax.get_ylim()[0] < 30 else NullFormatter())


def _fmt(x: float) -> str:
    """Table numbers: two decimals as in the paper, one from 100 up, 3 significant digits below 1."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


# --- Table 1 -----------------------------------------------------------------------------------------------------
T1_FIELDS = ("sampler", "eta", "variance", "steps", "n", "distance", "metric", "seconds")


def _sampler_name(eta: float | None, variance: str) -> str:
    return "sigma-hat" if variance == "large" else f"eta = {eta:g}"


def table1(loaded: LoadedModel, config: SampleConfig = SampleConfig(batch_size=250), *,
           steps: Sequence[int] = TABLE1_STEPS, etas: Sequence[float] = TABLE1_ETAS, sigma_hat: bool = True,
           n: int = 1000, metric: str | FeatureMetric = "classifier", reference: Any = None,
           inception_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
           out: str | os.PathLike | None = None, overwrite: bool = False, real_baseline: bool = True,
           progress: bool = True) -> list[dict]:
    """Table 1's shape: the Frechet distance of n samples per (sampler, S) cell to the reference.

    Samplers: eq. 12 with sigma = eta * eq. 16 for each eta, plus sigma-hat (DDPM with variance beta) when
    `sigma_hat`; `config` gives everything else (skip, seed, dtype, batch size, clipping). Returns rows
    dict(sampler, eta, variance, steps, n, distance, metric, seconds); with `real_baseline` (classifier metric
    only) one more row "real digits" (steps 0): n real digits drawn from the reference set, the floor a perfect
    generator reaches at this n. With `out`, writes table1.md, table1.csv, table1.png and table1.json there; a
    rerun with the same settings reuses the cells already in table1.csv.
    """
    T = loaded.schedule.T
    steps = check_steps(steps, T)
    n = check_int(n, "n", 2)
    etas = list(etas)
    cells = [config.replace(eta=e, variance="eta") for e in etas] + (
        [config.replace(eta=0.0, variance="large")] if sigma_hat else [])      # validates every eta
    if not cells:
        raise DDIMError("etas: give at least one eta, or keep sigma_hat=True")
    if not isinstance(metric, FeatureMetric) and metric not in METRICS:
        raise DDIMError(f"metric must be one of {METRICS}, got {metric!r}")
    sampler = make_sampler(loaded, config, device)
    for cell in cells:       # plan every cell now (eta too large for eq. 12, a bad skip) before any sampling
        for S in steps:
            check_plan(sampler, cell.replace(steps=S))
    skip, seed = config.skip, config.seed

    out = Path(out) if out is not None else None
    m = make_metric(metric, loaded, reference, inception_weights, device, cache=out)
    label = m.label
    done: list[dict] = []
    if out is not None:
        settings = {"ckpt": loaded.metadata.get("source", ""), "model": weights_fingerprint(loaded.model),
                    "n": n, **config.manifest(), "metric": label, "features": m.fingerprint,
                    "reference": m.reference_name}
        for k in ("steps", "eta", "variance"):        # these vary by cell
            settings.pop(k)
        done = _start_run(out, "table1", settings, overwrite)

    rows: list[dict] = []
    reused = {(r["sampler"], int(r["steps"])): r for r in done}

    def emit(row: dict) -> None:
        rows.append(row)
        if out is not None:
            _write_csv(out / "table1.csv", rows, T1_FIELDS)

    if real_baseline and metric == "classifier":
        key = ("real digits", 0)
        if key in reused and int(reused[key]["n"]) == n:
            emit(_typed_t1(reused[key]))
        else:
            t0 = time.perf_counter()
            real = load_images("digits" if reference is None else reference, 1, loaded.config.image_size,
                               what="reference")
            pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]
            emit(dict(sampler="real digits", eta="", variance="", steps=0, n=len(pick),
                      distance=m.distance(real[pick]), metric=label, seconds=time.perf_counter() - t0))
        _log(progress, f"table1: real digits (n={rows[-1]['n']}): {label} {rows[-1]['distance']:.4g}")
    for cell in cells:
        e, var = (None, "large") if cell.variance == "large" else (cell.eta, "eta")
        name = _sampler_name(e, var)
        for S in steps:
            if (name, S) in reused:
                emit(_typed_t1(reused[(name, S)]))
                _log(progress, f"table1: {name:>10} S={S:<5d} {label} {rows[-1]['distance']:.4g} (reused)")
                continue
            t0 = time.perf_counter()
            x = generate_samples(loaded, n, cell.replace(steps=S), device, progress)
            d = m.distance(x)
            emit(dict(sampler=name, eta="" if e is None else e, variance=var, steps=S, n=n, distance=d,
                      metric=label, seconds=time.perf_counter() - t0))
            _log(progress, f"table1: {name:>10} S={S:<5d} {label} {d:.4g} ({rows[-1]['seconds']:.1f} s)")
    if out is not None:
        _write_text(out / "table1.md", table1_markdown(rows, m.reference_name, str(skip), seed))
        _plot_table1(rows, out / "table1.png", label)
    return rows


def _typed_t1(r: dict) -> dict:
    return dict(sampler=r["sampler"], eta=float(r["eta"]) if r["eta"] not in ("", None) else "",
                variance=r["variance"], steps=int(r["steps"]), n=int(r["n"]), distance=float(r["distance"]),
                metric=r["metric"], seconds=float(r["seconds"]))


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
        lines.append(f"| {name} | " + " | ".join(_fmt(cell[(name, s)]) if (name, s) in cell else "-"
                                                 for s in steps) + " |")
    for r in rows:
        if not r["steps"]:
            lines += ["", f"Floor: {r['n']} {r['sampler']} drawn from the reference set score {_fmt(r['distance'])}."]
    return "\n".join(lines) + "\n"


def _plot_table1(rows: list[dict], path: Path, label: str) -> None:
    fig, ax = _figure()
    for name in dict.fromkeys(r["sampler"] for r in rows if r["steps"]):
        pts = sorted((r["steps"], r["distance"]) for r in rows if r["sampler"] == name)
        ax.plot(*zip(*pts), marker="o", ls="--" if name == "sigma-hat" else "-", label=name)
    for r in rows:
        if not r["steps"]:
            ax.axhline(r["distance"], color="grey", lw=0.8, ls=":", label=f"{r['sampler']} (floor)")
    _log_axes(ax, [r["steps"] for r in rows if r["steps"]], all(r["distance"] > 0 for r in rows))
    ax.set_xlabel("S (sampling steps)")
    ax.set_ylabel(label)
    ax.set_title(f"Table 1: {label} vs S")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    _save_figure(fig, path)


# --- solvers: quality vs NFE ------------------------------------------------------------------------------------
SOLVER_NFES: tuple[int, ...] = (5, 8, 10, 15, 20, 50)
TS_FIELDS = ("solver", "nfe", "steps", "n", "distance", "metric", "seconds")


def solvers_table(loaded: LoadedModel, config: SampleConfig = SampleConfig(skip="trailing", batch_size=250), *,
                  solvers: Sequence[str] = ("ddim", "plms", "dpm++2m", "dpm++3m", "unipc"),
                  nfes: Sequence[int] = SOLVER_NFES, n: int = 1000, metric: str | FeatureMetric = "classifier",
                  reference: Any = None, inception_weights: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu", out: str | os.PathLike | None = None,
                  overwrite: bool = False, progress: bool = True) -> list[dict]:
    """The Frechet distance of n samples per (solver, NFE) cell, every cell from the same per-sample x_T
    (`ddim eval solvers`). Every solver here makes one network call per step, so NFE = S. With `out`, writes
    solvers.md, solvers.csv, solvers.png (distance vs NFE) and solvers.json; a rerun resumes like table1."""
    from ddim.sampling import SOLVERS
    n = check_int(n, "n", 2)
    nfes = check_steps(nfes, loaded.schedule.T, "nfes")
    for name in solvers:
        if name not in SOLVERS:
            raise DDIMError(f"solvers: {name!r} is not one of {', '.join(SOLVERS)}")
    cells = [config.replace(solver=name, steps=k, eta=0.0, variance="eta") for name in solvers for k in nfes]
    sampler = make_sampler(loaded, config, device)
    for cell in cells:
        check_plan(sampler, cell)
    out = Path(out) if out is not None else None
    m = make_metric(metric, loaded, reference, inception_weights, device, cache=out)
    done: list[dict] = []
    if out is not None:
        settings = {"model": weights_fingerprint(loaded.model), "n": n, **config.manifest(), "metric": m.label,
                    "features": m.fingerprint, "reference": m.reference_name}
        for k in ("steps", "solver", "eta", "variance"):
            settings.pop(k)
        done = _start_run(out, "solvers", settings, overwrite)
    reused = {(r["solver"], int(r["nfe"])): r for r in done}
    rows: list[dict] = []
    for cell in cells:
        key = (cell.solver, cell.steps)
        if key in reused:
            r = reused[key]
            rows.append(dict(solver=r["solver"], nfe=int(r["nfe"]), steps=int(r["steps"]), n=int(r["n"]),
                             distance=float(r["distance"]), metric=r["metric"], seconds=float(r["seconds"])))
        else:
            t0 = time.perf_counter()
            d = m.distance(generate_samples(loaded, n, cell, device, progress))
            rows.append(dict(solver=cell.solver, nfe=cell.steps, steps=cell.steps, n=n, distance=d, metric=m.label,
                             seconds=time.perf_counter() - t0))
        _log(progress, f"solvers: {cell.solver:>10} NFE={cell.steps:<4d} {m.label} {rows[-1]['distance']:.4g}")
        if out is not None:
            _write_csv(out / "solvers.csv", rows, TS_FIELDS)
    if out is not None:
        nf = sorted({r["nfe"] for r in rows})
        lines = [f"{m.label} to {m.reference_name} (lower is better) vs network calls; n = {n} per cell, "
                 f"{config.skip} grid, seed {config.seed}", "",
                 "| solver | " + " | ".join(f"NFE {k}" for k in nf) + " |", "|---|" + "---:|" * len(nf)]
        cell = {(r["solver"], r["nfe"]): r["distance"] for r in rows}
        for name in solvers:
            lines.append(f"| {name} | " + " | ".join(_fmt(cell[(name, k)]) for k in nf) + " |")
        _write_text(out / "solvers.md", "\n".join(lines) + "\n")
        fig, ax = _figure()
        for name in solvers:
            pts = sorted((r["nfe"], r["distance"]) for r in rows if r["solver"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        _log_axes(ax, nf, all(r["distance"] > 0 for r in rows))
        ax.set_xlabel("network calls (NFE)")
        ax.set_ylabel(m.label)
        ax.set_title("solvers: quality vs network calls")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        _save_figure(fig, out / "solvers.png")
    return rows


# --- Table 2 -----------------------------------------------------------------------------------------------------
T2_FIELDS = ("solver", "steps", "n", "mse", "seconds")


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
    steps = check_steps(steps, loaded.schedule.T)
    n = check_int(n, "n")
    config = config.replace(batch_size=resolve_batch_size(config, loaded, device, n))
    configs = {name: config.replace(solver=name) for name in (solvers or [config.solver])}  # validates the names
    x0 = load_images(images, *image_shape(loaded)[:2], n=n, what="images")
    sampler = make_sampler(loaded, config, device)           # the solver is a walk option: one sampler serves all
    for c in configs.values():
        for S in steps:
            check_plan(sampler, c.replace(steps=S))
    out = Path(out) if out is not None else None
    done = {}
    if out is not None:
        settings = {"model": weights_fingerprint(loaded.model),
                    "images": images if isinstance(images, str) else f"{len(images)} given images",
                    "n": len(x0), "skip": config.manifest()["skip"], "dtype": config.dtype}
        done = {(r["solver"], int(r["steps"])): r for r in _start_run(out, "table2", settings, overwrite)}
    # an earlier run's cells that this one does not ask for stay in the CSV, for a later rerun
    others = [r for (name, S), r in done.items() if name not in configs or S not in steps]
    x = x0.to(device)
    rows: list[dict] = []
    for name, c in configs.items():
        for S in steps:
            if (name, S) in done:
                r = done[name, S]
                rows.append(dict(solver=name, steps=S, n=int(r["n"]), mse=float(r["mse"]), seconds=float(r["seconds"])))
                _log(progress, f"table2: {name} S={S:<5d} MSE {rows[-1]['mse']:.3g} (reused)")
            else:
                t0 = time.perf_counter()
                cfg = c.replace(steps=S)
                rec = decode(sampler, encode(sampler, x, cfg), cfg)
                rows.append(dict(solver=name, steps=S, n=len(x0), mse=reconstruction_mse(x, rec),
                                 seconds=time.perf_counter() - t0))
                _log(progress, f"table2: {name} S={S:<5d} MSE {rows[-1]['mse']:.3g} ({rows[-1]['seconds']:.1f} s)")
            if out is not None:
                _write_csv(out / "table2.csv", others + rows, T2_FIELDS)
    if out is not None:
        _write_text(out / "table2.md", table2_markdown(rows, str(config.skip)))
        _plot_table2(rows, out / "table2.png")
    return rows


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


def _columns_by_s(rows: list[dict], name: str, cells: list[str]) -> list[str]:
    """A one-row markdown table with one column per S, the paper's layout: header, rule, the row."""
    return ["| S | " + " | ".join(str(r["steps"]) for r in rows) + " |", "|---|" + "---:|" * len(rows),
            f"| {name} | " + " | ".join(cells) + " |"]


def _plot_table2(rows: list[dict], path: Path) -> None:
    fig, ax = _figure()
    for name in dict.fromkeys(r["solver"] for r in rows):
        mine = [r for r in rows if r["solver"] == name]
        ax.plot([r["steps"] for r in mine], [max(r["mse"], 1e-12) for r in mine], marker="o", label=name)
    _log_axes(ax, [r["steps"] for r in rows], True)
    ax.set_xlabel("S (encoding and decoding steps)")
    ax.set_ylabel("per-dimension MSE (pixels in [0, 1])")
    ax.set_title("Table 2: reconstruction error vs S")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save_figure(fig, path)


# --- Figure 4: timing ----------------------------------------------------------------------------------------------
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


def timing(loaded: LoadedModel, config: SampleConfig = SampleConfig(), *, steps: Sequence[int] = TIMING_STEPS,
           device: str | torch.device = "cpu", repeats: int = 3, warmup: int = 1,
           out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Figure 4's shape: wall-clock seconds per image of sampling vs S with the config's sampler (median of
    `repeats` runs of one batch of config.batch_size, after `warmup` untimed runs). Returns rows dict(steps,
    batch_size, repeats, seconds_per_image, seconds_per_batch); with `out`, writes timing.md (with the linear
    fit and R^2), timing.csv, timing.png."""
    steps = check_steps(steps, loaded.schedule.T)
    batch_size = resolve_batch_size(config, loaded, device, sys.maxsize)    # "auto": the largest batch that fits
    repeats = check_int(repeats, "repeats")
    warmup = check_int(warmup, "warmup", 0)
    sampler = make_sampler(loaded, config, device)
    for S in steps:
        check_plan(sampler, config.replace(steps=S))
    out = Path(out) if out is not None else None
    if out is not None:
        if (out / "timing.csv").exists() and not overwrite:
            raise OutputExistsError(f"{out / 'timing.csv'} exists; pass --overwrite (overwrite=True) to time again")
        _start_run(out, "timing", {"batch_size": batch_size, **config.manifest(), "device": str(device)}, True)
    c = loaded.config
    x_T = torch.randn((batch_size, c.in_channels, c.image_size, c.image_size),
                      generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        sample_batch(sampler, x_T, config.replace(steps=min(steps)))
    sync()
    rows: list[dict] = []
    for S in steps:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample_batch(sampler, x_T, config.replace(steps=S))
            sync()
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        rows.append(dict(steps=S, batch_size=batch_size, repeats=repeats, seconds_per_image=t / batch_size,
                         seconds_per_batch=t))
        _log(progress, f"timing: S={S:<5d} {t / batch_size * 1e3:.3f} ms per image ({t:.2f} s per batch)")
        if out is not None:
            _write_csv(out / "timing.csv", rows, TIMING_FIELDS)
    if out is not None:
        _write_text(out / "timing.md", timing_markdown(rows, str(device)))
        _plot_timing(rows, out / "timing.png")
    return rows


def timing_markdown(rows: list[dict], device: str = "cpu") -> str:
    """Rows of `timing` as a markdown table, with the least-squares line through them when there are 2+ S."""
    lines = [f"Sampling time per image (eta = 0, batch {rows[0]['batch_size'] if rows else '?'}, {device}, median "
             f"of {rows[0]['repeats'] if rows else '?'} runs)", "",
             *_columns_by_s(rows, "ms per image", [f"{r['seconds_per_image'] * 1e3:.3g}" for r in rows])]
    if len({r["steps"] for r in rows}) >= 2:
        a, b, r2 = linear_fit([r["steps"] for r in rows], [r["seconds_per_image"] for r in rows])
        lines += ["", f"Least-squares line: ms per image = {a * 1e3:.4g} x S {'-' if b < 0 else '+'} "
                      f"{abs(b) * 1e3:.3g}, R^2 = {r2:.4f}"]
    return "\n".join(lines) + "\n"


def _plot_timing(rows: list[dict], path: Path) -> None:
    fig, ax = _figure()
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
    _save_figure(fig, path)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


# --- training curves -----------------------------------------------------------------------------------------------
def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl (a torn last line, from a crash mid-write, is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"run directory {str(run_dir)!r} has no metrics.jsonl (is it a `ddim train` run?)")
    records = [rec for _, rec in train_metrics(path)[0]]
    if not records:
        raise DDIMError(f"{path} holds no records yet")
    return records


def plot_training(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """The loss curve of a training run (raw per logged step and its running mean) and the learning rate, from
    metrics.jsonl, as a PNG (default: RUN_DIR/loss.png)."""
    records = read_metrics(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "loss.png"
    steps = np.array([r["step"] for r in records if "loss" in r], np.float64)
    loss = np.array([r["loss"] for r in records if "loss" in r], np.float64)
    fig, ax = _figure((6.5, 3.8))
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss (logged steps)")
    k = max(1, len(loss) // 20)
    if len(loss) > k:
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
    _save_figure(fig, out)
    return out
