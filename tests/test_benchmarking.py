"""What the benchmarks share: the interleaved timer's order of calls and its budget (on a fake clock: no timed
assertions), and the BENCHMARKS.md section writer."""

import itertools

from ddim import benchmarking
from ddim.benchmarking import interleaved, median_seconds, medians, write_section


def _recorder():
    log = []
    return log, {k: (lambda k=k: log.append(k)) for k in "abc"}


def test_interleaved_warms_up_then_alternates_the_order_of_rounds():
    log, calls = _recorder()
    times = interleaved(calls, 3)
    assert log == list("abc") + list("abc") + list("cba") + list("abc")      # warm-up, then rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    log.clear()
    seen = []
    interleaved(calls, 2, warmup=False, alternate=False, on_time=lambda k, s: seen.append(k))
    assert log == seen == list("abcabc")


def test_interleaved_runs_rounds_until_the_time_budget_is_spent(monkeypatch):
    clock = itertools.count()                                   # every reading of the clock is one second later
    monkeypatch.setattr(benchmarking.time, "perf_counter", lambda: float(next(clock)))
    log, calls = _recorder()
    times = interleaved(calls, 1, seconds=30, warmup=False)
    rounds = len(times["a"])
    assert rounds > 1 and all(len(v) == rounds for v in times.values()) and len(log) == 3 * rounds
    assert all(t == 1.0 for v in times.values() for t in v)     # each timing: two readings, one second apart
    assert medians({"a": [3.0, 1.0, 2.0]}) == {"a": 2.0}
    assert median_seconds(lambda: None, 3) == 1.0


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "B.md"
    write_section(path, "a", "first")
    write_section(path, "b", "other")
    write_section(path, "a", "second")
    text = path.read_text()
    assert "second" in text and "first" not in text and "other" in text and text.startswith("# Benchmarks")
