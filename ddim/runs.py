"""The one overwrite policy and the one output-path check of every command.

- An output path is never empty (`check_output_path`): `--out ""` (an unset shell variable) is refused, not
  taken as the working folder.
- A single output file (`prepare_output`) that exists is replaced only with `--overwrite`.
- An output folder (`claim_folder`, `open_run`) holds files the command owns: those matching its `owned`
  names, and only when the folder's marker (the run manifest, or the file that marks a finished output) says
  an earlier run of the command wrote them. With `--overwrite` those, and only those, are removed; the user's
  own files in the folder are never touched. A file at an owned name in a folder without the marker was not
  written by ddim: it is refused even with `--overwrite` (`--out .` in a folder of one's own images).
- Nothing is created or written before the caller has validated everything: `check_writable` checks without
  creating the folder, and the owned files are removed (`remove_owned`) only when the command starts to write.

Run manifests (`open_run`): the JSON file that says what settings an output folder was made with, so a rerun
with the same settings resumes and one with other settings is refused (or, with overwrite, starts again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ddim.errors import DDIMError, OutputExistsError, UnwritableError
from ddim.io import write_json_atomic
from ddim.readers import read_json

__all__ = ["open_run", "check_writable", "check_output_path", "prepare_output", "claim_folder", "remove_owned"]


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings))        # tuples -> lists, as they come back from the file


def check_output_path(path: str | os.PathLike | None, flag: str = "--out") -> Path:
    """An output path the user gave, refused when empty (`--out ""`, an unset shell variable): it would mean
    the working folder, whose files are the user's."""
    if path is None or not str(path).strip():
        raise DDIMError(f"{flag} is empty; give a file or folder name (an unset shell variable?)")
    return Path(path)


def _owned_files(out: Path, owned: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in owned for p in out.glob(pattern) if p.is_file() or p.is_symlink()})


def _foreign(out: Path, owned: tuple[str, ...], keep: tuple[str, ...]) -> list[Path]:
    """Entries of out that are neither owned files nor the folders holding them nor a name in keep."""
    mine = set(_owned_files(out, owned))
    parents = {q for p in mine for q in p.relative_to(out).parents if q != Path(".")}
    folders = {out / q for q in parents} | {out / Path(pat).parts[0] for pat in owned if len(Path(pat).parts) > 1}
    return [p for p in out.iterdir() if p not in mine and p not in folders and p.name not in keep]


def _check_folder(out: Path, owned: tuple[str, ...], marker: str, ours: bool, overwrite: bool, what: str,
                  flag: str, exclusive: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{flag} {str(out)!r} exists and is not a folder")
    if not out.is_dir():
        return
    if not ours:
        taken = _owned_files(out, owned)
        if taken:
            raise OutputExistsError(f"{flag} {str(out)!r} holds {taken[0].relative_to(out)}, which no ddim {what} "
                                    f"wrote there (no {marker}); ddim will not replace it: move it or choose another "
                                    f"{flag}")
        if exclusive and _foreign(out, owned, (marker,)) and not overwrite:
            raise OutputExistsError(f"{flag} {str(out)!r} exists and does not hold a ddim {what}; pass --overwrite "
                                    f"to write into it (its own files are kept) or choose another {flag}")


def remove_owned(out: str | os.PathLike, owned: tuple[str, ...]) -> None:
    """Delete the files of out matching the owned names (globs relative to out), nothing else."""
    out = Path(out)
    if out.is_dir():
        for p in _owned_files(out, owned):
            p.unlink(missing_ok=True)


def claim_folder(out: str | os.PathLike | None, owned: tuple[str, ...], marker: str, overwrite: bool,
                 what: str, flag: str = "--out") -> Path:
    """Check an output folder that a command fills with the `owned` files (globs relative to it), `marker`
    among them (written last: it marks a finished output). A folder holding the marker needs overwrite; its
    owned files are then the caller's to remove with `remove_owned` when it starts writing. Owned names
    without the marker, or (without overwrite) any other file, are refused. Creates nothing."""
    out = check_output_path(out, flag)
    ours = (out / marker).is_file()
    _check_folder(out, owned, marker, ours, overwrite, what, flag, exclusive=True)
    if ours and not overwrite:
        raise OutputExistsError(f"{flag} {str(out)!r} already holds a {what}; pass --overwrite to replace it")
    check_writable(out)
    return out


def open_run(out: Path, manifest_name: str, settings: dict[str, Any], overwrite: bool, what: str = "run",
             owned: tuple[str, ...] = (), exclusive: bool = True) -> bool:
    """Check `out/<manifest_name>` against settings and write it; True if an earlier run with the same settings
    is there to resume. Different settings need overwrite (then `owned` files, globs relative to out, are
    deleted first; files at owned names in a folder without the manifest were not written by a run and are
    refused, see the module's policy). With `exclusive` (the folder belongs to this run alone), a non-empty
    folder without the manifest is refused unless overwrite; evaluations share one folder, each with its own
    manifest. A resumed run's manifest is left as it is."""
    out, settings = check_output_path(out), _jsonable(settings)
    manifest = out / manifest_name
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
    old = None
    if manifest.exists():
        try:
            old = read_json(manifest)
        except DDIMError as e:
            raise DDIMError(f"{e}; pass --overwrite to start the {what} again") from None
    _check_folder(out, owned, manifest_name, old is not None, overwrite, what, "--out", exclusive)
    if old is not None and old != settings and not overwrite:
        diff = {k: (old.get(k), settings.get(k)) for k in {**old, **settings} if old.get(k) != settings.get(k)}
        raise OutputExistsError(f"{out} holds a {what} with other settings {diff} (old, new); pass --overwrite "
                                "to replace it, or choose another --out")
    resume = old == settings and not overwrite
    check_writable(out)
    if resume:
        return True
    if overwrite:
        remove_owned(out, owned)
    write_json_atomic(manifest, settings, indent=1)
    return False


def check_writable(folder: str | os.PathLike) -> None:
    """Check, before any work is done and without creating anything, that files can be written in folder:
    an existing folder by writing and removing a probe file, a missing one by its nearest existing ancestor
    (which must be a folder we may write; the folder itself is made by the first file written into it)."""
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists() and not probe_dir.is_symlink() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UnwritableError(f"cannot write into {str(folder)!r}: {str(probe_dir)!r} is not a folder")
    if probe_dir != folder:
        if not os.access(probe_dir, os.W_OK | os.X_OK):
            raise UnwritableError(f"cannot write into {str(folder)!r}: {str(probe_dir)!r} is not writable")
        return
    try:
        probe = folder / ".ddim-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UnwritableError(f"cannot write into {str(folder)!r}: {e.strerror or e}") from e


def prepare_output(path: str | os.PathLike | None, overwrite: bool, flag: str = "--out") -> Path:
    """An output file: refused if empty, if it exists (unless overwrite) or is a folder; its folder checked for
    writing (not created), all before any work is done."""
    path = check_output_path(path, flag)
    if path.is_dir():
        raise OutputExistsError(f"{flag} {str(path)!r} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{flag} {str(path)!r} exists; pass --overwrite to replace it")
    check_writable(path.parent)
    return path
