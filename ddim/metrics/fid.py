"""Feature statistics, the Frechet distance (FID) and KID between two sets of images.

FID (Heusel et al. 2017) is the Frechet distance between Gaussians fitted to the pool3 features of the FID
Inception-v3 network (``ddim.metrics.inception``):

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

KID (Binkowski et al. 2018) is the unbiased MMD^2 estimate with the cubic polynomial kernel
k(x, y) = (x.y / D + 1)^3, averaged over random subsets.

Statistics files are ``.npz`` with keys ``mu`` [D] and ``sigma`` [D, D] (the pytorch-fid layout), so files
written by one tool can be read by the other.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from torch import nn

from ddim import images as images_mod
from ddim.errors import DDIMError, MissingFileError
from ddim.io import atomic_path
from ddim.readers import check_array_file
from ddim.metrics.inception import load_inception

__all__ = [
    "frechet_distance",
    "feature_statistics",
    "save_statistics",
    "load_statistics",
    "kid",
    "load_images_uint8",
    "to_uint8_nhwc",
    "InceptionFeatures",
    "inception_features",
    "fid_statistics",
    "compute_fid",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = images_mod.IMAGE_EXTENSIONS


# --- Frechet distance and statistics ---------------------------------------------------------------------------
def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (ddof=1, as pytorch-fid) of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise DDIMError(f"features must be [N, D], got shape {features.shape}")
    if features.shape[0] < 2:
        raise DDIMError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
    if not np.isfinite(features).all():
        raise DDIMError("features contain NaN or inf")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DDIMError(f"{name}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DDIMError(f"{name}: mu or sigma contain NaN or inf")
    return mu, sigma


def _clip_roundoff(w: np.ndarray) -> np.ndarray:
    # Eigenvalues of a PSD matrix computed in float64 are off by about D * eps * max|w|; below that they are
    # round-off (negative, or spuriously positive) and are set to 0. Without this, the square roots of the
    # ~1e-16 eigenvalues of a rank-deficient covariance (N <= D) add up to a bias of ~1e-7 or more.
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # tr((S1 S2)^(1/2)) from symmetric eigenproblems only. With S1 = V diag(w) V^T and C = V_k diag(sqrt(w_k))
    # over the k non-zero eigenvalues, S1 S2 = C C^T S2 is similar (up to zeros) to the symmetric PSD k x k
    # matrix C^T S2 C, so its eigenvalues are real and >= 0 and the trace is the sum of their square roots.
    # No inverse is taken, so singular covariances (N <= D) need no eps offset, and no imaginary part appears.
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    keep = _clip_roundoff(w) > 0
    c = v[:, keep] * np.sqrt(w[keep])
    m = c.T @ sigma2 @ c
    return float(np.sqrt(_clip_roundoff(np.linalg.eigvalsh((m + m.T) / 2))).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    # The reference implementations' recipe (TTUR's fid.py, pytorch-fid): scipy's sqrtm of the non-symmetric
    # product; if the product is singular (sqrtm returns non-finite values) add eps to both diagonals; drop the
    # imaginary part that round-off leaves, but refuse one that is too large to be round-off.
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise DDIMError(f"sqrtm left an imaginary component of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: Literal["eigh", "sqrtm"] = "eigh", eps: float = 1e-6) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))   (Dowson & Landau 1982)

    mu: [D], sigma: [D, D]. ``method="eigh"`` (default) takes the trace term from the eigenvalues of the
    symmetric matrix S1^(1/2) S2 S1^(1/2): it is real by construction and stable for singular covariances.
    ``method="sqrtm"`` follows pytorch-fid and TTUR's fid.py (scipy.linalg.sqrtm of S1 S2, eps added to both
    diagonals when the product is singular, small imaginary parts dropped) for bit-level comparison with
    numbers computed by those tools. The two agree to round-off on well-conditioned inputs.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise DDIMError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        raise DDIMError(f"unknown method {method!r}; use 'eigh' or 'sqrtm'")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write ``mu`` [D] and ``sigma`` [D, D] to an .npz (pytorch-fid layout) atomically; returns the path."""
    mu, sigma = _check_gaussian(mu, sigma, "statistics")
    path = Path(path)
    if path.suffix != ".npz":
        raise DDIMError(f"statistics files end in .npz, got {str(path)!r}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy appends no ".npz"
        np.savez(f, mu=mu, sigma=sigma)
    return path


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read (mu [D], sigma [D, D]) as float64 from an .npz with keys ``mu`` and ``sigma``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"statistics file not found: {path}")
    try:
        check_array_file(path)                  # headers against the bytes stored, no pickles, a memory limit
    except DDIMError as e:
        raise DDIMError(f"cannot read statistics from {path}: {e}") from None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.keys() if k in ("mu", "sigma")}
            keys = list(data.keys())
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:  # not an .npz, truncated, pickled
        raise DDIMError(f"cannot read statistics from {path}: {e}") from e
    if "mu" not in arrays or "sigma" not in arrays:
        raise DDIMError(f"{path} is not a statistics file: expected keys 'mu' and 'sigma' "
                         f"(pytorch-fid layout), found {keys}")
    mu, sigma = arrays["mu"], arrays["sigma"]
    return _check_gaussian(mu, sigma, str(path))


