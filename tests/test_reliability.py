"""Reliability of files: stale temporaries, integrity hashes, full disks, corrupt inputs name the file.

The training-loop side (torn logs, divergence, interrupts, typed configs) is in test_reliability_train.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ddim
from ddim import checkpoint, data, io
from ddim import train as tr
from ddim.errors import DDIMError, UnwritableError
from ddim.schedule import NoiseSchedule


# --- stale temporaries (ddim.io.atomic_path) ----------------------------------------------------------------
def test_atomic_write_removes_stale_temporaries_of_its_own_target_only(tmp_path):
    old = io._STARTED - 3600                                     # left by a process that ran before this one
    stale, other, longer, fresh = (tmp_path / n for n in (
        ".a.bin.k3_9xq2z.tmp",       # a.bin, killed mid-write: removed
        ".b.bin.abcdefgh.tmp",       # another target's temporary: never touched
        ".a.bin.x.abcdefgh.tmp",     # the temporary of "a.bin.x", whose name starts like a.bin's
        ".a.bin.zzzzzzzz.tmp"))      # a.bin, but made after this process started: may be a live writer's
    for p in (stale, other, longer, fresh):
        p.write_bytes(b"partial")
    for p in (stale, other, longer):
        os.utime(p, (old, old))
    io.write_text_atomic(tmp_path / "a.bin", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.bin", other.name, longer.name, fresh.name])
    assert (tmp_path / "a.bin").read_text() == "whole"


# --- integrity hash of the own format (ddim.checkpoint) -----------------------------------------------------
def _tiny_model(seed=0):
    from ddim.models import PRESETS, UNet
    torch.manual_seed(seed)
    return UNet(PRESETS["tiny"]).eval()


def _header(path):
    n = int.from_bytes(path.read_bytes()[:8], "little")
    return n, json.loads(path.read_bytes()[8:8 + n])


def _documented_hash(tensors, header=None):
    """The documented rule, recomputed here: the header's entries but the hash (sorted), then the tensors."""
    h = hashlib.sha256()
    for key in sorted(k for k in (header or {}) if k != "sha256"):
        h.update(f"{key}\0{header[key]}\0".encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}\0{str(t.dtype).split('.')[1]}\0{list(t.shape)}\0".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_saved_hash_is_sha256_of_the_header_then_the_tensors_by_sorted_name(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _tiny_model(), NoiseSchedule.linear(100))
    meta = _header(path)[1]["__metadata__"]
    assert meta["format_version"] == "2"
    assert meta["sha256"] == _documented_hash(load_file(path), meta)


def _rewrite(path, **changes):
    """The file with header entries changed (None: removed) and the tensors as they were."""
    meta = {**_header(path)[1]["__metadata__"], **changes}
    save_file(load_file(path), path, metadata={k: v for k, v in meta.items() if v is not None})


def test_a_rewritten_prediction_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _tiny_model(), NoiseSchedule.linear(100), prediction="eps")
    _rewrite(path, prediction="v")                                # same tensors, another objective
    with pytest.raises(checkpoint.CheckpointError, match=r"m\.safetensors.*header or tensors.*content hash"):
        checkpoint.load(path)
    checkpoint.save(path, _tiny_model(), NoiseSchedule.linear(100))
    _rewrite(path, sha256=None)                                   # a version-2 file stripped of its hash
    with pytest.raises(checkpoint.CheckpointError, match=r"m\.safetensors.*without its content hash"):
        checkpoint.load(path)


def test_version_1_files_are_checked_the_old_way(tmp_path):
    path = tmp_path / "v1.safetensors"                            # as the previous version wrote it
    checkpoint.save(path, _tiny_model(), NoiseSchedule.linear(100))
    tensors = load_file(path)
    _rewrite(path, format_version="1", sha256=_documented_hash(tensors))
    assert checkpoint.load(path).prediction == "eps"
    _rewrite(path, sha256=_documented_hash({**tensors, "conv_in.bias": tensors["conv_in.bias"] + 1}))
    with pytest.raises(checkpoint.CheckpointError, match=r"v1\.safetensors.*content hash"):
        checkpoint.load(path)


@pytest.mark.parametrize("version", ["x", "", "-1", "3"])
def test_a_bad_format_version_is_one_line(tmp_path, version):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _tiny_model(), NoiseSchedule.linear(100))
    _rewrite(path, format_version=version)
    with pytest.raises(checkpoint.CheckpointError, match=r"m\.safetensors.*(version number|newer ddim)"):
        checkpoint.load(path)


