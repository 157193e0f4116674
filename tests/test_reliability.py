"""Reliability of files: stale temporaries, integrity hashes, full disks, corrupt inputs name the file.

The training-loop side (torn logs, divergence, interrupts, typed configs) is in test_reliability_train.py.
"""

from __future__ import annotations

import os

from ddim import io


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