def is_statistics_file(path: str | os.PathLike) -> bool:
    """True for a readable .npz holding FID statistics (mu and sigma), not images (an unreadable file is not:
    the image reader then names it)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return {"mu", "sigma"} <= set(data.keys())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


# --- KID -------------------------------------------------------------------------------------------------------
def kid(features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over subsets of the unbiased MMD^2 (Binkowski et al. 2018).

    features: [N1, D] and [N2, D]. Kernel k(x, y) = (x.y / D + coef0)^degree. Each subset draws
    ``subset_size`` rows from each set without replacement (clipped to the smaller set) and computes
    mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j).
    """
    x = np.asarray(features1, dtype=np.float64)
    y = np.asarray(features2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DDIMError(f"features must be [N1, D] and [N2, D], got {x.shape} and {y.shape}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise DDIMError(f"KID needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    if subsets < 1:
        raise DDIMError(f"subsets must be >= 1, got {subsets}")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        k_aa = (a @ a.T / d + coef0) ** degree
        k_bb = (b @ b.T / d + coef0) ** degree
        k_ab = (a @ b.T / d + coef0) ** degree
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        values[s] = within - 2 * k_ab.mean()
    return float(values.mean()), float(values.std())


# --- images ----------------------------------------------------------------------------------------------------
def to_uint8_nhwc(images: np.ndarray | Tensor) -> np.ndarray:
    """Images as uint8 [N, H, W, 3] for Inception.

    Torch tensors follow the package's convention: channel-first [N, C, H, W], floats in [-1, 1] (always read
    so, whatever their actual range, so that results never depend on the batch), converted like
    ``ddim.images.to_uint8`` (round((x + 1) * 127.5), clamped). numpy arrays are channel-last ([N, H, W],
    [N, H, W, 1] or [N, H, W, 3]; [N, C, H, W] with C in {1, 3} is recognised too), as image files and .npz
    sample files are; float arrays there have no fixed convention, so the range is inferred from the whole
    array: [-1, 1] if it has negative values, else [0, 1] if its maximum is <= 1, else [0, 255]. Integer
    images must lie in [0, 255]. Gray images are repeated to 3 channels.
    """
    if isinstance(images, Tensor):
        x = images.detach().cpu()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise DDIMError(f"image tensors must be [N, C, H, W], got {tuple(x.shape)}")
        if x.is_floating_point():
            x = images_mod.to_uint8(x)
        arr = x.permute(0, 2, 3, 1).numpy()
    else:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim == 4 and arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
            arr = arr.transpose(0, 2, 3, 1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DDIMError(f"expected images [N, H, W, 1|3], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DDIMError("no images")
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.min() < 0 or arr.max() > 255:
            raise DDIMError(f"integer images must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
        out = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        f = arr.astype(np.float64)
        if not np.isfinite(f).all():
            raise DDIMError("images contain NaN or inf")
        if f.min() < 0:
            f = (f + 1) * 127.5
        elif f.max() <= 1:
            f = f * 255
        out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    else:
        raise DDIMError(f"unsupported image dtype {arr.dtype}")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def load_images_uint8(path: str | os.PathLike) -> np.ndarray:
    """Images as uint8 [N, H, W, 3] from a folder (searched recursively) or an image .npz, read by
    `ddim.images.load_images` (gray repeated to 3 channels; folder images must all have one size)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        if is_statistics_file(path):
            raise DDIMError(f"{path} holds statistics (mu, sigma), not images")
        return to_uint8_nhwc(images_mod.read_array(path)[0])   # its own range conventions (see to_uint8_nhwc)
    if not path.is_dir():
        raise MissingFileError(f"no image folder or .npz file at {path}")
    return to_uint8_nhwc(images_mod.load_images(path, channels=3))


FEATURE_DIM = 2048   # the FID Inception network's pool3 features


# --- Inception features ----------------------------------------------------------------------------------------
class InceptionFeatures:
    """Callable that maps images to FID Inception pool3 features [N, 2048] (float64 numpy).

    ``weights``: a path to ``pt_inception-2015-12-05-6726825d.pth``, or None to look in $DDIM_INCEPTION_WEIGHTS
    and the torch hub cache (see ``ddim.metrics.inception.resolve_inception_weights``); ``model`` overrides
    both with a ready network (the tests pass randomly initialised ones).
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 model: nn.Module | None = None, download: bool = False) -> None:
        self.device = torch.device(device)
        self.model = (model if model is not None else load_inception(weights, download=download))
        self.model = self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray | Tensor, batch_size: int = 50, progress: bool = False) -> np.ndarray:
        """images: uint8 [N, H, W, 3] (numpy) or [N, C, H, W] tensors (see ``to_uint8_nhwc``) -> [N, 2048]."""
        images = to_uint8_nhwc(images)
        batches = range(0, images.shape[0], batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="inception features", unit="batch")
        out = []
        for i in batches:
            x = torch.from_numpy(images[i:i + batch_size]).to(self.device)
            x = x.permute(0, 3, 1, 2).float()  # uint8-range floats [B, 3, H, W], what the network expects
            out.append(self.model(x).double().cpu().numpy())
        return np.concatenate(out)


def inception_features(images: np.ndarray | Tensor, weights: str | os.PathLike | None = None,
                       batch_size: int = 50, device: str | torch.device = "cpu", progress: bool = False,
                       model: nn.Module | None = None, download: bool = False) -> np.ndarray:
    """FID Inception pool3 features [N, 2048] of images (uint8 [N, H, W, 3] or tensors [N, C, H, W])."""
    return InceptionFeatures(weights, device, model, download)(images, batch_size, progress)


def _as_images(source: str | os.PathLike | np.ndarray | Tensor) -> np.ndarray | Tensor:
    return load_images_uint8(source) if isinstance(source, (str, os.PathLike)) else source


def fid_statistics(images: str | os.PathLike | np.ndarray | Tensor, weights: str | os.PathLike | None = None,
                   batch_size: int = 50, device: str | torch.device = "cpu", progress: bool = False,
                   model: nn.Module | None = None, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the Inception features of images (folder, .npz, array or tensor), for ``fid-stats``."""
    feats = inception_features(_as_images(images), weights, batch_size, device, progress, model, download)
    return feature_statistics(feats)


def compute_fid(images_a: str | os.PathLike | np.ndarray | Tensor,
                reference: str | os.PathLike | np.ndarray | Tensor | Sequence[np.ndarray],
                weights: str | os.PathLike | None = None, batch_size: int = 50,
                device: str | torch.device = "cpu", progress: bool = False, kid_subsets: int = 100,
                kid_subset_size: int = 1000, model: nn.Module | None = None, download: bool = False,
                seed: int = 0) -> dict[str, float | int | None]:
    """FID (and KID) between images_a and a reference.

    images_a: a folder, an image .npz, a uint8 array [N, H, W, 3] or a tensor [N, C, H, W].
    reference: the same kinds, or a statistics .npz (keys mu, sigma) or a (mu, sigma) pair; KID needs
    features of both sets, so it is None when the reference is statistics.
    Returns dict(fid, kid_mean, kid_std, n_a, n_b) (n_b is None for statistics).
    """
    # Everything is read and checked before the first Inception call: a bad reference is refused at once.
    if isinstance(reference, (tuple, list)) and len(reference) == 2:
        mu_b, sigma_b = _check_gaussian(*reference, "reference statistics")
        ref_images = None
    elif isinstance(reference, (str, os.PathLike)) and is_statistics_file(reference):
        mu_b, sigma_b = load_statistics(reference)
        ref_images = None
    else:
        ref_images = _as_images(reference)
    images_a = _as_images(images_a)
    extract = InceptionFeatures(weights, device, model, download)
    if ref_images is None and model is None and mu_b.shape[0] != FEATURE_DIM:
        raise DDIMError(f"{reference if isinstance(reference, (str, os.PathLike)) else 'reference statistics'}: "
                        f"statistics of dimension {mu_b.shape[0]}; the FID Inception network's features have "
                        f"{FEATURE_DIM}")
    feats_a = extract(images_a, batch_size, progress)
    mu_a, sigma_a = feature_statistics(feats_a)
    feats_b = None
    if ref_images is not None:
        feats_b = extract(ref_images, batch_size, progress)
        mu_b, sigma_b = feature_statistics(feats_b)
    result: dict[str, float | int | None] = {
        "fid": frechet_distance(mu_a, sigma_a, mu_b, sigma_b),
        "kid_mean": None, "kid_std": None,
        "n_a": int(feats_a.shape[0]), "n_b": None if feats_b is None else int(feats_b.shape[0]),
    }
    if feats_b is not None:
        result["kid_mean"], result["kid_std"] = kid(feats_a, feats_b, kid_subsets, kid_subset_size, seed=seed)
    return result
