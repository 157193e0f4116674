"""Datasets as float tensors [C, H, W] in [-1, 1] (for training; pixels, files and PNGs are `ddim.images`).

Every loader returns a `torch.utils.data.Dataset` whose items are float32 tensors [C, H, W] in [-1, 1]
(labels, where a format has them, are kept on the dataset as `.labels` and never returned: training is
unconditional). Small formats are held in memory as an `ImageTensorDataset` (`.images` [N, C, H, W]), which the
trainer indexes directly; image folders and CelebA decode files lazily.

Nothing here downloads anything. `download_cifar10` is an optional helper for users with internet access.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ddim.errors import DDIMError, MissingFileError, one_line
from ddim.images import array_to_nchw, digits_images, from_uint8, read_array, resize_center_crop

__all__ = [
    "ImageTensorDataset", "ImageFolder", "cifar10", "celeba", "npz_arrays", "idx_file", "digits",
    "build_dataset", "DATASETS", "CELEBA_CROP",
]

# The official DDIM/DDPM CelebA preprocessing: torchvision `F.crop(img, top=57, left=25, height=128,
# width=128)` on the 178x218 aligned image (the official `Crop(x1=57, x2=185, y1=25, y2=153)` passes x1 as the
# *top* row and y1 as the *left* column), then `Resize(64)`. As a PIL box (left, upper, right, lower):
CELEBA_CROP: tuple[int, int, int, int] = (25, 57, 25 + 128, 57 + 128)
_CELEBA_SIZE = (178, 218)  # (width, height) of img_align_celeba


def _pil_to_tensor(img: Image.Image, channels: int) -> Tensor:
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return from_uint8(arr).permute(2, 0, 1).contiguous()


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise DDIMError(f"channels must be 1 or 3, got {channels!r}")


# --- in-memory datasets -----------------------------------------------------------------------------------
class ImageTensorDataset(Dataset):
    """Images held in memory: `.images` float32 [N, C, H, W] in [-1, 1]; optional `.labels` [N] (not returned)."""

    def __init__(self, images: Tensor, labels: Tensor | None = None, name: str = "arrays") -> None:
        if images.ndim != 4:
            raise DDIMError(f"dataset {name!r}: images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise DDIMError(f"dataset {name!r} is empty: it holds no images")
        self.images = images.to(torch.float32).contiguous()
        self.labels = labels
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def digits(image_size: int = 16) -> ImageTensorDataset:
    """scikit-learn's 1797 handwritten digits, preprocessed by `ddim.images.digits_images`; labels as `.labels`."""
    x, labels = digits_images(image_size)
    return ImageTensorDataset(x, labels, name="digits")


