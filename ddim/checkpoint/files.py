"""Reading tensor files without running anything in them: safetensors (header and tensors) and torch's pickles,
the latter with `weights_only=True`, which admits tensors and plain containers and refuses any other object."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddim.checkpoint.base import CheckpointError
from ddim.errors import one_line

__all__ = ["is_safetensors", "read_safetensors_header", "read_safetensors", "torch_load"]


def is_safetensors(path: Path) -> bool:
    """True for a file that starts like safetensors: an 8-byte little-endian header length, then "{"."""
    with open(path, "rb") as f:        # torch's zip files start with "PK", its legacy pickles with 0x80
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors_header(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file; CheckpointError naming the file if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(e)})") from None


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors by name, string metadata) of a safetensors file."""
    from safetensors.torch import load_file

    header = read_safetensors_header(path)
    try:
        return load_file(str(path)), header
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(e)})") from None


def torch_load(path: Path) -> Any:
    """torch.load with weights_only=True (no pickled code runs); every failure becomes a CheckpointError."""
    import pickle
    import zipfile

    try:
        # mmap avoids a second copy of large files; only the zip format (torch >= 1.6) supports it.
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's text advises re-running with weights_only=False, i.e. running the file's code: not quoted.
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it names {named[1]})" if named else ""
        raise CheckpointError(
            f"{path}: holds pickled Python objects other than tensors{what}, that is code that would run when "
            "loaded; ddim reads only tensors and plain containers and will not run it (ask for a .safetensors "
            "file, or a state dict of tensors)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?) ({one_line(e)})") from None
