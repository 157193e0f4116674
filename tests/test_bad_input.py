"""Every command and the Python API against bad input: each case gets exit code 2 and one line that names the
parameter (flag, file or config key), no traceback, and nothing written or lost."""

import os

import numpy as np
import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule, slerp
from ddim.checkpoint import save
from ddim.commands import main
from ddim.config import SampleConfig
from ddim.errors import DDIMError
from ddim.sampling import DDIM, Solver
from ddim.models import PRESETS, UNet


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model, and the bad and good files the cases point at."""
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    save(d / "tiny.safetensors", UNet(PRESETS["tiny"]), NoiseSchedule.linear())
    (d / "garbage.safetensors").write_bytes(b"not a checkpoint at all")
    (d / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (d / "empty").mkdir()
    (d / "notes").mkdir()
    (d / "notes" / "readme.txt").write_text("no images here")
    np.savez(d / "good.npz", images=np.zeros((2, 16, 16, 3), np.uint8))
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:100])
    np.savez(d / "twochan.npz", images=np.zeros((2, 2, 16, 16, 2), np.uint8))
    np.savez(d / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
    (d / "existing.png").write_bytes(b"keep me")
    (d / "bad.yml").write_text("training:\n  random_flip: \"no\"\n")
    (d / "weights.pth").write_bytes(b"bogus inception weights")
    return d


# (argv with {d} for the files folder and {o} for a fresh output path, words the error line must contain)
CASES = [
    # --- sample: values
    ("sample --n 0", "--n"), ("sample --n -1", "--n"), ("sample --n x", "--n"),
    ("sample --steps 0", "--steps"), ("sample --steps 1001", "steps must be"), ("sample --steps 2.5", "--steps"),
    ("sample --eta -1", "eta must be"), ("sample --eta nan", "eta must be"), ("sample --eta inf", "eta must be"),
    ("sample --eta 5", "eta=5.0"), ("sample --variance small", "--variance"), ("sample --skip cubic", "--skip"),
    ("sample --solver rk4", "--solver"), ("sample --seed -1", "--seed"), ("sample --seed x", "--seed"),
    ("sample --dtype float8", "--dtype"), ("sample --batch-size 0", "--batch-size"),
    ("sample --batch-size big", "--batch-size"), ("sample --cache-interval 0", "--cache-interval"),
    ("sample --cache-branch -1", "--cache-branch"), ("sample --cache-interval 2 --cache-branch 9", "cache_branch"),
    ("sample --bogus-flag", "unrecognized arguments"),
    # --- sample: files, devices, outputs
    ("sample --ckpt {d}/missing.safetensors", "missing.safetensors"),
    ("sample --ckpt {d}/garbage.safetensors", "garbage.safetensors"),
    ("sample --ckpt {d}/empty", "empty"), ("sample --device bogus", "device"),
    ("sample --device cuda", "CUDA"), ("sample --device meta", "device"), ("sample --eta 1e308", "eta=1e+308"),
    ("sample --guidance 2", "--class"), ("sample --solver plms --eta 0.5", "eta=0.5"), ("sample --out {d}/existing.png", "existing.png"),
    ("sample --out {d}/existing.png/sub", "existing.png"),
    # --- encode
    ("encode --input {d}/missing.png", "--input"), ("encode --input {d}/garbage.png", "garbage.png"),
    ("encode --input {d}/empty", "--input"), ("encode --input {d}/notes", "no image files"),
    ("encode --input {d}/truncated.npz", "truncated.npz"), ("encode --input {d}/twochan.npz", "twochan.npz"),
    ("encode --input digits --n 0", "n must be"), ("encode --input digits --steps 0", "--steps"),
    ("encode --input digits --steps 5000", "steps must be"), ("encode --input digits --eta 0.5", "--eta"),
    ("encode --input digits --variance large", "--variance"), ("encode --input digits --clip-denoised", "clip"),
    ("encode --input digits --out {d}/existing.png", "existing.png"), ("encode --input digits --out {d}", "folder"),
    ("encode --input digits --solver rk4", "--solver"), ("encode", "--input"),
    # --- reconstruct
    ("reconstruct --input {d}/missing", "--input"), ("reconstruct --input digits --steps 0 2", "--steps"),
    ("reconstruct --input digits --steps 2 5000", "steps must be"), ("reconstruct --input digits --n 0", "n must be"),
    ("reconstruct --input digits --eta 1", "--eta"), ("reconstruct --input digits --out {d}/existing.png", "existing.png"),
    # --- interpolate / consistency / trajectory
    ("interpolate --pairs 0", "--pairs"), ("interpolate --frames 0", "--frames"),
    ("interpolate --images {d}/missing.png {d}/other.png", "--images"),
    ("interpolate --images {d}/garbage.png digits", "garbage.png"), ("interpolate --images digits", "--images"),
    ("interpolate --out {d}/existing.png", "existing.png"), ("interpolate --eta 1", "--eta"),
    ("interpolate --seed -2", "--seed"), ("consistency --n 0", "--n"), ("consistency --steps 2000", "steps must be"),
    ("consistency --steps", "--steps"), ("consistency --variance large", "--variance"),
    ("consistency --out {d}/existing.png", "existing.png"), ("trajectory --n 0", "--n"),
    ("trajectory --columns 0", "--columns"), ("trajectory --eta -3", "eta must be"),
    ("trajectory --batch-size 4", "--batch-size"), ("trajectory --out {d}/existing.png", "existing.png"),
    # --- fid / fid-stats
    ("fid {d}/missing {d}/stats.npz", "missing"), ("fid {d}/empty {d}/stats.npz", "empty"),
    ("fid {d}/stats.npz {d}/stats.npz", "statistics"), ("fid {d}/good.npz {d}/stats.npz --batch-size 0", "--batch-size"),
    ("fid {d}/good.npz {d}/stats.npz --inception-weights {d}/weights.pth --no-download", "weights.pth"),
    ("fid {d}/good.npz", "reference"), ("fid-stats {d}/good.npz --out {d}/existing.png", "existing.png"),
    ("fid-stats {d}/good.npz", "--out"), ("fid-stats {d}/truncated.npz --out {o}", "truncated.npz"),
    # --- eval
    ("eval table1 --n 1", "n must be"), ("eval table1 --etas -1", "eta must be"),
    ("eval table1 --metric lpips", "--metric"), ("eval table1 --steps 0", "--steps"),
    ("eval table1 --steps 1 --n 4 --metric inception", "reference"), ("eval table1 --steps 2 --etas 3", "eta=3.0"),
    ("eval table1 --etas --no-sigma-hat --steps 2", "etas"), ("eval table1 --eta 0.5", "--eta"),
    ("eval table2 --input {d}/missing", "images"), ("eval table2 --n 0", "n must be"),
    ("eval table2 --batch-size 0", "--batch-size"), ("eval timing --repeats 0 --steps 1", "repeats must be"),
    ("eval timing --warmup -1 --steps 1", "warmup must be"), ("eval timing --eta -1 --steps 1", "eta must be"),
    ("eval bogus", "invalid choice"),
    # --- train
    ("train --steps 0", "n_iters"), ("train --lr inf", "lr"), ("train --lr -1", "lr"),
    ("train --batch-size 0", "batch_size"), ("train --dataset bogus", "dataset"),
    ("train --dataset folder --data-root {d}/missing", "missing"), ("train --n-samples 0", "n_samples"),
    ("train --sample-steps 0", "sample_steps"), ("train --config {d}/missing.yml", "missing.yml"),
    ("train --config {d}/bad.yml", "random_flip"), ("train --device bogus", "device"),
    ("train --model bogus", "bogus"), ("train --prediction score", "prediction"),
    ("train --beta-schedule bogus", "beta_schedule"), ("train --precision fp8", "precision"),
    ("train --grad-clip -1", "grad_clip"), ("train --ema-rate 1.5", "ema_rate"), ("train --seed -1", "seed"),
    ("train --random-flip maybe", "--random-flip"), ("train --steps x", "--steps"),
    # --- distill (the tiny model is a 3-channel teacher; the checks on it come before any data is read)
    ("distill --steps-from 6 --steps-to 3", "--steps-from"), ("distill --steps-from 48", "power of two"),
    ("distill --steps-to 3", "--steps-to"), ("distill --steps-to 64", "--steps-to"),
    ("distill --guidance 2", "unconditional"), ("distill --prediction eps", "--prediction"),
    ("distill --lr -1", "lr"), ("distill --dataset bogus", "dataset"), ("distill --steps-from 0", "--steps-from"),
    ("distill --ckpt {d}/garbage.safetensors", "garbage.safetensors"), ("distill --iters-per-round 0", "--iters"),
    ("distill --out {d}/existing.png", "existing.png"),
    # --- plot, bench
    ("plot {d}/missing", "metrics.jsonl"), ("plot {d}/empty", "metrics.jsonl"),
    ("bench --batches 0", "--batches"), ("bench --steps 0", "--steps"), ("bench --paths bogus", "--paths"),
]

# commands that load a model get the tiny one unless the case names its own --ckpt
_MODEL_COMMANDS = ("sample", "encode", "reconstruct", "interpolate", "consistency", "trajectory", "eval", "distill")


def _argv(case: str, d, out) -> list[str]:
    argv = case.format(d=d, o=out).split()
    if argv[0] in _MODEL_COMMANDS and "--ckpt" not in argv:
        argv += ["--ckpt", str(d / "tiny.safetensors")]
    if argv[0] in ("sample", "eval", "interpolate", "consistency", "trajectory", "reconstruct", "encode", "train",
                   "distill") \
            and "--out" not in argv:
        argv += ["--out", str(out)]
    if argv[0] == "sample" and "--quiet" not in argv:
        argv.append("--quiet")
    return argv


@pytest.mark.parametrize("case, words", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_naming_it_and_writes_nothing(files, tmp_path, capsys, case, words):
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in files.rglob("*")}
    code = None
    try:
        code = main(_argv(case, files, out))
    except SystemExit as e:          # argparse's own refusal: usage, then one "error:" line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    assert words.lower() in lines[0].lower(), err
    assert not out.exists() or not any(out.iterdir()) if out.is_dir() else not out.exists(), f"{out} written"
    assert {p: p.stat().st_mtime_ns for p in files.rglob("*")} == before, "an input was changed"


def test_the_suite_is_big_enough():
    assert len(CASES) >= 100, len(CASES)


# --- the Python API ---------------------------------------------------------------------------------------------
SCHED = NoiseSchedule.linear()


@pytest.mark.parametrize("kwargs, words", [
    (dict(steps=0), "steps"), (dict(steps=True), "steps"), (dict(skip="cubic"), "skip"), (dict(skip=[]), "skip"),
    (dict(skip=[-1, 3]), "skip"), (dict(solver="rk4"), "solver"), (dict(eta=-1.0), "eta"), (dict(eta="0"), "eta"),
    (dict(variance="small"), "variance"), (dict(clip_denoised="yes"), "clip_denoised"), (dict(seed=-1), "seed"),
    (dict(dtype="float8"), "dtype"), (dict(batch_size=0), "batch_size"), (dict(batch_size="big"), "batch_size"),
    (dict(cache_interval=0), "cache_interval"), (dict(compile="no"), "compile"),
    (dict(final_alpha=0.5), "final_alpha"), (dict(steps=5, skip=(10, 20)), "steps=5"),
    (dict(skip=(10.5, 20), steps=2), "skip"), (dict(solver="plms", eta=0.5), "eta"),
])
def test_sample_config_names_the_field(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SampleConfig(**kwargs)


@pytest.mark.parametrize("call, words", [
    (lambda s: s.sample(torch.randn(2, 3), steps=0), "steps"),
    (lambda s: s.sample(torch.randn(2, 3), steps=5, eta=-1.0), "eta"),
    (lambda s: s.sample(torch.randn(2, 3), steps=5, solver="rk4"), "solver"),
    (lambda s: s.sample(torch.randn(2, 3), steps=5, solver=object()), "solver"),
    (lambda s: s.invert(torch.randn(2, 3), steps=5, skip=[4, 2]), "skip"),
    (lambda s: s.sample(torch.randn(2, 3), steps=5, eta=0.5, generator=[torch.Generator()]), "generator"),
    (lambda s: slerp(torch.randn(2, 3), torch.randn(2, 3), float("nan")), "alpha"),
    (lambda s: slerp(torch.randn(2, 3), torch.randn(3, 3), 0.5), "same shape"),
])
def test_sampler_api_names_the_argument(call, words):
    sampler = DDIMSampler(lambda x, t: 0.1 * x, SCHED)
    with pytest.raises(ValueError, match=words):
        call(sampler)


class _DropsHalf(Solver):
    """A custom solver that loses part of the batch."""

    def step(self, denoise, x, i, noise):
        s = self.plan[i]
        eps, x0 = denoise(x, s.t, s.a_t)
        return x0[: len(x) // 2], x0


# issue 24's Python API cases: each was silently wrong or a traceback; each is now a DDIMError naming the input
@pytest.mark.parametrize("call, words", [
    (lambda s: s.sample(torch.randn(2, 3), steps=5, skip=[10, 20]), "steps=5"),
    (lambda s: s.sample(torch.randn(2, 3), steps=2, skip=[10.5, 20]), "skip"),
    (lambda s: s.sample(torch.randn(2, 3, dtype=torch.complex64), steps=2), "x_T"),
    (lambda s: s.sample(torch.randn(4, 3), steps=2, solver=_DropsHalf()), "solver"),
    (lambda s: slerp(torch.zeros(2, 3), torch.randn(2, 3), 0.5), "z0"),
    (lambda s: s.sample(torch.randn(2, 3), steps=2, y=torch.tensor([0, 1, 2])), "y"),
    (lambda s: s.sample(torch.randn(2, 3), steps=2, eta=1.0, generator=123), "generator"),
    (lambda s: DDIMSampler(lambda x, t: None, SCHED).sample(torch.randn(2, 3), steps=2), "model"),
    (lambda s: DDIMSampler(lambda x, t: x, "linear").sample(torch.randn(2, 3), steps=2), "schedule"),
    (lambda s: s.sample(torch.randn(2, 3), steps=2, solver=DDIM), "solver"),
    (lambda s: s.sample(torch.randn(2, 3), steps=2, eta=1e308), "eta"),
    (lambda s: s.sdedit(torch.randn(2, 3), 0.5, steps=4, bogus=1), "bogus"),
])
def test_sampler_api_refuses_what_was_silently_wrong(call, words):
    sampler = DDIMSampler(lambda x, t, y=None: 0.1 * x, SCHED)
    with pytest.raises(DDIMError) as e:
        call(sampler)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_traceback_on_request(files, tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "DDIM_TRACEBACK", "1")
    with pytest.raises(ValueError, match="eta"):
        main(["sample", "--ckpt", str(files / "tiny.safetensors"), "--eta", "-1", "--out", str(tmp_path / "o")])
