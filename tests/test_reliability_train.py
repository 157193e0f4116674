"""Reliability of training: its checkpoints load, the log survives a torn line, divergence and interrupts stop
cleanly (and `ddim train` exits 130 / 143), a bad config or another objective on --resume is refused before
anything is built or written (tiny runs on CPU, seconds). The config's own type and range checks: test_config.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddim import checkpoint
from ddim import train as tr
from ddim.config import config_from_dict
from ddim.errors import DDIMError
from ddim.schedule import NoiseSchedule
from tiny_runs import tiny_run_dict

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg_dict(tmp_path, out="run", **training):
    """tests/tiny_runs.py's run, 3 steps with one checkpoint at the end."""
    return tiny_run_dict(tmp_path, out, **{"n_iters": 3, "snapshot_freq": 3, **training})


def _cfg(tmp_path, out="run", **training):
    return config_from_dict(_cfg_dict(tmp_path, out, **training))


def _metrics(run):
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()]


# --- item 1: the trainer's own checkpoint loads as what it is ------------------------------------------------
def test_training_checkpoint_loads_with_its_schedule_prediction_and_ema(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.diffusion.prediction, cfg.diffusion.beta_schedule = "v", "cosine"
    run = tr.train(cfg, progress=False)
    path = run / "ckpt-0000003.pt"
    state = torch.load(path, weights_only=True)
    loaded = checkpoint.load(path)
    assert loaded.format == "ddim-train-ckpt" and loaded.prediction == "v"
    assert torch.equal(loaded.schedule.alphas_cumprod, NoiseSchedule.cosine(100).alphas_cumprod)
    assert loaded.config == tr.build_unet_config(cfg) and loaded.metadata["step"] == 3
    assert not loaded.model.training
    ours = loaded.model.state_dict()
    assert ours.keys() == state["ema"].keys()
    assert all(torch.equal(ours[k], state["ema"][k]) for k in ours)                     # EMA by default
    raw = checkpoint.load(path, ema=False).model.state_dict()
    assert all(torch.equal(raw[k], state["model"][k]) for k in raw)                     # raw on request
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in raw)        # and they differ


# --- item 2: a torn metrics line does not block --resume -----------------------------------------------------
def test_resume_drops_a_torn_last_log_line(tmp_path):
    run = tr.train(_cfg(tmp_path), progress=False)                          # steps 1..3, checkpoint at 3
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.12')                                  # the disk filled mid-line
    cfg = _cfg(tmp_path, n_iters=5)
    cfg.resume = True
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped its last line 4"):
        tr.train(cfg, progress=False)
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5]


def test_a_damaged_log_line_in_the_middle_names_file_and_line(tmp_path):
    run = tr.train(_cfg(tmp_path), progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    cfg = _cfg(tmp_path, n_iters=5)
    cfg.resume = True
    with pytest.raises(DDIMError, match=r"metrics\.jsonl, line 2: not a metrics record"):
        tr.train(cfg, progress=False)
    assert (run / "metrics.jsonl").read_text().splitlines() == lines          # left as it was


# --- item 3: bad configs are refused before anything is built ------------------------------------------------
@pytest.mark.parametrize("section, key, value, message", [
    ("training", "n_samples", 0, "training.n_samples"),
    ("training", "sample_steps", 101, "training.sample_steps"),            # T = 100 in these runs
    ("model", "attn_resolutions", [5], "attn_resolutions"),                # UNetConfig's check, before any file
    ("model", "preset", "huge", "model.preset must be one of"),
    ("data", "dataset", "bogus", "data.dataset must be one of"),
])
def test_train_refuses_before_building_data_or_writing(tmp_path, monkeypatch, section, key, value, message):
    cfg = _cfg(tmp_path)
    setattr(getattr(cfg, section), key, value)
    monkeypatch.setattr(tr, "build_dataset", lambda *a: pytest.fail("the data set was built"))
    with pytest.raises(DDIMError, match=message):
        tr.train(cfg, progress=False)
    assert not Path(cfg.out_dir).exists()


# --- item 4: divergence stops the run before a non-finite checkpoint -----------------------------------------
def _steps(run):
    return [int(p.stem.split("-")[1]) for p in tr.list_checkpoints(run)]


def test_divergence_after_resume_with_a_huge_lr_keeps_the_finite_checkpoints(tmp_path):
    run = tr.train(_cfg(tmp_path, n_iters=2, snapshot_freq=1, keep_last=1), progress=False)
    cfg = _cfg(tmp_path, n_iters=12, snapshot_freq=1, keep_last=1)
    cfg.resume, cfg.optim.lr, cfg.optim.grad_clip, cfg.optim.warmup = True, 1e6, 0.0, 0
    with pytest.raises(DDIMError, match=r"^training diverged at step (\d+): .*not finite") as e:
        tr.train(cfg, progress=False)
    bad = int(str(e.value).split("step ")[1].split(":")[0])
    assert _steps(run) and max(_steps(run)) < bad and str(tr.latest_checkpoint(run)) in str(e.value)
    for path in tr.list_checkpoints(run):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for w in ("model", "ema") for v in state[w].values())
    assert all(r["step"] < bad for r in _metrics(run))                       # nothing logged from that state


