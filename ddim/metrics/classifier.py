"""A small CNN classifier for scikit-learn's digits, to evaluate the embedded digits model offline.

FID's Inception network knows nothing about 16 x 16 gray digits and needs weights that may be absent, so the
embedded model is measured with a classifier trained on the real digits instead:

- the share of samples the classifier labels with confidence (max softmax) > 0.9, and the class histogram;
- the *classifier Frechet distance*: the Frechet distance between Gaussians fitted to the classifier's
  penultimate features of the samples and of the real digits. It is FID's formula in another feature space,
  so its values are not comparable with FID and it must not be reported as FID.

Images follow the embedded model's convention: [N, 1, 16, 16] floats in [-1, 1], made from the 8 x 8 digits
(values 0..16) by x / 16 * 2 - 1 and a bilinear 8 -> 16 upsampling (``digits_images``).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.errors import DDIMError, MissingFileError
from ddim import images
from ddim.metrics.fid import feature_statistics, frechet_distance

__all__ = [
    "DigitsClassifier",
    "digits_images",
    "digits_split",
    "train_digits_classifier",
    "save_digits_classifier",
    "load_digits_classifier",
    "evaluate_digits",
    "CLASSIFIER_WEIGHTS",
    "CONFIDENCE_THRESHOLD",
]

CLASSIFIER_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "digits_classifier.safetensors"
CONFIDENCE_THRESHOLD = 0.9
IMAGE_SIZE = 16
_FORMAT = "ddim-digits-classifier-v1"


# --- data ------------------------------------------------------------------------------------------------------
def digits_images(size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits as float32 [N, 1, size, size] in [-1, 1] and int64 labels [N], preprocessed
    exactly as the embedded model's data (`ddim.images.digits_images`)."""
    return images.digits_images(size)


