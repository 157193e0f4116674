"""Run manifests: the JSON file that says what settings an output folder was made with, so a rerun with the
same settings resumes and one with other settings is refused (or, with overwrite, starts again).

Callers validate everything first and call `open_run` only then, so a refused or invalid run writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddim.errors import DDIMError, OutputExistsError, UnwritableError
from ddim.io import write_json_atomic

__all__ = ["open_run", "check_writable", "prepare_output"]


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings))        # tuples -> lists, as they come back from the file


def open_run(out: Path, manifest_name: str, settings: dict[str, Any], overwrite: bool, what: str = "run",
             owned: tuple[str, ...] = (), exclusive: bool = True) -> bool:
    """Check `out/<manifest_name>` against settings and write it; True if an earlier run with the same settings
    is there to resume. Different settings need overwrite (then `owned` files, globs relative to out, are
    deleted first). With `exclusive` (the folder belongs to this run alone), a non-empty folder without the
    manifest is refused unless overwrite; evaluations share one folder, each with its own manifest."""
    out, settings = Path(out), _jsonable(settings)
    manifest = out / manifest_name
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
    old = None
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError) as e:
            raise DDIMError(f"{manifest} is not readable JSON ({e}); pass --overwrite to start the {what} again") from e
    if old is not None and old != settings and not overwrite:
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise OutputExistsError(f"{out} holds a {what} with other settings {diff} (old, new); pass --overwrite "
                                "to replace it, or choose another --out")
    foreign = out.is_dir() and any(p.name != manifest_name for p in out.iterdir())
    if exclusive and old is None and foreign and not overwrite:
        raise OutputExistsError(f"{out} exists and does not hold a ddim {what}; pass --overwrite or another --out")
    resume = old == settings and not overwrite
    if overwrite:
        for pattern in owned:
            for p in out.glob(pattern):
                p.unlink(missing_ok=True)
    check_writable(out)
    write_json_atomic(manifest, settings, indent=1)
    return resume


def check_writable(folder: Path) -> None:
    """Create folder if needed and check that files can be written in it, before any work is done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ddim-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UnwritableError(f"cannot write into {str(folder)!r}: {e.strerror or e}") from e


def prepare_output(path: str | Path, overwrite: bool, flag: str = "--out") -> Path:
    """An output file: refused if it exists (unless overwrite) or is a folder; its folder created and
    checked for writing, all before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{flag} {str(path)!r} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{flag} {str(path)!r} exists; pass --overwrite to replace it")
    check_writable(path.parent)
    return path