def test_a_nan_between_log_steps_is_caught_before_the_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = tr.loss_fn

    def nan_at_step_2(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(tr, "loss_fn", nan_at_step_2)
    cfg = _cfg(tmp_path, n_iters=3, log_freq=100, snapshot_freq=3)      # only step 3 syncs: log, checkpoint
    with pytest.raises(DDIMError, match=r"^training diverged at step 2: .*none was written before"):
        tr.train(cfg, progress=False)
    assert _steps(Path(cfg.out_dir)) == [] and not (Path(cfg.out_dir) / "model.safetensors").exists()


# --- item 6: SIGINT / SIGTERM finish the step, checkpoint, and resume exactly ---------------------------------
@pytest.fixture
def guarded_signals():
    """SIGINT/SIGTERM handlers that fail the test when a signal reaches them (rather than killing pytest)."""
    import signal

    def previous(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the handler installed before train()")

    old = {s: signal.signal(s, previous) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def _signal_at_step(monkeypatch, step, *signums):
    import signal
    calls = []
    real = tr.ema_update

    def update_then_signal(*a, **k):                                     # runs once per step, inside the loop
        real(*a, **k)
        calls.append(1)
        if len(calls) == step:
            for s in signums:
                signal.raise_signal(s)

    monkeypatch.setattr(tr, "ema_update", update_then_signal)


def _same_run(a, b, last):
    assert [r["loss"] for r in _metrics(a)] == [r["loss"] for r in _metrics(b)]
    sa, sb = (torch.load(Path(r) / f"ckpt-{last:07d}.pt", weights_only=True) for r in (a, b))
    assert all(torch.equal(sa[w][k], sb[w][k]) for w in ("model", "ema") for k in sa["model"])


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_first_signal_checkpoints_the_step_and_resume_is_exact(tmp_path, monkeypatch, capsys, guarded_signals,
                                                               signame):
    import signal
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    full = tr.train(_cfg(tmp_path, "full", n_iters=6, snapshot_freq=100), progress=False)
    _signal_at_step(monkeypatch, 3, getattr(signal, signame))
    part = tr.train(_cfg(tmp_path, "part", n_iters=6, snapshot_freq=100), progress=False)
    assert _steps(part) == [3] and not (part / "model.safetensors").exists()
    assert [r["step"] for r in _metrics(part)] == [1, 2, 3]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train: stopped by {signame} at step 3 of 6; wrote {part / 'ckpt-0000003.pt'}; continue with "
                   f"--resume (same config, --out {part})"]
    assert {s: signal.getsignal(s) for s in before} == before                 # handlers restored
    monkeypatch.undo()
    cfg = _cfg(tmp_path, "part", n_iters=6, snapshot_freq=100)
    cfg.resume = True
    tr.train(cfg, progress=False)
    _same_run(full, part, 6)


def test_second_signal_stops_at_once(tmp_path, monkeypatch, guarded_signals):
    import signal
    before = signal.getsignal(signal.SIGINT)
    _signal_at_step(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    cfg = _cfg(tmp_path, n_iters=6, snapshot_freq=100)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, progress=False)
    assert _steps(Path(cfg.out_dir)) == [] and signal.getsignal(signal.SIGINT) is before
    assert not [p for p in Path(cfg.out_dir).rglob("*.tmp")]


def test_no_handlers_outside_the_main_thread(tmp_path):
    import signal
    import threading
    seen = []
    real = tr.ema_update

    def record(*a, **k):
        real(*a, **k)
        seen.append(signal.getsignal(signal.SIGINT))

    box = {}
    tr.ema_update, old = record, tr.ema_update
    try:
        t = threading.Thread(target=lambda: box.update(run=tr.train(_cfg(tmp_path, n_iters=2), progress=False)))
        t.start()
        t.join()
    finally:
        tr.ema_update = old
    assert box["run"].exists() and seen and all(h is signal.getsignal(signal.SIGINT) for h in seen)


SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from ddim import train as tr
from ddim.config import config_from_dict
tr.train(config_from_dict(json.loads(sys.argv[1])), progress=False)
"""


def _wait_for_log_lines(proc, log: Path, n: int) -> None:
    """Until the training subprocess has logged n lines (it must still run; two minutes at most)."""
    import time
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_checkpoints_and_resumes_bit_identically(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    d = _cfg_dict(tmp_path, "killed", n_iters=100_000, snapshot_freq=100_000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(d)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_log_lines(proc, Path(d["out_dir"]) / "metrics.jsonl", 3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    k = int(err.split("stopped by SIGINT at step ")[1].split()[0])
    run = Path(d["out_dir"])
    assert _steps(run) == [k] and [r["step"] for r in _metrics(run)] == list(range(1, k + 1))
    full = tr.train(_cfg(tmp_path, "full", n_iters=k + 2, snapshot_freq=100_000), progress=False)
    cfg = _cfg(tmp_path, "killed", n_iters=k + 2, snapshot_freq=100_000)
    cfg.resume = True
    tr.train(cfg, progress=False)
    _same_run(full, run, k + 2)


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_all_ranks_at_one_step(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    d = {**_cfg_dict(tmp_path, "ddp", n_iters=100_000, snapshot_freq=100_000), "device": "cpu"}
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), json.dumps(d)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for_log_lines(proc, Path(d["out_dir"]) / "metrics.jsonl", 3)
        proc.send_signal(signal.SIGTERM)                  # the launcher forwards it to both ranks
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    k = int(err.split("stopped by SIGTERM at step ")[1].split()[0])
    assert err.count("stopped by") == 1                   # rank 0 reports; no rank hung or died mid-step
    assert _steps(Path(d["out_dir"])) == [k] and _metrics(d["out_dir"])[-1]["step"] == k


def test_resume_from_an_unreadable_checkpoint_names_it(tmp_path):
    run = tr.train(_cfg(tmp_path), progress=False)
    (run / "ckpt-0000003.pt").write_bytes(b"PK\x03\x04 not really a zip")
    cfg = _cfg(tmp_path, n_iters=5)
    cfg.resume = True
    with pytest.raises(DDIMError, match=r"ckpt-0000003\.pt: not a readable training checkpoint .*move it out"):
        tr.train(cfg, progress=False)


# --- issue 24: the objective on resume, exit codes, checkpoint order, progress, packaged configs --------------
def _cli_run(tmp_path, out="cli", **training):
    """`ddim train` flags for tests/tiny_runs.py's run, through a YAML file as a user would write it."""
    import yaml
    d = _cfg_dict(tmp_path, out, **training)
    path = tmp_path / f"{out}.yml"
    path.write_text(yaml.safe_dump({k: v for k, v in d.items() if k != "out_dir"}))
    return ["train", "--config", str(path), "--out", d["out_dir"], "--device", "cpu"]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("flags, flag", [
    (["--prediction", "v"], "--prediction"),
    (["--beta-schedule", "cosine"], "--beta-schedule"),
    (["--num-diffusion-timesteps", "50"], "--num-diffusion-timesteps"),
    (["--loss-reduction", "sum"], "--loss-reduction"),
    (["--image-size", "16"], "--image-size"),
    (["--ch", "64"], "--ch"),
])
def test_resume_with_another_objective_is_refused_naming_the_flag(tmp_path, capsys, flags, flag):
    from ddim.commands import main
    argv = _cli_run(tmp_path)
    assert main(argv) == 0
    run = Path(argv[argv.index("--out") + 1])
    before = _snapshot(run)
    capsys.readouterr()
    assert main(argv + ["--resume", "--steps", "5"] + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "ckpt-0000003.pt was trained with" in err[0], err
    assert _snapshot(run) == before                                      # nothing written, nothing changed
    assert main(argv + ["--resume", "--steps", "5"]) == 0                 # the same objective resumes


def test_resume_with_another_objective_is_refused_in_python(tmp_path):
    tr.train(_cfg(tmp_path), progress=False)
    cfg = _cfg(tmp_path, n_iters=5)
    cfg.resume, cfg.diffusion.prediction = True, "x0"
    with pytest.raises(DDIMError, match=r"was trained with diffusion\.prediction = 'eps', but the config now says "
                                        r"'x0'; resume with the run's value, or train into a new --out$"):
        tr.train(cfg, progress=False)


@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_checkpoints_then_ddim_train_exits_128_plus_it(tmp_path, monkeypatch, capsys, guarded_signals,
                                                                 signame, code):
    import signal
    from ddim.commands import main
    _signal_at_step(monkeypatch, 2, getattr(signal, signame))
    argv = _cli_run(tmp_path, n_iters=6, snapshot_freq=100)
    assert main(argv) == code
    run = Path(argv[argv.index("--out") + 1])
    assert _steps(run) == [2] and not (run / "model.safetensors").exists()
    assert f"stopped by {signame} at step 2 of 6" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(argv + ["--resume"]) == 0 and (run / "model.safetensors").exists()


def test_checkpoints_past_step_9999999_are_ordered_by_their_step(tmp_path):
    assert tr.checkpoint_name(10_000_000) == "ckpt-10000000.pt" and tr.checkpoint_name(42) == "ckpt-0000042.pt"
    for step in (9_999_998, 9_999_999, 10_000_000, 10_000_001):
        (tmp_path / tr.checkpoint_name(step)).write_bytes(b"")
    (tmp_path / "ckpt-12x.pt").write_bytes(b"")                            # not a checkpoint of the run
    assert [p.name for p in tr.list_checkpoints(tmp_path)] == [
        "ckpt-9999998.pt", "ckpt-9999999.pt", "ckpt-10000000.pt", "ckpt-10000001.pt"]
    assert tr.latest_checkpoint(tmp_path).name == "ckpt-10000001.pt"      # what --resume continues from
    tr.prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-10000000.pt", "ckpt-10000001.pt", "ckpt-12x.pt"]


def test_progress_is_a_line_per_log_interval_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from ddim.commands import main
    assert main(_cli_run(tmp_path, n_iters=6, log_freq=2)) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train: step ")]
    assert [ln.split()[2] for ln in lines] == ["2/6", "4/6", "6/6"] and all(" loss " in ln for ln in lines)
    tr.train(_cfg(tmp_path, "quiet"), progress=False)
    assert capsys.readouterr().err == ""                                 # progress=False stays silent


def test_a_grid_of_a_billion_samples_is_refused_before_work(tmp_path, capsys):
    from ddim.commands import main
    assert main(_cli_run(tmp_path) + ["--n-samples", "1000000000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n-samples" in err[0] and "at most 4096" in err[0]
    assert not (tmp_path / "cli").exists()


