"""Data loaders on small files the tests write themselves; pixels map to [-1, 1] and back."""

import gzip
import pickle
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddim import data, images
from ddim.errors import DDIMError


def _png(path, size, color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_digits():
    ds = data.digits(16)
    assert len(ds) == 1797 and ds[0].shape == (1, 16, 16)
    assert ds.images.min() >= -1 and ds.images.max() <= 1 and ds.images.min() == -1
    assert set(ds.labels.tolist()) == set(range(10))
    assert torch.equal(data.digits(8).images[:, 0], torch.from_numpy(
        __import__("sklearn.datasets").datasets.load_digits().images).float() / 8 - 1)


def test_cifar10_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    ds = data.cifar10(tmp_path)
    assert len(ds) == 15 and ds[0].shape == (3, 32, 32)
    raw = pickle.load(open(folder / "data_batch_1", "rb"))[b"data"][0].reshape(3, 32, 32)
    assert torch.equal(images.to_uint8(ds[0]), torch.from_numpy(raw))
    assert len(data.cifar10(folder, train=False)) == 3


def test_cifar10_refuses_code_and_missing(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps(SimpleNamespace(a=1)))
    with pytest.raises(DDIMError, match="test_batch: .*refusing to load types.SimpleNamespace"):  # a user's bad file: named, one line
        data.cifar10(tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        data.cifar10(tmp_path, train=True)


def _idx_bytes(arr):
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_idx_plain_and_gz(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    (tmp_path / "x-idx3-ubyte").write_bytes(_idx_bytes(arr))
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(arr))
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        ds = data.idx_file(tmp_path / name)
        assert ds.images.shape == (4, 1, 28, 28)
        assert torch.equal(images.to_uint8(ds.images[:, 0]), torch.from_numpy(arr))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.idx_file(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(arr)[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.idx_file(tmp_path / "short")


def test_npz_layouts(tmp_path):
    nhwc = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_train=nhwc, y_train=np.arange(3))
    ds = data.npz_arrays(tmp_path / "a.npz")
    assert ds.images.shape == (3, 3, 8, 8) and ds.labels.tolist() == [0, 1, 2]
    assert torch.equal(images.to_uint8(ds.images), torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    np.savez(tmp_path / "f.npz", images=np.full((2, 1, 4, 4), 0.5, np.float32))
    assert torch.allclose(data.npz_arrays(tmp_path / "f.npz").images, torch.zeros(2, 1, 4, 4))
    np.savez(tmp_path / "bad.npz", a=np.full((2, 4, 4), 7.0))
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        data.npz_arrays(tmp_path / "bad.npz")
    with pytest.raises(DDIMError, match="a.npz: no array named 'nope'"):
        data.npz_arrays(tmp_path / "a.npz", key="nope")


def test_image_folder_recursive_resize_and_corrupt(tmp_path):
    _png(tmp_path / "a.png", (40, 20), (255, 0, 0))
    _png(tmp_path / "sub" / "b.jpg", (16, 16), (0, 0, 255))
    (tmp_path / "sub" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = data.ImageFolder(tmp_path, image_size=8)
    assert len(ds) == 2 and ds[0].shape == (3, 8, 8)
    assert torch.allclose(ds[0][0], torch.ones(8, 8), atol=0.02) and torch.allclose(ds[0][2], -torch.ones(8, 8), atol=0.02)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="mixed sizes"):
        data.ImageFolder(tmp_path, image_size=16, resize=False)


def test_image_folder_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.ImageFolder(tmp_path / "missing", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        data.ImageFolder(tmp_path / "empty", 8)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of its 1 files"):
        data.ImageFolder(tmp_path / "junk", 8)
    _png(tmp_path / "one" / "a.png", (12, 12))
    with pytest.raises(ValueError, match="12x12 but image_size is 8"):
        data.ImageFolder(tmp_path / "one", 8, resize=False)
    ds = data.ImageFolder(tmp_path / "one", 12, channels=1, resize=False)
    assert ds[0].shape == (1, 12, 12)


def test_celeba_official_crop(tmp_path):
    arr = np.zeros((218, 178, 3), np.uint8)
    arr[57:57 + 128, 25:25 + 128] = 255                  # exactly the official crop window is white
    Image.fromarray(arr).save(tmp_path / "000001.png")
    ds = data.celeba(tmp_path, image_size=64, split="all")
    x = ds[0]
    assert x.shape == (3, 64, 64) and torch.allclose(x, torch.ones_like(x))
    assert data.CELEBA_CROP == (25, 57, 153, 185)


def test_build_dataset_dispatch_and_checks(tmp_path):
    cfg = SimpleNamespace(dataset="digits", root=None, image_size=16, channels=1, resize=True, key=None)
    assert len(data.build_dataset(cfg)) == 1797
    with pytest.raises(ValueError, match="data.channels is 3"):
        data.build_dataset(SimpleNamespace(**{**vars(cfg), "channels": 3}))
    with pytest.raises(ValueError, match="data.root is required"):
        data.build_dataset(SimpleNamespace(**{**vars(cfg), "dataset": "CIFAR10"}))
    with pytest.raises(ValueError, match="data.dataset must be one of"):
        data.build_dataset(SimpleNamespace(**{**vars(cfg), "dataset": "lsun", "root": str(tmp_path)}))