def test_a_flipped_bit_in_the_tensor_data_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _tiny_model(), NoiseSchedule.linear(100))
    n, header = _header(path)
    name = next(k for k in header if k.endswith("conv_in.weight"))
    start = 8 + n + header[name]["data_offsets"][0]
    raw = bytearray(path.read_bytes())
    raw[start + 5] ^= 0x01                                        # one bit of one weight
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match=r"m\.safetensors.*content hash"):
        checkpoint.load(path)


def test_files_without_a_hash_still_load(tmp_path):
    from ddim.checkpoint import _BETAS_KEY
    asset = Path(ddim.__file__).parent / "assets" / "digits.safetensors"
    digits = checkpoint.load(asset)                               # the shipped asset
    path = tmp_path / "old.safetensors"                           # a file of the format as it was before the hash
    checkpoint.save(path, digits.model, digits.schedule)
    _rewrite(path, sha256=None, format_version="1")
    again = checkpoint.load(path)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), digits.model.state_dict().values()))
    assert again.schedule == digits.schedule and _BETAS_KEY not in again.model.state_dict()


# --- a full disk while writing a checkpoint ------------------------------------------------------------------
@contextlib.contextmanager
def full_tmpfs(tmp_path, keep: dict[str, bytes]):
    """A real 200 KiB tmpfs holding the files `keep`, then filled to the last byte; unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip() or r.returncode}")
    try:
        for name, data in keep.items():
            (mnt / name).parent.mkdir(parents=True, exist_ok=True)
            (mnt / name).write_bytes(data)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _assert_failed_cleanly(e, mnt, keep, target):
    msg = str(e.value)
    assert "\n" not in msg and str(mnt / target) in msg and "intact" in msg and "disk is full" in msg
    for name, content in keep.items():
        assert (mnt / name).read_bytes() == content                    # the previous file survived
    leftovers = [p for p in mnt.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_training_checkpoint_on_a_full_disk(tmp_path):
    keep = {"ckpt-0000001.pt": b"the previous checkpoint"}
    with full_tmpfs(tmp_path, keep) as mnt:
        with pytest.raises(UnwritableError, match="ckpt-0000001.pt is intact") as e:
            tr.save_checkpoint({"model": {"w": torch.randn(100_000)}}, mnt / "ckpt-0000002.pt")
        _assert_failed_cleanly(e, mnt, keep, "ckpt-0000002.pt")


def test_own_format_and_diffusers_export_on_a_full_disk(tmp_path):
    weights = "unet/diffusion_pytorch_model.safetensors"
    keep = {"model.safetensors": b"the previous model", weights: b"previous weights"}
    model = _tiny_model()
    with full_tmpfs(tmp_path, keep) as mnt:
        with pytest.raises(UnwritableError) as e:
            checkpoint.save(mnt / "model.safetensors", model, NoiseSchedule.linear(100))
        _assert_failed_cleanly(e, mnt, keep, "model.safetensors")
        with pytest.raises(UnwritableError) as e:
            checkpoint.export_diffusers(model, mnt / "unet", NoiseSchedule.linear(100))
        _assert_failed_cleanly(e, mnt, keep, weights)
        assert sorted(p.name for p in (mnt / "unet").iterdir()) == ["diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at inline_container.cc:664] unexpected pos"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_any_checkpoint_write_failure_is_unwritable_naming_the_intact_file(tmp_path, monkeypatch, error):
    tr.save_checkpoint({"step": 1}, tmp_path / "ckpt-0000001.pt")
    before = (tmp_path / "ckpt-0000001.pt").read_bytes()

    def failing_save(obj, f, *a, **k):  # what torch.save does on a full disk, without needing one
        f.write(b"partial")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(UnwritableError, match=r"ckpt-0000002\.pt .*ckpt-0000001\.pt is intact") as e:
        tr.save_checkpoint({"step": 2}, tmp_path / "ckpt-0000002.pt")
    assert e.value.errno == getattr(error, "errno", None) and isinstance(e.value.__cause__, type(error))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000001.pt"]
    assert (tmp_path / "ckpt-0000001.pt").read_bytes() == before


# --- corrupt data files name the file (ddim.data) -----------------------------------------------------------
def _png_bytes(seed=0, size=16):
    import io as _io
    from PIL import Image
    buf = _io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("full_decode", [True, False])
@pytest.mark.parametrize("damage", ["truncated", "bit-rot"])
def test_image_folder_finds_damaged_files_at_start_up(tmp_path, monkeypatch, full_decode, damage):
    if not full_decode:                                           # a folder too large to decode: verify() only
        monkeypatch.setattr(data, "_FULL_DECODE_BYTES", 0)
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png_bytes(i))
    good = _png_bytes(9)
    bad = bytearray(good[: len(good) // 2] if damage == "truncated" else good)
    if damage == "bit-rot":
        bad[len(bad) // 2] ^= 0xFF                                # inside the pixel data (IDAT)
    (tmp_path / "bad.png").write_bytes(bytes(bad))                # a valid header: Image.open alone accepts it
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\): .*bad\.png"):
        ds = data.ImageFolder(tmp_path, image_size=16)
    assert [p.name for p in ds.files] == ["0.png", "1.png", "2.png"]
    assert all(ds[i].shape == (3, 16, 16) for i in range(3))


def test_image_that_breaks_after_start_up_is_named(tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(_png_bytes(i))
    ds = data.ImageFolder(tmp_path, image_size=16)
    (tmp_path / "1.png").write_bytes(_png_bytes(1)[:100])
    with pytest.raises(DDIMError, match=r"^.*1\.png: could not decode this image \(.*\); replace or remove it$"):
        ds[1]


def test_celeba_image_that_does_not_decode_is_named(tmp_path):
    (tmp_path / "000001.png").write_bytes(_png_bytes(0, size=64)[:300])
    ds = data.celeba(tmp_path, split="all")
    with pytest.raises(DDIMError, match=r"000001\.png: could not decode"):
        ds[0]


def test_truncated_npz_and_missing_key_name_the_file(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8), np.uint8))
    raw = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DDIMError, match=r"cut\.npz: not a readable \.npz/\.npy file"):
        data.npz_arrays(tmp_path / "cut.npz")
    with pytest.raises(DDIMError, match=r"a\.npz: no array named 'x' \(data\.key\); it holds \['images'\]"):
        data.npz_arrays(tmp_path / "a.npz", key="x")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DDIMError, match=r"obj\.npy: not a readable"):          # pickled objects are refused
        data.npz_arrays(tmp_path / "obj.npy")


def test_truncated_cifar_and_idx_files_name_the_file(tmp_path):
    import gzip
    import pickle
    d = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(d)[:500])
    with pytest.raises(DDIMError, match=r"test_batch: not a readable CIFAR-10 batch file \((EOFError|UnpicklingError)"):
        data.cifar10(tmp_path, train=False)
    raw = gzip.compress(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(1568))
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(raw[:-30])
    with pytest.raises(DDIMError, match=r"x-idx3-ubyte\.gz: not a readable IDX file"):
        data.idx_file(tmp_path / "x-idx3-ubyte.gz")
    (tmp_path / "head").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DDIMError, match=r"head: truncated IDX header"):
        data.idx_file(tmp_path / "head")


def test_unknown_dataset_is_named_before_the_root():
    cfg = SimpleNamespace(dataset="bogus", root=None, image_size=16, channels=1)
    with pytest.raises(DDIMError, match=r"data\.dataset must be one of digits, cifar10, celeba, folder, npz, idx"):
        data.build_dataset(cfg)


# --- a bogus FID Inception weights file (ddim.metrics.inception) --------------------------------------------
@pytest.mark.parametrize("content", ["garbage", "pickle", "other_state_dict", "tensor"])
def test_bogus_inception_weights_name_the_file_and_what_it_should_be(tmp_path, content):
    import pickle
    from ddim.metrics.inception import INCEPTION_WEIGHTS_FILENAME, load_inception
    path = tmp_path / "weights.pth"
    if content == "garbage":
        path.write_bytes(b"<html>404 Not Found</html>")                # a failed download saved as the file
    elif content == "pickle":
        path.write_bytes(pickle.dumps(SimpleNamespace(a=1), protocol=2))  # weights_only refuses it
    elif content == "other_state_dict":
        torch.save(_tiny_model().state_dict(), path)
    else:
        torch.save(torch.zeros(3), path)
    with pytest.raises(DDIMError) as e:
        load_inception(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and INCEPTION_WEIGHTS_FILENAME in msg and "\n" not in msg
