"""Atomic file writes: every file this package produces appears whole or not at all.

A writer fills a temporary file in the target's own folder (so the final ``os.replace`` is a rename within one
file system), the data is fsynced, the file gets the mode ``open()`` would have given it, and only then is it
renamed over the target. A full disk or an exception leaves the previous file untouched and no temporary
behind; a process killed mid-write (SIGKILL, power cut) can leave its temporary, and the next write of the same
target removes it (see ``atomic_path``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ddim.errors import UnwritableError

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "write_failed"]

# Temporaries older than this were left by an earlier process (this one had not started), so no live writer of
# this process owns them. Taken at import, which is close enough to the process start for that purpose.
_STARTED = time.time()


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
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path``, on an error it is deleted
    (an OSError, such as a full disk, becomes the `UnwritableError` of `write_failed`, naming ``path``).

    The temporary is ``.{name}.XXXXXXXX.tmp`` in the target's folder. Before making it, the temporaries of the
    same target name whose mtime is older than this process's start are deleted (found when this process first
    writes into that folder): a writer killed before its rename left them, and no writer in this process can
    own them. Temporaries of other names are never touched,
    so processes writing different files into one folder (torchrun ranks, parallel jobs) cannot disturb each
    other; two processes writing the same target at once is not supported (the last rename wins anyway).
    The parent folder is created if needed. ``durable`` fsyncs the data before the rename and the folder after
    it, so that the new file survives a power cut too (checkpoints); turn it off for many small files.

        with atomic_path("model.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the mode open() would
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, UnwritableError):
            raise write_failed(path, e) from e       # a full disk names the file, not only "No space left"
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every OS/file system can fsync a folder
            _fsync_path(path.parent, directory=True)


# folder -> target name -> its stale temporaries, from one scan at this process's first write into the folder.
# One scan suffices: a temporary made after this process started is not stale by the rule above, so none can
# appear later; and a folder of 50k images is listed once, not once per image.
_STALE: dict[str, dict[str, list[str]]] = {}
# mkstemp's random part is letters, digits and "_", never ".", so the target's name is everything before it.
_TEMP_NAME = re.compile(r"\.(.+)\.[A-Za-z0-9_]+\.tmp")


def _scan_stale(folder: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = _TEMP_NAME.fullmatch(entry.name)
            with contextlib.suppress(OSError):  # vanished meanwhile
                if m and entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < _STARTED:
                    found.setdefault(m[1], []).append(entry.path)
    return found


def _remove_stale_temporaries(path: Path) -> None:
    folder = os.path.abspath(path.parent)
    if folder not in _STALE:
        _STALE[folder] = _scan_stale(folder)
    for tmp in _STALE[folder].pop(path.name, ()):
        with contextlib.suppress(OSError):  # already gone, or not ours to delete
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, durable: bool = False, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (TypeError before anything is written if it is not JSON)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n", durable)


def write_failed(path: str | os.PathLike, error: BaseException, kept: str | None = None) -> UnwritableError:
    """The one-line UnwritableError for a failed atomic write of ``path``: the file, the cause, what survived.

    Writers raise it for *any* failure of the write, because a full disk is not always an OSError: torch.save's
    zip writer raises RuntimeError and safetensors its SafetensorError. ``errno`` is kept when there was one.
    """
    if isinstance(error, UnwritableError):        # from `atomic_path`: describe its cause, with the caller's `kept`
        if error.__cause__ is None:
            return error
        error = error.__cause__
    path = Path(path)
    if kept is None:
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    text = str(error).strip()
    cause = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    try:
        free = shutil.disk_usage(path.parent).free
        full = f"; the disk is full ({free // 1024} KiB free)" if free < 64 * 2**20 else ""
    except OSError:
        full = ""
    err = UnwritableError(f"could not write {path} ({cause}){full}; nothing was replaced, {kept}")
    err.errno = getattr(error, "errno", None)
    return err
