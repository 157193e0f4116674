"""Images in and out, in one place: a user's image spec -> float tensors in [-1, 1]; uint8 both ways; PNGs, grids.

Conventions used by the whole package:
- float images are [N, C, H, W] in [-1, 1] (C = 1 or 3); uint8 pixels map to them by x / 127.5 - 1, and back by
  round((x + 1) * 127.5) clamped to [0, 255] (`from_uint8`, `to_uint8`, the only two conversions);
- an image spec (`load_images`) is "digits" (scikit-learn's 1797 digits, preprocessed by `digits_images`), a
  folder of image files (searched recursively, sorted, hidden files skipped), an .npz / .npy array file, or one
  image file;
- every PNG this package writes is written atomically (`ddim.io`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ddim.errors import DDIMError, MissingDependencyError, MissingFileError, one_line
from ddim.io import atomic_path
from ddim.readers import check_array_file, open_image

__all__ = ["IMAGE_EXTENSIONS", "from_uint8", "to_uint8", "array_to_nchw", "digits_images", "image_files",
           "read_image", "pil_to_array", "from_pixels", "HIGH_BIT_MODES", "read_array", "resize_center_crop", "load_images",
           "make_grid", "display_scale",
           "save_image_grid",
           "save_images", "write_png"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_ARRAY_KEYS = ("images", "x_train", "x", "arr_0")      # which array of a several-array .npz holds the images
_LABEL_KEYS = ("labels", "y_train", "y")


# --- pixels <-> tensors ---------------------------------------------------------------------------------------
def from_uint8(x: np.ndarray | Tensor) -> Tensor:
    """uint8 pixels (any shape) -> float32 in [-1, 1]: x / 127.5 - 1."""
    if not isinstance(x, Tensor):
        x = np.asarray(x)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """Float images in [-1, 1] (any shape) -> uint8 in [0, 255], rounded to nearest and clamped (on the CPU)."""
    return ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def array_to_nchw(arr: np.ndarray, what: str) -> Tensor:
    """[N, H, W], [N, H, W, C] or [N, C, H, W] (C in 1, 3), uint8, uint16 or float in [0, 1] / [-1, 1] -> float32
    [N, C, H, W] in [-1, 1]. `what` names the source in errors."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
        elif arr.shape[1] not in (1, 3):
            raise DDIMError(f"{what}: cannot find a channel axis of size 1 or 3 in shape {arr.shape}")
    else:
        raise DDIMError(f"{what}: expected an image array [N, H, W], [N, H, W, C] or [N, C, H, W]; "
                        f"got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DDIMError(f"{what}: the array holds no images")
    if arr.dtype == np.uint8:
        return from_uint8(np.ascontiguousarray(arr))
    if arr.dtype == np.uint16:                               # 16-bit pixels, at full precision
        return torch.from_numpy(arr.astype(np.float32) / 65535.0) * 2 - 1
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DDIMError(f"{what}: the array holds NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)) * 2 - 1
        if lo >= -1.0 and hi <= 1.0:
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        raise DDIMError(f"{what}: float pixels must lie in [0, 1] or [-1, 1], found [{lo:.4g}, {hi:.4g}]")
    raise DDIMError(f"{what}: pixels must be uint8 or float, got dtype {arr.dtype}")


def digits_images(size: int = 16) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits as float32 [N, 1, size, size] in [-1, 1] and int64 labels [N].

    The 0..16 gray values map to [-1, 1] (x / 16 * 2 - 1), then a bilinear resize 8 -> size (align_corners
    False), clamped. The embedded model's training data and the digits classifier both use exactly this.
    Ships inside the scikit-learn wheel: no download.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("the digits data set needs scikit-learn: pip install 'ddim[data]'") from e
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise DDIMError(f"image_size must be an integer >= 8 for digits, got {size!r}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32))[:, None] / 16.0 * 2.0 - 1.0   # [1797, 1, 8, 8]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1), torch.from_numpy(d.target.astype(np.int64))


# --- reading files ---------------------------------------------------------------------------------------------
def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under folder (by extension, recursive, sorted, hidden names skipped)."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` (bicubic, antialiased), then crop the centre size x size."""
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# 16-bit (and 32-bit integer) grey images: Pillow's convert("L") would clip them to 0 / 255, so they are read
# through float32 at full precision instead.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def pil_to_array(img: Image.Image, channels: int = 3, image_size: int | None = None) -> np.ndarray:
    """A PIL image -> [H, W, channels]: uint8 for 8-bit images, float32 in [0, 1] for 16-bit ones (full
    precision, not clipped to 8 bits); with image_size, resized (shorter side) and centre-cropped."""
    if img.mode in HIGH_BIT_MODES:
        img = img.convert("F")
        if image_size is not None and img.size != (image_size, image_size):
            img = resize_center_crop(img, image_size)
        arr = (np.asarray(img, dtype=np.float32) / 65535.0).clip(0.0, 1.0)[:, :, None]
        return np.repeat(arr, 3, axis=2) if channels == 3 else arr
    img = img.convert("L" if channels == 1 else "RGB")
    if image_size is not None and img.size != (image_size, image_size):
        img = resize_center_crop(img, image_size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def from_pixels(x: np.ndarray) -> Tensor:
    """`pil_to_array`'s pixels (uint8, or float32 in [0, 1]) -> float32 in [-1, 1], same shape."""
    if x.dtype == np.uint8:
        return from_uint8(x)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) * 2 - 1


def read_image(path: str | os.PathLike, channels: int = 3, image_size: int | None = None) -> np.ndarray:
    """One image file -> [H, W, channels], uint8 (8-bit files) or float32 in [0, 1] (16-bit files, see
    `pil_to_array`); with image_size, resized (shorter side) and centre-cropped. Opened by
    `ddim.readers.open_image`: a file over its pixel limit is refused before decoding."""
    path = Path(path)
    with open_image(path) as img:
        try:
            img.load()
            return pil_to_array(img, channels, image_size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:   # Pillow's ways of saying "corrupt"
            raise DDIMError(f"could not decode image {str(path)!r}: {one_line(e)}") from None


def read_array(path: str | os.PathLike, key: str | None = None, key_name: str | None = "key="
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (and labels, where the file has them) from an .npz or .npy file, read without pickle.

    key: the array's name in the .npz; by default the only array, else the first of "images", "x_train", "x",
    "arr_0" (`key_name` names the option that chooses one in errors; None: the caller has no such option).
    Labels: "labels", "y_train" or "y", when their length matches. Checked first by `ddim.readers.check_array_file`
    (headers against the bytes stored, no pickles, a memory limit).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"array file {str(path)!r} does not exist")
    check_array_file(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as z:
            names = list(z.keys())
            if key is None:
                key = names[0] if len(names) == 1 else next((k for k in _ARRAY_KEYS if k in names), None)
                if key is None:
                    how = f"choose one with {key_name}" if key_name else f"name the images {_ARRAY_KEYS[0]!r}"
                    raise DDIMError(f"{path}: several arrays {names} and none named {' / '.join(_ARRAY_KEYS)}; "
                                    + how)
            if key not in names:
                raise DDIMError(f"{path}: no array named {key!r} ({key_name or 'key'}); it holds {names}")
            arr = z[key]
            labels = next((z[k].astype(np.int64) for k in _LABEL_KEYS
                           if k in names and k != key and z[k].shape[:1] == arr.shape[:1]), None)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, DDIMError):
            raise
        raise DDIMError(f"{path}: not a readable .npz/.npy file (truncated or corrupt?) ({one_line(e)})") from None
    return arr, labels


def load_images(spec: str | os.PathLike | Tensor, channels: int | None = None, image_size: int | None = None,
                n: int | None = None, what: str = "images") -> Tensor:
    """A user's image spec -> float32 [N, C, H, W] in [-1, 1] (the first n images when n is given).

    spec: a tensor (returned as is), "digits", a folder, an .npz / .npy file, or one image file. Files are
    converted to `channels` (1 or 3; default: 3 for image files, the array's own for arrays) and, with
    image_size, resized and centre-cropped (image files) or checked (arrays, digits). `what` names the
    parameter in errors (e.g. "--input").
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DDIMError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(spec, Tensor):
        x = spec
    elif str(spec) == "digits" and not Path(spec).exists():
        x = digits_images(image_size or 16)[0]
    else:
        path = Path(spec)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise DDIMError(f"{what} {str(path)!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
            files = files[:n] if n is not None else files
            arrays = [read_image(f, channels or 3, image_size) for f in files]
            if len({a.dtype for a in arrays}) > 1:           # 8- and 16-bit files mixed: all as [0, 1] floats
                arrays = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in arrays]
            if len({a.shape for a in arrays}) > 1:
                shapes = list({a.shape[:2]: f for a, f in zip(arrays, files)}.items())[:2]
                sizes = ", ".join(f"{h}x{w} {f.name}" for (h, w), f in shapes)
                raise DDIMError(f"{what} {str(path)!r}: images differ in size ({sizes}); resize them to one size")
            x = from_pixels(np.stack(arrays)).permute(0, 3, 1, 2)
        elif path.suffix in (".npz", ".npy"):
            x = array_to_nchw(read_array(path, key_name=None)[0], f"{what} {str(path)!r}")
        elif path.is_file():
            x = from_pixels(read_image(path, channels or 3, image_size)).permute(2, 0, 1)[None]
        else:
            raise MissingFileError(f"{what} {str(spec)!r}: not a folder, an .npz/.npy file, an image file or 'digits'")
    x = x[:n] if n is not None else x
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise DDIMError(f"{what} {_name(spec)}: images have {x.shape[1]} channels, {channels} are needed")
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        raise DDIMError(f"{what} {_name(spec)}: images are {x.shape[-2]}x{x.shape[-1]}, the model takes "
                        f"{image_size}x{image_size}")
    return x.contiguous()


def _name(spec: object) -> str:
    return f"({len(spec)} given images)" if isinstance(spec, Tensor) else repr(str(spec))


# --- writing -----------------------------------------------------------------------------------------------------
def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile images [N, C, H, W] (float in [-1, 1] or uint8; C = 1 or 3) into one uint8 array [H', W', C]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DDIMError(f"images must be [N, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    if nrow < 1:
        raise DDIMError(f"nrow must be >= 1, got {nrow}")
    imgs = images.cpu() if images.dtype == torch.uint8 else to_uint8(images)
    n, c, h, w = imgs.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    grid = np.full((padding + nrows * (h + padding), padding + ncol * (w + padding), c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y:y + h, x:x + w] = imgs[i].permute(1, 2, 0).numpy()
    return grid


def write_png(array: np.ndarray, path: str | os.PathLike, durable: bool = False) -> Path:
    """Write an [H, W, C] uint8 array as a PNG, atomically (many small files: no fsync unless durable)."""
    path = Path(path)
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    with atomic_path(path, durable=durable) as tmp:
        img.save(tmp, format="PNG")
    return path


def display_scale(size: int, target: int = 64) -> int:
    """The integer zoom that makes an image of side ``size`` at least ``target`` pixels (1 if it already is)."""
    return max(1, -(-target // max(1, size)))


def save_image_grid(images: Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 2,
                    scale: int | str = 1) -> Path:
    """Save images [N, C, H, W] (float in [-1, 1] or uint8, C = 1 or 3) as one PNG grid, atomically.

    ``scale`` zooms the grid by an integer factor with nearest-neighbour pixels (the pixels stay exact, only
    bigger); ``"auto"`` zooms small images to at least 64 pixels a side, so a grid of 16x16 digits is visible.
    A strip is a grid with one row (nrow = N).
    """
    if scale == "auto":
        scale = display_scale(max(images.shape[-2:]))
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise DDIMError(f"scale must be an integer >= 1 or 'auto', got {scale!r}")
    grid = make_grid(images, nrow=nrow, padding=padding)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return write_png(grid, path)


def save_images(images: Tensor, folder: str | os.PathLike, prefix: str = "", start: int | Sequence[int] = 0
                ) -> list[Path]:
    """Save each image of [N, C, H, W] as `{folder}/{prefix}{index:06d}.png`, atomically; returns the paths.

    start: the index of the first image (the rest follow), or one index per image (strided shards)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DDIMError(f"images must be [N, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    imgs = images.cpu() if images.dtype == torch.uint8 else to_uint8(images)
    indices = range(start, start + len(imgs)) if isinstance(start, int) else list(start)
    if len(indices) != len(imgs):
        raise DDIMError(f"start: {len(indices)} indices for {len(imgs)} images")
    return [write_png(img.permute(1, 2, 0).numpy(), Path(folder) / f"{prefix}{i:06d}.png")
            for i, img in zip(indices, imgs)]
