"""The FID Inception-v3 network: TensorFlow's 2015-12-05 Inception graph in PyTorch, pool3 features [B, 2048].

FID numbers are only comparable when computed with this exact network and preprocessing (Heusel et al. 2017;
TTUR's ``fid.py``). Its structure differs from the usual Inception-v3 in a few places, all reproduced here:

- the classifier has 1008 outputs (``fc`` [1008, 2048]; unused for FID, kept so the weight file loads as is);
- the average pools inside Mixed_5b-d (block A), Mixed_6b-e (block C) and Mixed_7b (block E) do not count the
  zero padding (``count_include_pad=False``), and the pool branch of the last block, Mixed_7c, is a max pool;
- inputs are resized to 299 x 299 with TensorFlow 1's ``resize_bilinear`` (align_corners=False, no half-pixel
  centres; see ``tf1_resize_bilinear``) and scaled as (x - 128) / 128 from uint8-range values.

With the weights ``pt_inception-2015-12-05-6726825d.pth`` (the ones pytorch-fid and torch-fidelity use), the
features equal torch-fidelity's "inception-v3-compat" extractor up to float round-off.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.errors import DDIMError, MissingFileError, one_line

__all__ = [
    "FIDInceptionV3",
    "tf1_resize_bilinear",
    "resolve_inception_weights",
    "load_inception",
    "INCEPTION_WEIGHTS_FILENAME",
    "INCEPTION_WEIGHTS_URL",
    "INCEPTION_WEIGHTS_ENV",
]

INCEPTION_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                         + INCEPTION_WEIGHTS_FILENAME)
INCEPTION_WEIGHTS_ENV = "DDIM_INCEPTION_WEIGHTS"
_HASH_PREFIX = "6726825d"  # the sha256 prefix in the file name (torch.hub's convention)
FID_INPUT_SIZE = 299


# --- TensorFlow 1 bilinear resize ------------------------------------------------------------------------------
def _tf1_source_grid(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    # TF1 resize_bilinear, align_corners=False, half_pixel_centers=False ("legacy" scaler):
    # src = dst * (in / out) in float32, no half-pixel shift; neighbours floor(src) and min(ceil(src), in - 1).
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lower = src.floor()
    lerp = src - lower
    upper = src.ceil().clamp(max=in_size - 1)
    return lower.long().to(device), upper.long().to(device), lerp.to(device)


def tf1_resize_bilinear(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize x [B, C, H, W] to ``size`` like TensorFlow 1's ``tf.image.resize_bilinear`` (align_corners=False).

    Output pixel (i, j) samples the input at (i * H / H_out, j * W / W_out) -- no half-pixel shift, unlike
    ``F.interpolate(mode="bilinear", align_corners=False)`` -- so the last rows and columns repeat the input's
    edge when upsampling. Interpolates along W first, then H, as TF does.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if x.ndim != 4:
        raise DDIMError(f"images must be [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x
    y0, y1, wy = _tf1_source_grid(in_h, out_h, x.device)
    x0, x1, wx = _tf1_source_grid(in_w, out_w, x.device)
    wx, wy = wx.to(x.dtype), wy.to(x.dtype)
    left, right = x[..., x0], x[..., x1]                      # [B, C, H, W_out]
    rows = left + (right - left) * wx
    top, bottom = rows[..., y0, :], rows[..., y1, :]          # [B, C, H_out, W_out]
    return top + (bottom - top) * wy[:, None]


# --- building blocks -------------------------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TF's) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: Tensor) -> Tensor:
    # TF's SAME average pooling divides by the number of real (non-padding) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pool branches (35 x 35)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17 (strided 3x3, strided double 3x3, max pool)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], dim=1)


class InceptionC(nn.Module):
    """Mixed_6b/c/d/e: factorised 7x7 branches (1x7 and 7x1 convolutions) at 17 x 17."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, b7d, bp], dim=1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class InceptionE(nn.Module):
    """Mixed_7b/c: expanded 3x3 branches (1x3 and 3x1 side by side) at 8 x 8.

    ``pool="avg"`` (Mixed_7b) or ``pool="max"`` (Mixed_7c: the 2015 graph max-pools in its last block).
    """

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise DDIMError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], dim=1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, b3d, bp], dim=1)


