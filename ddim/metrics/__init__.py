"""Evaluation metrics: FID / KID with the FID Inception-v3 network, and the digits classifier's metrics.

The digits classifier's Frechet distance (``evaluate_digits(...)["frechet_distance_classifier"]``) is FID's
formula in the classifier's feature space: report it as the "classifier Frechet distance", never as FID.
"""

from ddim.metrics.classifier import DigitsClassifier, evaluate_digits, load_digits_classifier, train_digits_classifier
from ddim.metrics.fid import (compute_fid, feature_statistics, fid_statistics, frechet_distance,
                              inception_features, kid, load_images_uint8, load_statistics, save_statistics)
from ddim.metrics.inception import FIDInceptionV3, load_inception, resolve_inception_weights

__all__ = [
    "compute_fid", "feature_statistics", "fid_statistics", "frechet_distance", "inception_features", "kid",
    "load_images_uint8", "load_statistics", "save_statistics",
    "FIDInceptionV3", "load_inception", "resolve_inception_weights",
    "DigitsClassifier", "evaluate_digits", "load_digits_classifier", "train_digits_classifier",
]
