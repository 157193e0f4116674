"""Progressive distillation (ddim.distill, `ddim distill`): the teacher's target against the sampler's own two
DDIM steps, a round that makes a one-step student match its two-step teacher on held-out noise, bit-exact
resume of a stopped round, the student as a checkpoint every command loads (and `ddim sample` uses its
recorded grid), and bad input refused in one line before anything is written. Tiny networks, CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddim import checkpoint
from ddim import distill as D
from ddim import train as tr
from ddim.checkpoint import LoadedModel
from ddim.commands import main
from ddim.config import config_from_dict
from ddim.models import PRESETS, UNet, UNetConfig
from ddim.sampling import DDIMSampler, Denoiser
from ddim.sampling.steps import ddim_step, ddim_x0_of_step, predict_eps_x0
from ddim.schedule import NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

T = 100


def _unet(num_classes: int = 0) -> UNet:
    """A small U-Net on 8x8 grey images (one level, no attention): a distillation step in milliseconds."""
    cfg = UNetConfig.from_dict({**PRESETS["tiny"].to_dict(), "image_size": 8, "in_channels": 1, "out_channels": 1,
                                "ch_mult": [1], "attn_resolutions": [], "num_classes": num_classes})
    return UNet(cfg).eval()


def _teacher(prediction: str = "v", num_classes: int = 0, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    model = _unet(num_classes)
    return LoadedModel(model, NoiseSchedule.linear(T, 1e-4, 0.2), prediction, model.config, {})


def _data(tmp_path: Path, labels: bool = False) -> Path:
    npz = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 256, (32, 8, 8), dtype=np.uint8)}
    if labels:
        arrays["labels"] = np.arange(32) % 3
    np.savez(npz, **arrays)
    return npz


def _cfg(tmp_path: Path, out: str = "out", labels: bool = False, **training):
    d = {"data": {"dataset": "npz", "root": str(_data(tmp_path, labels)), "image_size": 8, "channels": 1},
         "model": {"ema_rate": 0.9, "ema_warmup": True},
         "training": {"batch_size": 8, "n_iters": 6, "snapshot_freq": 100, "keep_last": 2, "log_freq": 1,
                      "sample_freq": 0, "n_samples": 4, **training},
         "optim": {"lr": 1e-3, "lr_schedule": "cosine"}, "out_dir": str(tmp_path / out)}
    return config_from_dict(d)


# --- the math ----------------------------------------------------------------------------------------------------
def test_per_sample_levels_agree_with_the_scalar_step_math():
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 1, 4, 4, generator=g,
                                                                                   dtype=torch.float64)
    a = torch.tensor([0.3, 0.7, 0.95], dtype=torch.float64)
    for pred in ("eps", "x0", "v"):
        eps, x0 = predict_eps_x0(out, x, a, pred)
        for i in range(3):
            e_i, x_i = predict_eps_x0(out[i:i + 1], x[i:i + 1], a[i].item(), pred)
            assert torch.allclose(eps[i:i + 1], e_i, atol=1e-12) and torch.allclose(x0[i:i + 1], x_i, atol=1e-12)
    a_s = torch.tensor([0.5, 0.9, 1.0], dtype=torch.float64)
    step = ddim_step(x0, eps, a_s)
    for i in range(3):
        assert torch.allclose(step[i:i + 1], ddim_step(x0[i:i + 1], eps[i:i + 1], a_s[i].item()), atol=1e-12)
    # x~ inverts one deterministic step: the step from x with x0 = x~ (eps from x) lands on the given x_s
    x_s = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    x_tilde = ddim_x0_of_step(x, x_s, a, a_s)
    eps_tilde = predict_eps_x0(x_tilde, x, a, "x0")[0]
    assert torch.allclose(ddim_step(x_tilde, eps_tilde, a_s), x_s, atol=1e-10)


@pytest.mark.parametrize("prediction, classes, w", [("eps", 0, None), ("v", 0, None), ("x0", 3, 2.5)])
def test_the_target_is_where_the_samplers_two_ddim_steps_land(prediction, classes, w):
    """Independent truth: DDIMSampler's walk over the teacher's grid (guided at w). From the top level of a
    4-step grid the two steps end at tau_1, where one DDIM step with x0 = x~ must land too; from tau_1 of a
    2-step grid they end at alpha = 1, where x~ is the sample itself."""
    torch.manual_seed(1)
    teacher = _teacher(prediction, classes, seed=3)
    model = teacher.model.double()
    sched = teacher.schedule
    y = torch.tensor([0, 2, -1]) if classes else None
    z = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    den = Denoiser(model, sched, prediction, y=y, guidance=w if w is not None else 1.0)
    sampler = DDIMSampler(model, sched, prediction)
    kw = {"y": y, "guidance": w} if classes else {}
    taus = [9, 39, 69, 99]
    walk = list(sampler.iter_sample(z, steps=4, skip=taus, **kw))     # yields after each step: 69, 39, 9, end
    x_tilde = D.teacher_target(den, prediction, sched, z, torch.full((3,), 99), torch.full((3,), 69),
                               torch.full((3,), 39))
    a_t, a_s = sched.alpha(torch.full((3,), 99)), sched.alpha(torch.full((3,), 39))
    eps = predict_eps_x0(x_tilde, z, a_t, "x0")[0]
    assert torch.allclose(ddim_step(x_tilde, eps, a_s), walk[1][1], atol=1e-9)
    end = sampler.sample(z, steps=2, skip=[39, 99], **kw)
    x_tilde = D.teacher_target(den, prediction, sched, z, torch.full((3,), 99), torch.full((3,), 39),
                               torch.full((3,), -1))
    assert torch.allclose(x_tilde, end, atol=1e-9)


def test_round_grids_halve_and_nest_as_trailing_does():
    teacher = _teacher()
    steps, taus = D.check_teacher(teacher, D.DistillSpec(steps_from=16, steps_to=2))
    rounds = D.round_grids(taus, 2)
    assert [(len(a), len(b)) for a, b in rounds] == [(16, 8), (8, 4), (4, 2)]
    for teacher_grid, student_grid in rounds:
        assert student_grid == DDIMSampler(teacher.model, teacher.schedule).taus(len(student_grid), "trailing").tolist()
        assert student_grid[-1] == T - 1 and set(student_grid) < set(teacher_grid)


# --- a round ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_round_makes_a_one_step_student_match_two_teacher_steps_on_held_out_noise(tmp_path):
    teacher = _teacher("v")
    cfg = _cfg(tmp_path, n_iters=150, batch_size=16, log_freq=50)
    cfg.model.ema = False
    spec = D.DistillSpec(steps_from=2, steps_to=1)
    taus = D.check_teacher(teacher, spec)[1]
    x_T = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(123))     # never seen in training
    untrained = D.matching_error(copy.deepcopy(teacher.model), "v", teacher.model, "v", teacher.schedule, taus, x_T)
    path = D.distill(teacher, spec, cfg, progress=False)
    student = checkpoint.load(path)
    trained = D.matching_error(student.model, "v", teacher.model, "v", teacher.schedule, taus, x_T)
    assert trained < 0.3 * untrained, (trained, untrained)
    assert student.metadata[D.DISTILLED]["steps"] == 1 and student.metadata[D.DISTILLED]["skip"] == [T - 1]


def _signal_at_step(monkeypatch, step, signum):
    import signal
    calls, real = [], tr.ema_update

    def update_then_signal(*a, **k):                      # runs once per step, inside the round's loop
        real(*a, **k)
        calls.append(1)
        if len(calls) == step:
            signal.raise_signal(signum)

    monkeypatch.setattr(tr, "ema_update", update_then_signal)


@pytest.fixture
def guarded_signals():
    import signal
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def test_a_conditional_round_asks_the_teacher_for_the_batch_labels_at_the_baked_in_guidance(tmp_path, monkeypatch):
    """Every teacher target of a round is the guided teacher at the batch's own labels (the null label where a
    label was dropped), not the unconditional teacher: a student trained on label-blind targets ignores y."""
    seen = []
    target = D.teacher_target

    def spy(den, *a, **k):
        seen.append((den.cond, den.guidance))
        return target(den, *a, **k)
    monkeypatch.setattr(D, "teacher_target", spy)
    D.distill(_teacher("x0", 3), D.DistillSpec(steps_from=2, steps_to=1, guidance=2.0),
              _cfg(tmp_path, "cond", labels=True), progress=False)
    assert seen and all(c is not None and w == 2.0 for c, w in seen)
    labels = torch.cat([c.args[0] for c, _ in seen])
    assert set(labels.tolist()) <= {-1, 0, 1, 2} and len(set(labels.tolist()) - {-1}) > 1


def test_a_round_stopped_by_a_signal_resumes_bit_exactly(tmp_path, monkeypatch, capsys, guarded_signals):
    """Two rounds (4 -> 2 -> 1 steps), a conditional teacher with guidance baked in; SIGTERM in round 2 writes its
    checkpoint, --resume keeps round 1 and finishes round 2 exactly as an unbroken run does."""
    import signal
    spec = D.DistillSpec(steps_from=4, steps_to=1, guidance=2.0)
    full = D.distill(_teacher("x0", 3), spec, _cfg(tmp_path, "full", labels=True), progress=False)
    _signal_at_step(monkeypatch, 6 + 3, signal.SIGTERM)   # round 1 takes 6 steps; stop round 2 at its step 3
    assert D.distill(_teacher("x0", 3), spec, _cfg(tmp_path, "part", labels=True), progress=False) is None
    part = tmp_path / "part"
    assert "stopped by SIGTERM at step 3 of 6 of round 2" in capsys.readouterr().err
    assert (part / "steps-0002" / "model.safetensors").exists() and not (part / "model.safetensors").exists()
    assert [p.name for p in tr.list_checkpoints(part / "steps-0001")] == ["ckpt-0000003.pt"]
    monkeypatch.undo()
    round1 = (part / "steps-0002" / "model.safetensors").stat().st_mtime_ns
    cfg = _cfg(tmp_path, "part", labels=True)
    cfg.resume = True
    assert D.distill(_teacher("x0", 3), spec, cfg, progress=False) == part / "model.safetensors"
    assert (part / "steps-0002" / "model.safetensors").stat().st_mtime_ns == round1        # round 1 kept
    for name in ("steps-0002", "steps-0001"):
        a, b = (json.loads(ln) for ln in (full.parent / name / "metrics.jsonl").read_text().splitlines()), \
            (json.loads(ln) for ln in (part / name / "metrics.jsonl").read_text().splitlines())
        assert [r["loss"] for r in a] == [r["loss"] for r in b]
    sa, sb = (checkpoint.load(p).model.state_dict() for p in (full, part / "model.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_round_killed_mid_step_resumes_from_its_last_checkpoint_bit_exactly(tmp_path, monkeypatch,
                                                                              guarded_signals):
    """A second Ctrl-C stops at once, as a kill does: no checkpoint of that step; --resume continues from the
    last periodic one (step 4 of 6), drops the log lines after it, and ends as the unbroken run ends."""
    import signal
    spec = D.DistillSpec(steps_from=2, steps_to=1)
    full = D.distill(_teacher("v"), spec, _cfg(tmp_path, "full", snapshot_freq=2), progress=False)
    calls, real = [], tr.ema_update

    def killed_at_5(*a, **k):
        real(*a, **k)
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(tr, "ema_update", killed_at_5)
    with pytest.raises(KeyboardInterrupt):
        D.distill(_teacher("v"), spec, _cfg(tmp_path, "part", snapshot_freq=2), progress=False)
    part = tmp_path / "part"
    assert [p.name for p in tr.list_checkpoints(part / "steps-0001")] == ["ckpt-0000002.pt", "ckpt-0000004.pt"]
    monkeypatch.undo()
    cfg = _cfg(tmp_path, "part", snapshot_freq=2)
    cfg.resume = True
    D.distill(_teacher("v"), spec, cfg, progress=False)
    a, b = ([json.loads(ln) for ln in (r / "steps-0001" / "metrics.jsonl").read_text().splitlines()]
            for r in (full.parent, part))
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6] and [r["loss"] for r in a] == [r["loss"] for r in b]
    sa, sb = (checkpoint.load(p).model.state_dict() for p in (full, part / "model.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_a_distill_process_killed_with_sigkill_resumes_bit_exactly(tmp_path):
    """The real thing: `python -m ddim distill` killed with SIGKILL mid-round (no handler runs), then the same
    command with --resume; the student and the log equal an unbroken run's."""
    import os
    import signal
    import subprocess
    import sys
    import time
    ckpt = _save_teacher(tmp_path, _teacher("v"))
    argv = [sys.executable, "-m", "ddim", "distill", "--ckpt", str(ckpt), "--dataset", "npz", "--data-root",
            str(_data(tmp_path)), "--steps-from", "2", "--iters-per-round", "40", "--batch-size", "4",
            "--ckpt-every", "5", "--log-every", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(argv + ["--out", str(killed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "steps-0001" / "ckpt-0000010.pt").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "distill did not start"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (killed / "model.safetensors").exists()
    subprocess.run(argv + ["--out", str(killed), "--resume"], env=env, check=True, capture_output=True)
    subprocess.run(argv + ["--out", str(tmp_path / "full")], env=env, check=True, capture_output=True)
    a, b = ([json.loads(ln)["loss"] for ln in (r / "steps-0001" / "metrics.jsonl").read_text().splitlines()]
            for r in (tmp_path / "full", killed))
    assert len(a) == 40 and a == b
    sa, sb = (checkpoint.load(r / "model.safetensors").model.state_dict() for r in (tmp_path / "full", killed))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --- the student as a checkpoint, and the command line ---------------------------------------------------------
def _save_teacher(tmp_path: Path, teacher: LoadedModel) -> Path:
    path = tmp_path / "teacher.safetensors"
    checkpoint.save(path, teacher.model, teacher.schedule, prediction=teacher.prediction)
    return path


def test_the_student_loads_and_sample_uses_its_recorded_steps(tmp_path, capsys):
    ckpt = _save_teacher(tmp_path, _teacher("eps"))
    base = ["distill", "--ckpt", str(ckpt), "--dataset", "npz", "--data-root", str(_data(tmp_path)),
            "--iters-per-round", "2", "--batch-size", "4", "--device", "cpu"]
    assert main(base + ["--steps-from", "4", "--steps-to", "2", "--out", str(tmp_path / "d")]) == 0
    student = tmp_path / "d" / "model.safetensors"
    loaded = checkpoint.load(student)
    assert loaded.prediction == "v" and loaded.config.dropout == 0.0
    rec = loaded.metadata[D.DISTILLED]
    assert rec["steps"] == 2 and rec["skip"] == [49, 99] and rec["teacher_steps"] == 4 and rec["guidance"] is None
    assert (tmp_path / "d" / "steps-0002" / "ckpt-0000002.pt").exists()
    assert [json.loads(ln)["step"] for ln in (tmp_path / "d" / "steps-0002" / "metrics.jsonl").open()] == [2]
    # the student distils further from its own grid (--steps-from defaults to its 2 steps)
    assert main(base[:2] + [str(student)] + base[3:] + ["--out", str(tmp_path / "d1")]) == 0
    assert checkpoint.load(tmp_path / "d1" / "model.safetensors").metadata[D.DISTILLED]["skip"] == [99]
    # `ddim sample` takes the student's steps and grid unless told otherwise
    out = tmp_path / "s"
    assert main(["sample", "--ckpt", str(student), "--n", "2", "--quiet", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == 2 and run["skip"] == [49, 99]
    assert main(["sample", "--ckpt", str(student), "--n", "2", "--steps", "3", "--quiet", "--out",
                 str(tmp_path / "s3")]) == 0
    run = json.loads((tmp_path / "s3" / "run.json").read_text())
    assert run["steps"] == 3 and run["skip"] == "uniform"
    assert main(["sample", "--ckpt", str(ckpt), "--n", "2", "--quiet", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "run.json").read_text())["steps"] == 50                # a teacher: as before


@pytest.mark.parametrize("flags, words", [
    ("--steps-from 6 --steps-to 3", "--steps-from must be a power of two"),
    ("--steps-from 48", "--steps-from must be a power of two"),
    ("--steps-from 8 --steps-to 3", "--steps-to must be a power of two"),
    ("--steps-from 4 --steps-to 4", "--steps-to (4) must be smaller"),
    ("--steps-from 256", "--steps-from must be an integer in [2, 100]"),
    ("--guidance 2", "unconditional"),
    ("--prediction eps", "--prediction"),
    ("--lr -1", "lr"),
    ("--dataset bogus", "dataset"),
    ("--batch-size 64", "fewer than --batch-size"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, words):
    ckpt = _save_teacher(tmp_path, _teacher("eps"))
    argv = ["distill", "--ckpt", str(ckpt), "--dataset", "npz", "--data-root", str(_data(tmp_path)),
            "--steps-from", "4", "--iters-per-round", "2", "--batch-size", "4", "--device", "cpu",
            "--out", str(tmp_path / "out")] + flags.split()
    try:
        code = main(argv)
    except SystemExit as e:                                 # argparse's refusal of a choice
        code = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert code == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_student_of_another_shape_in_out_is_refused_before_anything_is_written(tmp_path, capsys):
    ckpt = _save_teacher(tmp_path, _teacher("eps"))
    argv = ["distill", "--dataset", "npz", "--data-root", str(_data(tmp_path)), "--steps-from", "2",
            "--iters-per-round", "2", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main(argv + ["--ckpt", str(ckpt)]) == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    other = UNet(UNetConfig.from_dict({**_unet().config.to_dict(), "ch": 64}))      # another shape: wider
    path = tmp_path / "other.safetensors"
    checkpoint.save(path, other, NoiseSchedule.linear(T, 1e-4, 0.2), prediction="eps")
    assert main(argv + ["--ckpt", str(path), "--resume"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "a student of another shape" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == before
    assert main(argv + ["--ckpt", str(ckpt)]) == 2          # the same distillation again needs --resume
    assert "--resume" in capsys.readouterr().err
