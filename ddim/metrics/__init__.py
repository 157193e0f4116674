"""Evaluation metrics: FID / KID with the FID Inception-v3 network, and the digits classifier's metrics."""

from ddim.metrics.fid import (compute_fid, feature_statistics, fid_statistics, frechet_distance,
                              inception_features, kid, load_images, load_statistics, save_statistics)
from ddim.metrics.inception import FIDInceptionV3, load_inception, resolve_inception_weights

__all__ = [
    "compute_fid", "feature_statistics", "fid_statistics", "frechet_distance", "inception_features", "kid",
    "load_images", "load_statistics", "save_statistics",
    "FIDInceptionV3", "load_inception", "resolve_inception_weights",
]