# --- the network -----------------------------------------------------------------------------------------------
class FIDInceptionV3(nn.Module):
    """FID Inception-v3: forward(x uint8-range floats [B, 3, H, W]) -> pool3 features [B, 2048].

    The state dict matches ``pt_inception-2015-12-05-6726825d.pth`` key for key. Construction gives random
    weights; use ``load_inception`` for the real ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # the 2015 graph's 1008-way logits; not used for features

    @staticmethod
    def preprocess(x: Tensor) -> Tensor:
        """uint8-range floats [B, 3, H, W] -> TF1-bilinear 299 x 299 -> (x - 128) / 128."""
        x = tf1_resize_bilinear(x.float(), FID_INPUT_SIZE)
        return (x - 128) / 128

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, 3, H, W] with values in [0, 255] -> pool3 features [B, 2048]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise DDIMError(f"Inception takes images [B, 3, H, W] in [0, 255], got shape {tuple(x.shape)}")
        x = self.preprocess(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))   # 149 -> 147 -> 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                       # 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,   # 35 -> 17
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):                 # 17 -> 8
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)                       # pool3: [B, 2048]


# --- weights ---------------------------------------------------------------------------------------------------
def _hub_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME


def resolve_inception_weights(weights: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Path of the FID Inception weights: the argument, else $DDIM_INCEPTION_WEIGHTS, else the torch hub cache.

    With ``download=True`` a missing hub-cache file is fetched from INCEPTION_WEIGHTS_URL (hash checked).
    Raises MissingFileError (a FileNotFoundError) saying where to put the file when it cannot be found.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingFileError(f"FID Inception weights not found at {path} (given explicitly). Download "
                                    f"{INCEPTION_WEIGHTS_URL} and pass its path.")
        return path
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise MissingFileError(f"FID Inception weights not found at {path} (from ${INCEPTION_WEIGHTS_ENV}). "
                                    f"Download {INCEPTION_WEIGHTS_URL} to that path.")
        return path
    cached = _hub_cache_path()
    if cached.is_file():
        return cached
    if download:
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(INCEPTION_WEIGHTS_URL, str(cached), hash_prefix=_HASH_PREFIX)
        except Exception as e:  # offline, or a bad download: say where to put the file by hand
            raise MissingFileError(f"could not download the FID Inception weights ({e}). "
                                    + _missing_weights_help(cached)) from e
        return cached
    raise MissingFileError("FID Inception weights not found. " + _missing_weights_help(cached))


def _missing_weights_help(cached: Path) -> str:
    return (f"Download {INCEPTION_WEIGHTS_URL} (about 92 MB) and either put it at {cached}, set "
            f"{INCEPTION_WEIGHTS_ENV}=/path/to/{INCEPTION_WEIGHTS_FILENAME}, or pass the path explicitly "
            f"(--inception-weights on the command line, weights=... in Python).")


def load_inception(weights: str | os.PathLike | None = None, download: bool = False,
                   device: str | torch.device = "cpu") -> FIDInceptionV3:
    """FIDInceptionV3 in eval mode with the 2015-12-05 weights (see ``resolve_inception_weights``)."""
    path = resolve_inception_weights(weights, download)
    expected = (f"it should be {INCEPTION_WEIGHTS_FILENAME}, the FID Inception state dict from "
                f"{INCEPTION_WEIGHTS_URL}")
    try:  # weights_only: a pickle never runs code, and any unreadable file is named rather than traced back
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DDIMError(f"{path}: not a readable torch weights file ({one_line(e)}); {expected}") from None
    model = FIDInceptionV3()
    if not isinstance(state_dict, dict):
        raise DDIMError(f"{path}: holds a {type(state_dict).__name__}, not a state dict; {expected}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # missing / unexpected keys or shapes: the message lists them over many lines
        raise DDIMError(f"{path}: does not match the FID Inception-v3 ({str(e).splitlines()[0]} ...); "
                        f"{expected}") from None
    return model.to(device).eval()
