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
same folder reuses the cells already there. `add_eval_parser(sub, model_args)` registers `ddim eval`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddim.checkpoint import LoadedModel
from ddim.generate import initial_noise, network, sample_generators
from ddim.io import atomic_path, write_text_atomic
from ddim.sampling import DDIMSampler

__all__ = ["FeatureMetric", "classifier_metric", "inception_metric", "make_metric", "generate_samples",
           "table1", "table2", "timing", "linear_fit", "add_eval_parser", "METRICS", "TABLE1_STEPS",
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
        from ddim.metrics.fid import feature_statistics, frechet_distance
        if len(images) < 2:
            raise ValueError(f"n: a Frechet distance needs at least 2 images (a covariance), got {len(images)}")
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
    from ddim.metrics.fid import load_statistics, save_statistics
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


def _reference_images(spec: str | Tensor, image_size: int, channels: int) -> Tensor:
    """Reference images [N, C, H, W] in [-1, 1]: a tensor, 'digits', a folder, or an image .npz."""
    from ddim import data
    if isinstance(spec, Tensor):
        return spec
    if spec == "digits":
        return data.digits(image_size).images
    if Path(spec).is_dir():
        ds = data.ImageFolder(spec, image_size, channels=channels)
        return torch.stack([ds[i] for i in range(len(ds))])
    if Path(spec).suffix == ".npz" and Path(spec).is_file():
        return data.npz_arrays(spec).images
    raise FileNotFoundError(f"reference {spec!r}: not 'digits', an image folder, or an image .npz")


def classifier_metric(reference: str | Tensor = "digits", image_size: int = 16, batch_size: int = 256,
                      device: str | torch.device = "cpu", cache: str | os.PathLike | None = None) -> FeatureMetric:
    """Frechet distance in the digits classifier's feature space (`ddim.metrics.classifier`), against the
    reference images (default: all 1797 real digits). For 1-channel 16x16 models only; it is not FID."""
    try:
        from ddim.metrics.classifier import load_digits_classifier
    except ImportError as e:
        raise ImportError("metric 'classifier' needs ddim.metrics.classifier (the digits classifier)") from e
    if image_size != 16:
        raise ValueError(f"metric 'classifier' scores 1x16x16 digits; this model makes {image_size}x{image_size} "
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
        cache, key, lambda: _feature_stats(features, _reference_images(reference, image_size, 1)))
    ref_name = "the 1797 real digits" if isinstance(reference, str) and reference == "digits" else name
    return FeatureMetric("classifier Frechet distance", features, mu, sigma, ref_name, fingerprint)


def _weights_fingerprint(module: Any) -> str:
    if not isinstance(module, torch.nn.Module):
        return ""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _feature_stats(features: Callable[[Tensor], np.ndarray], images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    from ddim.metrics.fid import feature_statistics
    return feature_statistics(features(images))


def inception_metric(reference: str | os.PathLike | None, weights: str | os.PathLike | None,
                     batch_size: int = 50, device: str | torch.device = "cpu",
                     cache: str | os.PathLike | None = None, image_size: int = 32, channels: int = 3
                     ) -> FeatureMetric:
    """FID: Frechet distance of FID Inception-v3 pool3 features against `reference`, a statistics .npz
    (keys mu, sigma, e.g. from `ddim fid-stats`) or an image folder / image .npz."""
    from ddim.metrics import fid
    if reference is None:
        raise ValueError("reference: metric 'inception' needs --reference, a statistics .npz (mu, sigma; "
                         "make one with `ddim fid-stats`) or a folder / .npz of real images")
    from ddim.metrics.inception import resolve_inception_weights
    try:
        weights = resolve_inception_weights(weights)
    except FileNotFoundError as e:
        raise ValueError(f"inception_weights: metric 'inception' needs the FID Inception weights: {e}") from e
    extract = fid.InceptionFeatures(weights, device)
    features = lambda images: extract(images, batch_size)   # noqa: E731  (tensors [N, C, H, W] in [-1, 1])
    ref = Path(reference)
    if not ref.exists():
        raise FileNotFoundError(f"reference {str(ref)!r} does not exist")
    if ref.suffix == ".npz" and _is_statistics(ref):
        mu, sigma = fid.load_statistics(ref)
    else:
        stat = ref.stat()
        key = {"metric": "inception", "reference": str(ref.resolve()), "mtime": stat.st_mtime, "size": stat.st_size}
        mu, sigma = _cached_statistics(cache, key, lambda: fid.feature_statistics(extract(fid.load_images(ref),
                                                                                          batch_size)))
    return FeatureMetric("FID", features, mu, sigma, str(reference), Path(weights).name)


def _is_statistics(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as f:
        return {"mu", "sigma"} <= set(f.keys())


def make_metric(metric: str | FeatureMetric, loaded: LoadedModel, reference: Any = None,
                inception_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                cache: str | os.PathLike | None = None) -> FeatureMetric:
    """A `FeatureMetric` from its name ("classifier" or "inception") for this model's image size."""
    if isinstance(metric, FeatureMetric):
        return metric
    if metric == "classifier":
        if loaded.config.in_channels != 1:
            raise ValueError(f"metric 'classifier' scores 1-channel digits; this model makes "
                             f"{loaded.config.in_channels}-channel images: use metric 'inception'")
        return classifier_metric("digits" if reference is None else reference, loaded.config.image_size,
                                 device=device, cache=cache)
    if metric == "inception":
        return inception_metric(reference, inception_weights, device=device, cache=cache)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


# --- sampling --------------------------------------------------------------------------------------------------
def _sampler(loaded: LoadedModel, device: str | torch.device, dtype: str) -> DDIMSampler:
    return DDIMSampler(network(loaded.model.to(device), dtype), loaded.schedule, loaded.prediction)


def generate_samples(loaded: LoadedModel, n: int, steps: int, eta: float = 0.0, variance: str = "eta",
                     skip: str = "uniform", seed: int = 0, batch_size: int = 250, device: str | torch.device = "cpu",
                     dtype: str = "float32", progress: bool = False) -> Tensor:
    """n samples [n, C, H, W] (CPU, float32, in [-1, 1]); sample i is a function of (seed, i) only, so every
    (steps, eta) cell starts from the same x_T."""
    from tqdm.auto import tqdm
    sampler = _sampler(loaded, device, dtype)
    c = loaded.config
    out = []
    for b in tqdm(range(0, n, batch_size), desc=f"S={steps}", unit="batch", disable=not progress, leave=False):
        gens = sample_generators(seed, range(b, min(b + batch_size, n)))
        x_T = initial_noise((c.in_channels, c.image_size, c.image_size), gens, device)
        out.append(sampler.sample(x_T, steps, eta, skip, variance, gens).float().clamp(-1, 1).cpu())
    return torch.cat(out)


# --- validation --------------------------------------------------------------------------------------------------
def _check_steps(steps: Sequence[int], T: int, name: str = "steps") -> list[int]:
    steps = list(steps)
    if not steps:
        raise ValueError(f"{name}: give at least one step count")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= T:
            raise ValueError(f"{name}: each step count S must be an integer in [1, T={T}], got {s!r}")
    return [int(s) for s in steps]


def _check_positive(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
    """Check `out/<name>.json` against settings; return the CSV rows of an earlier run with the same settings
    (to be reused), or [] for a fresh one. Different settings need overwrite=True."""
    manifest, table = out / f"{name}.json", out / f"{name}.csv"
    settings = json.loads(json.dumps(settings))        # tuples -> lists, as they come back from the file
    old = json.loads(manifest.read_text()) if manifest.exists() else None
    if old is not None and old != settings and not overwrite:
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise FileExistsError(f"{out} holds a {name} run with other settings {diff} (old, new); pass "
                              "--overwrite (overwrite=True) to replace it, or choose another --out")
    rows = []
    if old == settings and not overwrite and table.exists():
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
    _write_text(manifest, json.dumps(settings, indent=1))
    return rows


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _figure(figsize: tuple[float, float] = (5.5, 3.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend, no display
    from matplotlib.figure import Figure
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


def table1(loaded: LoadedModel, steps: Sequence[int] = TABLE1_STEPS, etas: Sequence[float] = TABLE1_ETAS,
           sigma_hat: bool = True, n: int = 1000, skip: str = "uniform", metric: str | FeatureMetric = "classifier",
           reference: Any = None, inception_weights: str | os.PathLike | None = None, seed: int = 0,
           batch_size: int = 250, device: str | torch.device = "cpu", dtype: str = "float32",
           out: str | os.PathLike | None = None, overwrite: bool = False, real_baseline: bool = True,
           progress: bool = True) -> list[dict]:
    """Table 1's shape: the Frechet distance of n samples per (sampler, S) cell to the reference.

    Samplers: eq. 12 with sigma = eta * eq. 16 for each eta, plus sigma-hat (DDPM with variance beta) when
    `sigma_hat`. Returns rows dict(sampler, eta, variance, steps, n, distance, metric, seconds); with
    `real_baseline` (classifier metric only) one more row "real digits" (steps 0): n real digits drawn from the
    reference set, the floor a perfect generator reaches at this n. With `out`, writes table1.md, table1.csv,
    table1.png and table1.json there; a rerun with the same settings reuses the cells already in table1.csv.
    """
    T = loaded.schedule.T
    steps = _check_steps(steps, T)
    n = _check_positive(n, "n", 2)
    batch_size = _check_positive(batch_size, "batch_size")
    etas = list(etas)
    for e in etas:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e < 0:
            raise ValueError(f"etas: each eta must be a finite number >= 0, got {e!r}")
    cells = [(float(e), "eta") for e in etas] + ([(None, "large")] if sigma_hat else [])
    if not cells:
        raise ValueError("etas: give at least one eta, or keep sigma_hat=True")
    if not isinstance(metric, FeatureMetric) and metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    sampler = _sampler(loaded, device, dtype)
    probe = torch.zeros(0, loaded.config.in_channels, loaded.config.image_size, loaded.config.image_size)
    for e, var in cells:       # plan every cell now (eta too large for eq. 12, a bad skip) before any sampling
        for S in steps:
            sampler.iter_sample(probe, S, e or 0.0, skip, var)

    out = Path(out) if out is not None else None
    m = make_metric(metric, loaded, reference, inception_weights, device, cache=out)
    label = m.label
    done: list[dict] = []
    if out is not None:
        settings = {"ckpt": loaded.metadata.get("source", ""), "model": _weights_fingerprint(loaded.model),
                    "n": n, "skip": skip, "seed": seed, "dtype": dtype, "metric": label,
                    "features": m.fingerprint, "reference": m.reference_name}
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
            real = _reference_images("digits" if reference is None else reference, loaded.config.image_size, 1)
            pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]
            emit(dict(sampler="real digits", eta="", variance="", steps=0, n=len(pick),
                      distance=m.distance(real[pick]), metric=label, seconds=time.perf_counter() - t0))
        _log(progress, f"table1: real digits (n={rows[-1]['n']}): {label} {rows[-1]['distance']:.4g}")
    for e, var in cells:
        name = _sampler_name(e, var)
        for S in steps:
            if (name, S) in reused:
                emit(_typed_t1(reused[(name, S)]))
                _log(progress, f"table1: {name:>10} S={S:<5d} {label} {rows[-1]['distance']:.4g} (reused)")
                continue
            t0 = time.perf_counter()
            x = generate_samples(loaded, n, S, e or 0.0, var, skip, seed, batch_size, device, dtype, progress)
            d = m.distance(x)
            emit(dict(sampler=name, eta="" if e is None else e, variance=var, steps=S, n=n, distance=d,
                      metric=label, seconds=time.perf_counter() - t0))
            _log(progress, f"table1: {name:>10} S={S:<5d} {label} {d:.4g} ({rows[-1]['seconds']:.1f} s)")
    if out is not None:
        _write_text(out / "table1.md", table1_markdown(rows, m.reference_name, skip, seed))
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


# --- Table 2 -----------------------------------------------------------------------------------------------------
T2_FIELDS = ("steps", "n", "mse", "seconds")


def table2(loaded: LoadedModel, steps: Sequence[int] = TABLE2_STEPS, images: str | Tensor = "digits",
           n: int = 256, skip: str = "uniform", batch_size: int = 256, device: str | torch.device = "cpu",
           dtype: str = "float32", out: str | os.PathLike | None = None, overwrite: bool = False,
           progress: bool = True) -> list[dict]:
    """Table 2's shape: encode the first n images with S eta = 0 steps (eq. 13), decode with S steps, and
    report the per-dimension MSE with pixels in [0, 1]. images: a tensor [N, C, H, W] in [-1, 1], 'digits',
    a folder, an image file or an .npz. Returns rows dict(steps, n, mse, seconds); with `out`, writes
    table2.md, table2.csv, table2.png (log-log) and table2.json."""
    from ddim.cli import _input_images, reconstruction_mse
    steps = _check_steps(steps, loaded.schedule.T)
    n = _check_positive(n, "n")
    batch_size = _check_positive(batch_size, "batch_size")
    x0 = images[:n] if isinstance(images, Tensor) else _input_images(str(images), loaded, n)
    c = loaded.config
    if tuple(x0.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
        raise ValueError(f"images: shape {tuple(x0.shape[1:])}, the model takes "
                         f"{(c.in_channels, c.image_size, c.image_size)}")
    sampler = _sampler(loaded, device, dtype)
    out = Path(out) if out is not None else None
    done = {}
    if out is not None:
        settings = {"model": _weights_fingerprint(loaded.model),
                    "images": images if isinstance(images, str) else f"{len(images)} given images",
                    "n": len(x0), "skip": skip, "dtype": dtype}
        done = {int(r["steps"]): r for r in _start_run(out, "table2", settings, overwrite)}
    rows: list[dict] = []
    for S in steps:
        if S in done:
            r = done[S]
            rows.append(dict(steps=S, n=int(r["n"]), mse=float(r["mse"]), seconds=float(r["seconds"])))
            _log(progress, f"table2: S={S:<5d} MSE {rows[-1]['mse']:.3g} (reused)")
        else:
            t0 = time.perf_counter()
            se = 0.0
            for b in range(0, len(x0), batch_size):
                xb = x0[b:b + batch_size].to(device)
                rec = sampler.sample(sampler.invert(xb, S, skip), S, 0.0, skip)
                se += reconstruction_mse(xb, rec) * len(xb)      # batch means -> mean over all images
            rows.append(dict(steps=S, n=len(x0), mse=se / len(x0), seconds=time.perf_counter() - t0))
            _log(progress, f"table2: S={S:<5d} MSE {rows[-1]['mse']:.3g} ({rows[-1]['seconds']:.1f} s)")
        if out is not None:
            _write_csv(out / "table2.csv", rows, T2_FIELDS)
    if out is not None:
        _write_text(out / "table2.md", table2_markdown(rows, skip))
        _plot_table2(rows, out / "table2.png")
    return rows


def table2_markdown(rows: list[dict], skip: str = "uniform") -> str:
    """Rows of `table2` as a markdown table, one column per S (the paper's layout)."""
    lines = [f"Reconstruction error (per-dimension MSE, pixels in [0, 1]) of {rows[0]['n'] if rows else 0} images "
             f"encoded and decoded with S eta = 0 steps, {skip} tau", "",
             "| S | " + " | ".join(str(r["steps"]) for r in rows) + " |",
             "|---|" + "---:|" * len(rows),
             "| MSE | " + " | ".join(f"{r['mse']:.2g}" for r in rows) + " |"]
    return "\n".join(lines) + "\n"


def _plot_table2(rows: list[dict], path: Path) -> None:
    fig, ax = _figure()
    ax.plot([r["steps"] for r in rows], [max(r["mse"], 1e-12) for r in rows], marker="o")
    _log_axes(ax, [r["steps"] for r in rows], True)
    ax.set_xlabel("S (encoding and decoding steps)")
    ax.set_ylabel("per-dimension MSE (pixels in [0, 1])")
    ax.set_title("Table 2: reconstruction error vs S")
    ax.grid(True, which="both", alpha=0.3)
    _save_figure(fig, path)


# --- Figure 4: timing ----------------------------------------------------------------------------------------------
TIMING_FIELDS = ("steps", "batch_size", "repeats", "seconds_per_image", "seconds_per_batch")


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line y = slope x + intercept; returns (slope, intercept, R^2). Needs 2+ distinct x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a line needs at least two different x values")
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(((y - (slope * x + intercept)) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def timing(loaded: LoadedModel, steps: Sequence[int] = TIMING_STEPS, batch_size: int = 64,
           device: str | torch.device = "cpu", dtype: str = "float32", repeats: int = 3, warmup: int = 1,
           out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Figure 4's shape: wall-clock seconds per image of eta = 0 sampling vs S (median of `repeats` runs of one
    batch, after `warmup` untimed runs). Returns rows dict(steps, batch_size, repeats, seconds_per_image,
    seconds_per_batch); with `out`, writes timing.md (with the linear fit and R^2), timing.csv, timing.png."""
    steps = _check_steps(steps, loaded.schedule.T)
    batch_size = _check_positive(batch_size, "batch_size")
    repeats = _check_positive(repeats, "repeats")
    warmup = _check_positive(warmup, "warmup", 0)
    out = Path(out) if out is not None else None
    if out is not None:
        if (out / "timing.csv").exists() and not overwrite:
            raise FileExistsError(f"{out / 'timing.csv'} exists; pass --overwrite (overwrite=True) to time again")
        _start_run(out, "timing", {"batch_size": batch_size, "dtype": dtype, "device": str(device)}, True)
    sampler = _sampler(loaded, device, dtype)
    c = loaded.config
    x_T = torch.randn((batch_size, c.in_channels, c.image_size, c.image_size),
                      generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        sampler.sample(x_T, min(steps), 0.0)
    sync()
    rows: list[dict] = []
    for S in steps:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sampler.sample(x_T, S, 0.0)
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
             "| S | " + " | ".join(str(r["steps"]) for r in rows) + " |",
             "|---|" + "---:|" * len(rows),
             "| ms per image | " + " | ".join(f"{r['seconds_per_image'] * 1e3:.3g}" for r in rows) + " |"]
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


# --- command line ----------------------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> LoadedModel:
    from ddim.generate import load_model
    loaded = load_model(args.ckpt, args.config, ema=not args.raw_weights, device=args.device)
    loaded.metadata.setdefault("source", str(args.ckpt or "embedded:digits"))
    return loaded


def cmd_table1(args: argparse.Namespace) -> None:
    rows = table1(_load(args), args.steps, args.etas, not args.no_sigma_hat, args.n, args.skip, args.metric,
                  args.reference, args.inception_weights, args.seed, args.batch_size, args.device, args.dtype,
                  args.out, args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "table1.md").read_text())
    print(f"wrote {args.out}/table1.md, table1.csv, table1.png ({len(rows)} rows)")


def cmd_table2(args: argparse.Namespace) -> None:
    rows = table2(_load(args), args.steps, args.input, args.n, args.skip, args.batch_size, args.device, args.dtype,
                  args.out, args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "table2.md").read_text())
    print(f"wrote {args.out}/table2.md, table2.csv, table2.png ({len(rows)} rows)")


def cmd_timing(args: argparse.Namespace) -> None:
    rows = timing(_load(args), args.steps, args.batch_size, args.device, args.dtype, args.repeats, args.warmup,
                  args.out, args.overwrite, progress=not args.quiet)
    print((Path(args.out) / "timing.md").read_text())
    print(f"wrote {args.out}/timing.md, timing.csv, timing.png ({len(rows)} rows)")


def add_eval_parser(subparsers: Any, model_args_fn: Callable[[argparse.ArgumentParser], None]
                    ) -> argparse.ArgumentParser:
    """Register `eval {table1,table2,timing}` on an argparse subparsers object; `model_args_fn(parser)` adds
    the model flags (--ckpt, --config, --raw-weights, --device, --dtype, ...). Each command sets `fn`."""
    from ddim.schedule import SKIPS
    F = argparse.ArgumentDefaultsHelpFormatter
    e = subparsers.add_parser("eval", help="reproduce the paper's Table 1, Table 2 and Figure 4 (md, csv, png)",
                              formatter_class=F, description=__doc__.split("\n\n")[0],
                              epilog="example: ddim eval table1 --n 500 --out eval   (then `ddim eval table1 "
                                     "--help`, `ddim eval table2 --help`, `ddim eval timing --help`)")
    sub = e.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")

    def common(p: argparse.ArgumentParser, default_steps: Sequence[int], batch: int) -> None:
        model_args_fn(p)
        g = p.add_argument_group("evaluation")
        g.add_argument("--steps", type=int, nargs="+", default=list(default_steps), help="step counts S, in [1, T]")
        g.add_argument("--batch-size", type=int, default=batch, help="images per network call")
        g.add_argument("--out", default="eval", help="output folder (md, csv, png and a json of the settings)")
        g.add_argument("--overwrite", action="store_true", help="recompute everything in --out, replacing an "
                       "earlier run (without it a run with the same settings resumes, keeping finished cells)")
        g.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("table1", help="Frechet distance vs S for each eta and sigma-hat (Table 1)", formatter_class=F,
                       epilog="example: ddim eval table1 --n 500 --steps 10 20 50 100 1000 --etas 0 0.2 0.5 1 "
                              "--out eval   (embedded digits model, classifier Frechet distance); FID: ddim eval "
                              "table1 --ckpt cifar10.ckpt --config cifar10 --skip quad --metric inception "
                              "--reference cifar10-train-stats.npz --inception-weights pt_inception-2015-12-05-"
                              "6726825d.pth --n 50000")
    common(p, TABLE1_STEPS, 250)
    g = p.add_argument_group("table 1")
    g.add_argument("--etas", type=float, nargs="*", default=list(TABLE1_ETAS), help="eta values, one row each "
                   "(give none for the sigma-hat row alone)")
    g.add_argument("--no-sigma-hat", action="store_true", help="leave out the sigma-hat (DDPM, variance beta) row")
    g.add_argument("--n", type=int, default=1000, help="samples per cell (>= 2; the paper uses 50000)")
    g.add_argument("--skip", default="uniform", choices=SKIPS, help="the sub-sequence tau (the paper: quad for "
                   "CIFAR-10, uniform for CelebA)")
    g.add_argument("--metric", default="classifier", choices=METRICS, help="'classifier': Frechet distance in the "
                   "digits classifier's features vs the real digits (1x16x16 models; not FID); 'inception': FID")
    g.add_argument("--reference", default=None, help="inception: a statistics .npz (mu, sigma; `ddim fid-stats`) "
                   "or real images (folder, .npz); classifier: real images (default: the 1797 digits)")
    g.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth for --metric "
                   "inception (else $DDIM_INCEPTION_WEIGHTS, else the torch hub cache)")
    g.add_argument("--seed", type=int, default=0, help="sample i of every cell starts from the x_T of (seed, i)")
    p.set_defaults(fn=cmd_table1)

    p = sub.add_parser("table2", help="reconstruction error vs S (Table 2)", formatter_class=F,
                       epilog="example: ddim eval table2 --input digits --n 256 --steps 10 20 50 100 200 500 1000 "
                              "--out eval")
    common(p, TABLE2_STEPS, 256)
    g = p.add_argument_group("table 2")
    g.add_argument("--input", default="digits", help="images to encode: 'digits', a folder, an image or an .npz")
    g.add_argument("--n", type=int, default=256, help="use the first n images")
    g.add_argument("--skip", default="uniform", choices=SKIPS, help="the sub-sequence tau")
    p.set_defaults(fn=cmd_table2)

    p = sub.add_parser("timing", help="seconds per image vs S, with a linear fit (Figure 4)", formatter_class=F,
                       epilog="example: ddim eval timing --batch-size 64 --repeats 3 --out eval")
    common(p, TIMING_STEPS, 64)
    g = p.add_argument_group("timing")
    g.add_argument("--repeats", type=int, default=3, help="timed runs per S (the median is reported)")
    g.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.set_defaults(fn=cmd_timing)
    return e
