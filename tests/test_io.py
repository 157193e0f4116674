"""ddim.io: atomic writes leave the old file or the whole new one, never a temporary or half a file."""
import json
import os
import stat

import pytest

from ddim.io import atomic_path, write_json_atomic, write_text_atomic


def test_replaces_whole_file_with_open_mode(tmp_path):
    p = tmp_path / "sub" / "a.txt"  # parent is created
    write_text_atomic(p, "old")
    write_text_atomic(p, "new")
    assert p.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]


def test_error_keeps_previous_file_and_no_temporary(tmp_path):
    p = tmp_path / "ckpt.bin"
    p.write_bytes(b"previous")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")
    assert p.read_bytes() == b"previous"
    assert [x.name for x in tmp_path.iterdir()] == ["ckpt.bin"]


def test_json_that_cannot_serialise_writes_nothing(tmp_path):
    p = tmp_path / "c.json"
    with pytest.raises(TypeError):
        write_json_atomic(p, {"x": object()})
    assert not p.exists() and list(tmp_path.iterdir()) == []
    write_json_atomic(p, {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1}
