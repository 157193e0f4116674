"""Shared by the benchmark scripts: the machine line and this checkout's BENCHMARKS.md (from `ddim.bench`)."""

from __future__ import annotations

from pathlib import Path

from ddim import bench

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
machine = bench.machine


def write_section(name: str, body: str) -> None:
    """Put `body` between this script's markers in BENCHMARKS.md, leaving other sections alone."""
    bench.write_section(BENCHMARKS, name, body)