def digits_split(test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stratified train/test split of ``digits_images()``: (x_train, y_train, x_test, y_test)."""
    x, y = digits_images()
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):  # the same share of every class in the test set
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test[idx[:round(len(idx) * test_fraction)]] = True
    return x[~test], y[~test], x[test], y[test]


def _augment(x: Tensor, g: torch.Generator, max_shift: float = 2.0, max_rotate_deg: float = 10.0,
             max_scale: float = 0.1) -> Tensor:
    # Light random affine jitter (shifts up to 2 px, small rotations and zooms) so that the classifier does
    # not rely on the digits being exactly centred, which generated samples need not be.
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(max_rotate_deg)
    scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * max_scale
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * max_shift * 2 / torch.tensor([w, h])  # pixels -> [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample x + 1 with zero padding so that pixels moved in from outside are background (-1)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


# --- the network -----------------------------------------------------------------------------------------------
class DigitsClassifier(nn.Module):
    """CNN for [N, 1, 16, 16] digits in [-1, 1]: forward -> logits [N, 10]; features -> [N, 64] (penultimate)."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)
        self.dropout = nn.Dropout(0.3)
        self.test_accuracy: float | None = None  # held-out accuracy, set by training or loading

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [N, 64] of x [N, 1, 16, 16] (the classifier Frechet distance's space)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise DDIMError(f"expected digits [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}], got {tuple(x.shape)}")
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.max_pool2d(h, 2)                         # [N, 32, 8, 8]
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)     # [N, 64, 4, 4]
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits [N, 10]."""
        return self.fc2(self.dropout(self.features(x)))


@torch.no_grad()
def _predict(model: DigitsClassifier, x: Tensor, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """(softmax probabilities [N, 10], features [N, 64]) in eval mode."""
    was_training = model.training
    model.eval()
    probs, feats = [], []
    for i in range(0, x.shape[0], batch_size):
        f = model.features(x[i:i + batch_size])
        feats.append(f)
        probs.append(model.fc2(f).softmax(dim=1))
    model.train(was_training)
    return torch.cat(probs), torch.cat(feats)


def _accuracy(model: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    probs, _ = _predict(model, x)
    return float((probs.argmax(1) == y).float().mean())


# --- training, saving, loading ---------------------------------------------------------------------------------
def train_digits_classifier(seed: int = 0, epochs: int = 40, batch_size: int = 64, lr: float = 2e-3,
                            progress: bool = False, max_train: int | None = None
                            ) -> tuple[DigitsClassifier, float]:
    """Train on the digits' train split with light augmentation; returns (model in eval mode, test accuracy).

    The shipped weights are ``train_digits_classifier()`` with these defaults. ``max_train`` keeps only the
    first images of the train split (for quick checks); the test split is always the full held-out one.
    """
    x_train, y_train, x_test, y_test = digits_split()
    if max_train is not None:
        x_train, y_train = x_train[:max_train], y_train[:max_train]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # seeded init and dropout without touching the caller's global RNG
        torch.manual_seed(seed)
        model = DigitsClassifier()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * math.ceil(len(y_train) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
        epoch_iter = range(epochs)
        if progress:
            from tqdm import tqdm

            epoch_iter = tqdm(epoch_iter, desc="digits classifier", unit="epoch")
        model.train()
        for _ in epoch_iter:
            order = torch.randperm(len(y_train), generator=g)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                loss = F.cross_entropy(model(_augment(x_train[idx], g)), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    model.test_accuracy = _accuracy(model, x_test, y_test)
    return model, model.test_accuracy


def save_digits_classifier(model: DigitsClassifier, path: str | os.PathLike = CLASSIFIER_WEIGHTS,
                           **metadata: object) -> Path:
    """Write the weights as safetensors, with the held-out accuracy and ``metadata`` as string metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "test_accuracy": repr(model.test_accuracy)}
    meta.update({k: str(v) for k, v in metadata.items()})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def load_digits_classifier(path: str | os.PathLike | None = None, train_if_missing: bool = True,
                           progress: bool = False) -> DigitsClassifier:
    """The classifier in eval mode from ``path`` (default: the shipped asset), trained on the fly if absent."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else CLASSIFIER_WEIGHTS
    if not path.is_file():
        if not train_if_missing:
            raise MissingFileError(f"digits classifier weights not found at {path}")
        warnings.warn(f"digits classifier weights not found at {path}; training one now (a few minutes on a CPU)",
                      stacklevel=2)
        model, _ = train_digits_classifier(progress=progress)
        return model
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != _FORMAT:
        raise DDIMError(f"{path} is not a digits classifier file (format {meta.get('format')!r})")
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    acc = meta.get("test_accuracy")
    model.test_accuracy = float(acc) if acc not in (None, "None") else None
    return model.eval()


# --- evaluation ------------------------------------------------------------------------------------------------
def _as_digits(samples: Tensor | np.ndarray) -> Tensor:
    """Float [N, 1, 16, 16] in [-1, 1] from a tensor in [-1, 1], or from uint8 images (NHWC as in samples.npz,
    or NCHW) in [0, 255]."""
    if isinstance(samples, np.ndarray) and samples.dtype == np.uint8 or \
            isinstance(samples, Tensor) and samples.dtype == torch.uint8:
        x = torch.as_tensor(np.asarray(samples.cpu() if isinstance(samples, Tensor) else samples))
        if x.ndim == 4 and x.shape[-1] == 1 and x.shape[1] != 1:
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        x = images.from_uint8(x)
    else:
        x = torch.as_tensor(np.asarray(samples) if not isinstance(samples, Tensor) else samples)
    x = x.detach().cpu().float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise DDIMError(f"expected samples [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}] in [-1, 1], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DDIMError("samples contain NaN or inf")
    return x.clamp(-1, 1)  # as saving the samples as images would


def evaluate_digits(samples: Tensor | np.ndarray, classifier: DigitsClassifier | None = None
                    ) -> dict[str, float | int | list[int] | None]:
    """Classifier metrics of generated digits: float [N, 1, 16, 16] in [-1, 1], or uint8 images such as
    `np.load("samples.npz")["arr_0"]` (N >= 2).

    Returns dict with
      n_samples; confident_share: share with max softmax > 0.9; mean_confidence;
      histogram: predicted-class counts [10]; confident_histogram: the same over the confident samples only;
      frechet_distance_classifier: the classifier Frechet distance (penultimate features, vs all 1797 real
        digits; not FID); real_confident_share: the confident share of the real digits, for reference;
      classifier_test_accuracy: the classifier's held-out accuracy (None if unknown).
    """
    model = classifier if classifier is not None else load_digits_classifier()
    x = _as_digits(samples)
    probs, feats = _predict(model, x)
    real_probs, real_feats = _predict(model, digits_images()[0])
    conf, pred = probs.max(dim=1)
    confident = conf > CONFIDENCE_THRESHOLD
    fd = frechet_distance(*feature_statistics(feats.double().numpy()),
                          *feature_statistics(real_feats.double().numpy()))
    return {
        "n_samples": int(x.shape[0]),
        "confident_share": float(confident.float().mean()),
        "mean_confidence": float(conf.mean()),
        "histogram": torch.bincount(pred, minlength=10).tolist(),
        "confident_histogram": torch.bincount(pred[confident], minlength=10).tolist(),
        "frechet_distance_classifier": fd,
        "real_confident_share": float((real_probs.max(dim=1).values > CONFIDENCE_THRESHOLD).float().mean()),
        "classifier_test_accuracy": model.test_accuracy,
    }
