"""Safe readers for the files a user hands in: images, arrays, YAML, JSON and text, each with a size limit.

Every reader here refuses a hostile or broken file with one `DDIMError` line that names the file, before any
large allocation: an image is measured from its header before its pixels are decoded (a decompression bomb
is refused, not decoded); an .npy header is checked against the bytes the file really holds (a header that
claims terabytes is refused, not allocated) and object arrays (pickles) are never read; YAML is read as plain
data (no `!!python` tags) with duplicate keys refused by key and line; JSON must have the shape the caller
expects (a run manifest that is a list is refused by name). Writers live in `ddim.io`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ddim.errors import DDIMError, MissingFileError, one_line

__all__ = ["MAX_IMAGE_PIXELS", "MAX_TEXT_BYTES", "max_array_bytes", "open_image", "check_array_file",
           "read_text", "read_yaml", "read_json"]

# The largest image the package decodes: 8192 x 8192. Diffusion models here take at most 256 x 256; Pillow's
# own guard (89M pixels, and then only a warning) lets a 50 kB PNG claim gigabytes of pixels.
MAX_IMAGE_PIXELS = 8192 * 8192
# Configs, manifests and markdown files are small; a bigger "config" is not one.
MAX_TEXT_BYTES = 16 * 2**20


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def _name(path: Path, what: str | None) -> str:
    return f"{what} {str(path)!r}" if what else str(path)


# --- images ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_image(path: str | os.PathLike, what: str | None = None) -> Iterator[Any]:
    """A PIL image opened lazily (header only), refused if it is not an image or holds more than
    MAX_IMAGE_PIXELS pixels, before any pixel is decoded. Decoding errors in the block are the caller's."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():          # our own, lower limit is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise MissingFileError(f"{_name(path, what)}: image file does not exist") from None
    except Image.DecompressionBombError as e:
        raise DDIMError(f"{_name(path, what)}: refused, a decompression bomb ({one_line(e)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DDIMError(f"could not decode image {str(path)!r}: {one_line(e)}") from None
    with img:
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise DDIMError(f"{_name(path, what)}: {w}x{h} pixels is over the limit of {MAX_IMAGE_PIXELS} "
                            "(8192 x 8192); refused before decoding (a decompression bomb?)")
        yield img


# --- arrays ----------------------------------------------------------------------------------------------------
def max_array_bytes() -> int:
    """The most bytes one array file may hold: the machine's physical memory (where known, else 64 GiB)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 64 * 2**30


def _check_npy_stream(f: BinaryIO, stored: int, where: str, limit: int) -> None:
    """Read an .npy header from f (at its start) and check what it claims against the `stored` bytes."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = reader(f, max_header_size=10000)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise DDIMError(f"{where}: not a readable .npz/.npy file ({one_line(e)})") from None
    if dtype.hasobject:
        raise DDIMError(f"{where}: not a readable .npz/.npy file: it holds Python objects (a pickle); only plain "
                        "numeric arrays are read")
    need = math.prod(shape) * dtype.itemsize
    have = stored - f.tell()
    if need > have:
        raise DDIMError(f"{where}: the header claims a {'x'.join(map(str, shape))} {dtype} array ({_size(need)}) "
                        f"but the file holds {_size(max(have, 0))}; truncated or forged")
    if need > limit:
        raise DDIMError(f"{where}: a {_size(need)} array is over the limit of {_size(limit)} (this machine's "
                        "memory)")


def check_array_file(path: str | os.PathLike, what: str | None = None, limit: int | None = None) -> None:
    """Check an .npy / .npz file before numpy reads it: each array's header against the bytes stored for it,
    object (pickled) arrays refused, and the total under `limit` (default: `max_array_bytes()`). Damaged zip
    structure is left to the reader, which names the file too."""
    path = Path(path)
    limit = max_array_bytes() if limit is None else limit
    name = _name(path, what)
    if not path.is_file():
        raise MissingFileError(f"{name}: array file does not exist")
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"
    if zipped and not zipfile.is_zipfile(path):
        raise DDIMError(f"{name}: not a readable .npz/.npy file (truncated or corrupt?: no zip directory)")
    if not zipped:
        with open(path, "rb") as f:
            _check_npy_stream(f, path.stat().st_size, name, limit)
        return
    try:
        with zipfile.ZipFile(path) as z:
            members = [i for i in z.infolist() if i.filename.endswith(".npy")]
            total = sum(i.file_size for i in members)
            if total > limit:
                raise DDIMError(f"{name}: its arrays unpack to {_size(total)}, over the limit of {_size(limit)} "
                                "(this machine's memory)")
            for info in members:
                with z.open(info) as f:
                    _check_npy_stream(f, info.file_size, f"{name} (array {info.filename[:-4]!r})", limit)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
        raise DDIMError(f"{name}: not a readable .npz/.npy file (truncated or corrupt?) ({one_line(e)})") from None


# --- text, YAML, JSON ------------------------------------------------------------------------------------------
def read_text(path: str | os.PathLike, what: str | None = None, limit: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file, refused if it is missing, bigger than `limit` or binary (not UTF-8, or NUL bytes)."""
    path = Path(path)
    name = _name(path, what)
    if not path.exists():
        raise MissingFileError(f"{name}: file does not exist")
    if not path.is_file():
        raise DDIMError(f"{name}: not a file")
    size = path.stat().st_size
    if size > limit:
        raise DDIMError(f"{name}: {_size(size)} is over the limit of {_size(limit)} for a text file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DDIMError(f"{name}: not a UTF-8 text file (binary data at byte {e.start})") from None
    if "\0" in text:
        raise DDIMError(f"{name}: not a text file (NUL byte at character {text.index(chr(0))})")
    return text


def _unique_key_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader (plain data, no tags that build objects) that refuses duplicate keys, which
        PyYAML would silently resolve to the last value."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:            # an unhashable key: the base class says so with its mark
                    break
                if first != line:
                    raise DDIMError(f"duplicate key {key!r} at line {line} (first at line {first})")
            return super().construct_mapping(node, deep)
    return Loader


def read_yaml(path: str | os.PathLike, what: str | None = None, limit: int = MAX_TEXT_BYTES) -> Any:
    """A YAML file as plain data: text only (see `read_text`), no object-building tags (`!!python/...`),
    duplicate keys refused naming the key and its line. Errors name the file and line."""
    import yaml

    path = Path(path)
    text = read_text(path, what, limit)
    name = _name(path, what)
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except DDIMError as e:
        raise DDIMError(f"{name}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise DDIMError(f"{name}: not valid YAML{where} ({' '.join(str(problem).split())})") from None
    except RecursionError:
        raise DDIMError(f"{name}: YAML nested too deeply") from None


def read_json(path: str | os.PathLike, what: str | None = None, expect: type = dict,
              limit: int = MAX_TEXT_BYTES) -> Any:
    """A JSON file whose top level is an `expect` (dict by default); errors name the file (and line)."""
    path = Path(path)
    text = read_text(path, what, limit)
    name = _name(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DDIMError(f"{name}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
    except RecursionError:
        raise DDIMError(f"{name}: JSON nested too deeply") from None
    if not isinstance(value, expect):
        kinds = {dict: "an object {...}", list: "a list [...]"}
        raise DDIMError(f"{name}: expected {kinds.get(expect, expect.__name__)} at the top level, "
                        f"found {type(value).__name__}")
    return value