def npz_arrays(path: str | os.PathLike, key: str | None = None) -> ImageTensorDataset:
    """Images (and labels where the file has them) from a .npz or .npy file, as `ddim.images.read_array` reads
    them: uint8 pixels, or floats in [0, 1] or [-1, 1]; shapes [N, H, W], [N, H, W, C] or [N, C, H, W]."""
    arr, labels = read_array(path, key, key_name="data.key")
    return ImageTensorDataset(array_to_nchw(arr, str(path)), None if labels is None else torch.from_numpy(labels),
                              name=Path(path).name)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.is_file():
        raise MissingFileError(f"IDX path {str(path)!r} does not exist")
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile, a truncated .gz
        raise DDIMError(f"{path}: not a readable IDX file ({one_line(e)})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DDIMError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() if raw else 'empty'})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DDIMError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    body = raw[4 + 4 * ndim:]
    if len(body) != count * dtype.itemsize:
        raise DDIMError(f"{path}: header says {dims} ({count * dtype.itemsize} bytes) but the file has "
                        f"{len(body)} data bytes (truncated or not IDX)")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def idx_file(path: str | os.PathLike, labels_path: str | os.PathLike | None = None) -> ImageTensorDataset:
    """MNIST / Fashion-MNIST images in IDX format (`*-images-idx3-ubyte`, optionally .gz) -> [N, 1, 28, 28]."""
    path = Path(path)
    arr = _read_idx(path)
    if arr.ndim != 3:
        raise DDIMError(f"{path}: expected an image file with 3 dimensions [N, H, W], got {arr.shape} "
                        "(is this the labels file?)")
    labels = torch.from_numpy(_read_idx(Path(labels_path)).astype(np.int64)) if labels_path else None
    return ImageTensorDataset(from_uint8(np.ascontiguousarray(arr))[:, None], labels, name=path.name)


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global except the few numpy constructors a CIFAR-10 batch needs (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a refused global, truncation (UnpicklingError, EOFError), garbage
        raise DDIMError(f"{path}: not a readable CIFAR-10 batch file ({one_line(e)})") from None
    if not isinstance(d, dict):
        raise DDIMError(f"{path}: not a CIFAR-10 batch (expected a dict, got {type(d).__name__})")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DDIMError(f"{path}: not a CIFAR-10 batch (keys {sorted(map(str, d))}; need 'data' and 'labels')")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DDIMError(f"{path}: CIFAR-10 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DDIMError(f"{path}: CIFAR-10 'labels' are not integers ({one_line(e)})") from None
    if labels.shape != (data.shape[0],):
        raise DDIMError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(root: str | os.PathLike, train: bool = True) -> ImageTensorDataset:
    """CIFAR-10 from the official python pickle batches (`data_batch_1..5` or `test_batch`) -> [N, 3, 32, 32].

    root may be the `cifar-10-batches-py` folder or its parent. Trust: the official files are pickles, and
    unpickling can run code. They are read with an unpickler that only admits numpy's array constructors and
    then checked to be dicts with uint8 `data` [N, 3072] and `labels`; anything else is a DDIMError naming the file.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingFileError(f"CIFAR-10 root {str(root)!r}: missing {', '.join(missing)} (expected the python "
                               "version, cifar-10-python.tar.gz, extracted; see ddim.data.download_cifar10)")
    parts = [_load_cifar_batch(folder / n) for n in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ImageTensorDataset(from_uint8(x), torch.from_numpy(y), name="cifar10")


def download_cifar10(root: str | os.PathLike) -> Path:  # pragma: no cover - needs internet
    """Download and extract the official CIFAR-10 python batches into root (needs internet; never called by tests)."""
    import tarfile
    import urllib.request
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists():
        urllib.request.urlretrieve("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", archive)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar-10-batches-py"


# --- file-backed datasets -----------------------------------------------------------------------------------
_FULL_DECODE_BYTES = 64 * 2**20  # folders up to this size are fully decoded at start-up (measured 27-100 MiB/s)
def _list_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))


class ImageFolder(Dataset):
    """Every Pillow-readable file under root (recursive, sorted), as float32 [C, H, W] in [-1, 1].

    resize=True: scale the shorter side to image_size, then centre crop image_size x image_size.
    resize=False: every image must already be image_size x image_size (mixed sizes are an error).
    Every file is checked when the dataset is built, so a bad file fails now and not hours into a run:
    Pillow's verify() (PNG: every chunk and checksum) and, for folders up to 64 MiB, a full decode (which
    finds truncation in any format). Unreadable files are skipped with a warning; if none are left, it is an
    error. A file that still fails later (changed on disk) is a DDIMError naming it.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, channels: int = 3, resize: bool = True) -> None:
        _check_channels(channels)
        if not isinstance(image_size, int) or image_size < 1:
            raise DDIMError(f"image_size must be a positive integer, got {image_size!r}")
        self.root, self.image_size, self.channels, self.resize = Path(root), image_size, channels, resize
        if not self.root.is_dir():
            raise MissingFileError(f"image folder root {str(self.root)!r} does not exist or is not a directory")
        files = _list_files(self.root)
        if not files:
            raise DDIMError(f"image folder root {str(self.root)!r} is empty (no files found recursively)")
        decode = sum(p.stat().st_size for p in files) <= _FULL_DECODE_BYTES
        self.files: list[Path] = []
        sizes: dict[tuple[int, int], Path] = {}
        skipped = []
        for p in files:
            try:
                with Image.open(p) as img:
                    size = img.size
                    img.verify()
                if decode:
                    with Image.open(p) as img:  # verify() leaves the image unusable: open it again
                        img.load()
            except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
                skipped.append(f"{p} ({type(e).__name__})")
                continue
            self.files.append(p)
            sizes.setdefault(size, p)
        if skipped:
            warnings.warn(f"ImageFolder: skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:5])}"
                          + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
        if not self.files:
            raise DDIMError(f"image folder root {str(self.root)!r}: none of its {len(files)} files is a readable image")
        # one subfolder per class (sorted names -> 0, 1, ...), as torchvision's ImageFolder; files at the top: none
        tops = [p.relative_to(self.root).parts for p in self.files]
        self.classes: list[str] = sorted({t[0] for t in tops if len(t) > 1})
        self.labels: Tensor | None = None
        if self.classes and all(len(t) > 1 for t in tops):
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([index[t[0]] for t in tops], dtype=torch.long)
        if not resize:
            if len(sizes) > 1:
                (s1, p1), (s2, p2) = list(sizes.items())[:2]
                raise DDIMError(f"image folder root {str(self.root)!r} holds images of mixed sizes ({s1[0]}x{s1[1]} "
                                f"{p1.name}, {s2[0]}x{s2[1]} {p2.name}); pass resize=True to resize and crop them")
            (w, h), = sizes
            if (w, h) != (image_size, image_size):
                raise DDIMError(f"images in {str(self.root)!r} are {w}x{h} but image_size is {image_size}; "
                                "pass resize=True to resize and crop them")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        p = self.files[i]
        try:
            with Image.open(p) as img:
                img.load()
                if self.resize:
                    img = resize_center_crop(img, self.image_size)
                return _pil_to_tensor(img, self.channels)
        except Exception as e:  # it passed the start-up check, so it changed since: say which file
            raise DDIMError(f"{p}: could not decode this image ({one_line(e)}); replace or remove it") from None


class _CelebA(Dataset):
    def __init__(self, files: list[Path], image_size: int) -> None:
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        try:
            with Image.open(self.files[i]) as img:
                img = img.convert("RGB")
        except Exception as e:  # truncated or not an image
            raise DDIMError(f"{self.files[i]}: could not decode this image ({one_line(e)}); replace or remove it") from None
        if img.size != _CELEBA_SIZE:
            raise DDIMError(f"{self.files[i]}: CelebA aligned images are 178x218, got {img.size[0]}x{img.size[1]}")
        img = img.crop(CELEBA_CROP).resize((self.image_size, self.image_size), Image.BILINEAR)
        return _pil_to_tensor(img, 3)


def celeba(root: str | os.PathLike, image_size: int = 64, split: str = "train") -> Dataset:
    """CelebA with the official DDIM/DDPM preprocessing: crop 128x128 at top=57, left=25, resize to image_size.

    root holds `img_align_celeba/` (178x218 JPEGs) and optionally `list_eval_partition.txt`; split is "train",
    "valid", "test" or "all" (without the partition file every image is used, with a warning).
    """
    root = Path(root)
    folder = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    if not folder.is_dir():
        raise MissingFileError(f"CelebA root {str(root)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise DDIMError(f"CelebA root {str(root)!r}: no images in {folder}")
    part = root / "list_eval_partition.txt"
    if split != "all":
        codes = {"train": "0", "valid": "1", "test": "2"}
        if split not in codes:
            raise DDIMError(f"split must be 'train', 'valid', 'test' or 'all', got {split!r}")
        if part.is_file():
            keep = set()
            for n, ln in enumerate(part.read_text(errors="replace").splitlines(), 1):
                fields_ = ln.split()
                if fields_ and (len(fields_) != 2 or fields_[1] not in ("0", "1", "2")):
                    raise DDIMError(f"{part}, line {n}: expected '<file name> <0|1|2>', got {ln.strip()[:60]!r}")
                if fields_ and fields_[1] == codes[split]:
                    keep.add(fields_[0])
            files = [p for p in files if p.name in keep]
        else:
            warnings.warn(f"{part} not found: using every CelebA image regardless of split={split!r}", stacklevel=2)
    return _CelebA(files, image_size)


# --- dispatch ------------------------------------------------------------------------------------------------
DATASETS = ("digits", "cifar10", "celeba", "folder", "npz", "idx")
_ALIASES = {"imagefolder": "folder", "image_folder": "folder", "mnist": "idx", "fashion_mnist": "idx",
            "fashionmnist": "idx", "npy": "npz"}


def dataset_name(name: str) -> str:
    """The canonical name (one of DATASETS) of a data set name as configs spell it ("CIFAR10", "mnist", ...)."""
    canonical = str(name).lower().replace("-", "_")
    canonical = _ALIASES.get(canonical, canonical)
    if canonical not in DATASETS:
        raise DDIMError(f"data.dataset must be one of {', '.join(DATASETS)} (or an alias: {', '.join(_ALIASES)}); "
                        f"got {name!r}")
    return canonical


def build_dataset(cfg: Any) -> Dataset:
    """Build the dataset a `DataConfig` names (dataset, root, image_size, channels, resize, key; official names
    such as "CIFAR10" and "CELEBA" accepted), checking that its images match image_size and channels."""
    name = dataset_name(cfg.dataset)
    root = getattr(cfg, "root", None)
    if name != "digits" and not root:
        raise DDIMError(f"data.root is required for dataset {cfg.dataset!r} (the file or folder it reads)")
    if name == "digits":
        ds = digits(cfg.image_size)
    elif name == "cifar10":
        ds = cifar10(root, train=getattr(cfg, "train", True))
    elif name == "celeba":
        ds = celeba(root, cfg.image_size)
    elif name == "folder":
        ds = ImageFolder(root, cfg.image_size, cfg.channels, resize=getattr(cfg, "resize", True))
    elif name == "npz":
        ds = npz_arrays(root, getattr(cfg, "key", None))
    else:
        ds = idx_file(root)
    if len(ds) == 0:
        raise DDIMError(f"dataset {cfg.dataset!r} at {root!r} holds no images")
    c, h, w = ds[0].shape
    if c != cfg.channels:
        raise DDIMError(f"dataset {cfg.dataset!r} has {c} channel(s) but data.channels is {cfg.channels}")
    if (h, w) != (cfg.image_size, cfg.image_size):
        raise DDIMError(f"dataset {cfg.dataset!r} images are {h}x{w} but data.image_size is {cfg.image_size}")
    return ds
