"""Where the provided fixtures live: $DDIM_FIXTURES, else ../shared/fixtures beside this checkout, else the
project machines' /work/shared/fixtures. Tests that need them are skipped, with the reason, when none exists."""

import os
from pathlib import Path

import pytest


def _find() -> Path:
    candidates = [os.environ.get("DDIM_FIXTURES"), Path(__file__).resolve().parents[2] / "shared" / "fixtures",
                  "/work/shared/fixtures"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return Path(candidates[1])


FIXTURES = _find()
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found (set DDIM_FIXTURES); "
                                                                  f"looked in {FIXTURES}")
