"""What every benchmark shares: the interleaved timer, the machine line, and the BENCHMARKS.md section writer.

The benchmark scripts in benchmarks/, `ddim bench` (`ddim.bench`) and the timing table of `ddim eval timing`
time with these. Kept light (torch and the standard library only): `ddim bench` imports it in every measured
subprocess, where each extra module would show in the peak memory it reports.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch
from ddim.errors import DDIMError

__all__ = ["synchronize", "time_call", "median_seconds", "interleaved", "medians", "machine", "write_section",
           "write_report", "check_section_file", "BENCHMARKS_HEADER"]


def synchronize(device: str | torch.device = "cpu") -> None:
    """Wait for the device's queued work (a no-op on the CPU, whose ops are synchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Seconds of one call of fn, up to the end of the device work it queued."""
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], Any], repeats: int, device: str | torch.device = "cpu") -> float:
    """Median seconds of `repeats` back-to-back calls of fn (no warm-up: call it once first if it needs one)."""
    return statistics.median(time_call(fn, device) for _ in range(repeats))


def interleaved(calls: dict[Hashable, Callable[[], Any]], rounds: int, *, seconds: float = 0.0,
                warmup: bool = True, alternate: bool = True, device: str | torch.device = "cpu",
                on_time: Callable[[Hashable, float], None] | None = None) -> dict[Hashable, list[float]]:
    """Seconds of each call in every round: one call of each per round, so that machine noise (a drift of its
    speed, a neighbour's burst) falls on all of them alike. At least `rounds` rounds, and more until `seconds`
    have passed; after one untimed warm-up call each (unless `warmup` is False); odd rounds run the calls in
    reverse order (unless `alternate` is False), so that none always runs first or last. `on_time(key, s)` is
    told each timing as it is taken."""
    for fn in calls.values() if warmup else ():
        fn()
    synchronize(device)
    times: dict[Hashable, list[float]] = {k: [] for k in calls}
    keys, start, r = list(calls), time.perf_counter(), 0
    while r < rounds or time.perf_counter() - start < seconds:
        for k in (keys[::-1] if alternate and r % 2 else keys):
            times[k].append(time_call(calls[k], device))
            if on_time is not None:
                on_time(k, times[k][-1])
        r += 1
    return times


def medians(times: dict[Hashable, list[float]]) -> dict[Hashable, float]:
    """The median of each key's timings (what `interleaved` returns, reduced)."""
    return {k: statistics.median(v) for k, v in times.items()}


def machine(device: str = "cpu") -> str:
    """One line naming the hardware and software the numbers were taken on (the GPU's name when `device` is one)."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.device(device).type == "cuda"
    dev = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    return f"{cpu}; {os.cpu_count()} cores; {dev}; torch {torch.__version__}; Python {platform.python_version()}"


BENCHMARKS_HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def check_section_file(path: str | os.PathLike) -> str:
    """The text of the markdown file `--write` names (the header of a new one), refused by name if it is not a
    UTF-8 text file (binary, too big, a folder) or cannot be written; before any work."""
    from ddim.readers import read_text
    from ddim.runs import check_output_path, check_writable
    path = check_output_path(path, "--write")
    if path.is_dir():
        raise DDIMError(f"--write {str(path)!r} is a folder; give a markdown file")
    check_writable(path.parent)
    return read_text(path, "--write") if path.exists() else BENCHMARKS_HEADER


def write_section(path: str | os.PathLike, name: str, body: str) -> None:
    """Put `body` between the markers of section `name` in the markdown file `path` (atomically), leaving the
    other sections alone."""
    from ddim.io import write_text_atomic
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = check_section_file(path)
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(path, text)


def write_report(script: str | os.PathLike, name: str, body: str) -> Path:
    """Section `name` of the BENCHMARKS.md at the root of the checkout that holds `script` (a benchmark's
    `__file__`, in benchmarks/); returns that file."""
    path = Path(script).resolve().parents[1] / "BENCHMARKS.md"
    write_section(path, name, body)
    return path
