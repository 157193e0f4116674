"""Atomic file writes: every file this package produces appears whole or not at all.

A writer fills a temporary file in the target's own folder (so the final ``os.replace`` is a rename within one
file system), the data is fsynced, the file gets the mode ``open()`` would have given it, and only then is it
renamed over the target. A crash, a full disk or an exception leaves the previous file untouched and no
temporary behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic"]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return mask


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path``, on an error it is deleted.

    The parent folder is created if needed. ``durable`` fsyncs the data before the rename and the folder after
    it, so that the new file survives a power cut too (checkpoints); turn it off for many small files.

        with atomic_path("model.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the mode open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every OS/file system can fsync a folder
            _fsync_path(path.parent, directory=True)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, durable: bool = False, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (TypeError before anything is written if it is not JSON)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n", durable)
