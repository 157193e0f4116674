"""Metric construction: a Frechet distance in some feature space against a reference Gaussian.

"classifier": the digits classifier's features against the real digits (a *classifier Frechet distance*, not
FID, not comparable with the paper's numbers); "inception": FID with the FID Inception-v3 network against a
statistics file or an image set. Reference statistics are cached in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddim.checkpoint import LoadedModel
from ddim.errors import DDIMError, MissingDependencyError, MissingFileError
from ddim.generate import weights_fingerprint
from ddim.images import load_images
from ddim.io import write_text_atomic
from ddim.metrics import fid
from ddim.metrics.fid import feature_statistics, frechet_distance, load_statistics, save_statistics
from ddim.metrics.inception import resolve_inception_weights

__all__ = ["FeatureMetric", "classifier_metric", "inception_metric", "make_metric", "METRICS"]

METRICS: tuple[str, ...] = ("classifier", "inception")


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
    write_text_atomic(path.with_suffix(".json"), json.dumps(key, indent=1))    # what the cached numbers came from
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
        mu, sigma = _cached_statistics(cache, key, lambda: fid.feature_statistics(extract(fid.load_images_uint8(ref),
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
