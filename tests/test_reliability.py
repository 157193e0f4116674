"""Reliability of files: stale temporaries, integrity hashes, full disks, corrupt inputs name the file.

The training-loop side (torn logs, divergence, interrupts, typed configs) is in test_reliability_train.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddim import checkpoint, io
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


def test_saved_hash_is_sha256_of_the_tensors_by_sorted_name(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, _tiny_model(), NoiseSchedule.linear(100))
    tensors = load_file(path)
    h = hashlib.sha256()
    for name in sorted(tensors):                                  # the documented rule, recomputed here
        t = tensors[name]
        h.update(f"{name}\0{str(t.dtype).split('.')[1]}\0{list(t.shape)}\0".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert _header(path)[1]["__metadata__"]["sha256"] == h.hexdigest()


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
    digits = checkpoint.load(Path(checkpoint.__file__).parent / "assets" / "digits.safetensors")  # the shipped asset
    assert "sha256" not in _header(Path(checkpoint.__file__).parent / "assets" / "digits.safetensors")[1]["__metadata__"]
    path = tmp_path / "old.safetensors"                           # a file of the format as it was before the hash
    checkpoint.save(path, digits.model, digits.schedule)
    meta = {k: v for k, v in _header(path)[1]["__metadata__"].items() if k != "sha256"}
    save_file(load_file(path), path, metadata=meta)
    again = checkpoint.load(path)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), digits.model.state_dict().values()))
    assert again.schedule == digits.schedule and _BETAS_KEY not in again.model.state_dict()
