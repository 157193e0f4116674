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
    _refused(capsys, _argv(case, files, out), words)
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
    (lambda s: s.invert(torch.randn(2, 3), steps=5, skip=[4, 2, 3]), "skip"),   # descending is diffusers
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


# ================================================================================================================
# Issue 24 (reliability drill): one overwrite policy, one output-path check, safe readers with limits, refusals
# before any work, messages that name the flag. Each case: exit 2, one `error:` line naming the input, and the
# folders involved byte-for-byte unchanged (or, for the fixed behaviours, the behaviour itself).
# ================================================================================================================
import hashlib  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under folder: files by content hash, folders by name (mtimes of folders are not compared)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def _refused(capsys, argv, words) -> str:
    """Run argv; assert exit 2, no traceback, one error line containing `words`; return that line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    assert words.lower() in lines[0].lower(), err
    return lines[0]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height (8-bit grey) and whose data is one empty IDAT: 70 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def hostile(files):
    """The hostile files of the drill, beside `files`."""
    d = files.parent / "hostile"
    d.mkdir()
    _png_header_only(d / "bomb.png", 100_000, 100_000)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (8000000, 8000000), }"
    header += " " * (127 - 10 - len(header)) + "\n"
    (d / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64)
    (d / "binary.yml").write_bytes(bytes(range(256)) * 4)
    (d / "python.yml").write_text("training: !!python/object/apply:os.system ['echo pwned']\n")
    (d / "dup.yml").write_text("training:\n  n_iters: 10\n  batch_size: 4\n  n_iters: 20\n")
    (d / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\0\0binary")
    np.save(d / "mask2d.npy", np.ones((16, 16), np.float32))
    torch.manual_seed(0)
    m = UNet(PRESETS["tiny"])
    with torch.no_grad():
        next(m.parameters()).view(-1)[0] = float("nan")
    save(d / "nan.safetensors", m, NoiseSchedule.linear())
    return d


# --- one output-path check: --out "" is refused by every command, naming --out ---------------------------------
EMPTY_OUT = ["sample", "encode --input digits", "reconstruct --input digits", "interpolate", "consistency",
             "trajectory", "edit sdedit --input digits", "edit inpaint --input digits", "fid-stats {d}/good.npz",
             "export", "eval table1", "eval table2", "eval timing", "eval solvers", "train", "plot {d}"]


@pytest.mark.parametrize("case", EMPTY_OUT)
def test_empty_out_is_refused_everywhere(files, tmp_path, capsys, monkeypatch, case):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "000000.png").write_bytes(b"the user's own image")
    (tmp_path / "grid.png").write_bytes(b"the user's own grid")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    _refused(capsys, case.format(d=files).split() + ["--out", "", "--overwrite"], "--out")
    assert _snapshot(tmp_path) == before


# --- one overwrite policy: only what the command wrote is removed, never the user's files ------------------------
def test_sample_into_a_folder_of_the_users_images_is_refused_even_with_overwrite(files, tmp_path, capsys,
                                                                                  monkeypatch):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "000000.png").write_bytes(b"the user's own image")
    (tmp_path / "grid.png").write_bytes(b"the user's own grid")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    _refused(capsys, ["sample", "--ckpt", files / "tiny.safetensors", "--n", "1", "--steps", "1", "--quiet",
                      "--out", ".", "--overwrite"], "which no ddim sample run wrote")
    assert _snapshot(tmp_path) == before


def test_export_overwrite_keeps_the_users_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "pipe"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _refused(capsys, ["export", "--out", out], "--overwrite")          # a folder of someone's: refused...
    assert main(["export", "--out", str(out), "--overwrite"]) == 0      # ...or written beside their files
    assert (out / "notes.txt").read_text() == "mine" and (out / "model_index.json").is_file()
    (out / "unet" / "my-readme.md").write_text("also mine")
    _refused(capsys, ["export", "--out", out], "--overwrite")          # an export: replaced only with --overwrite
    assert main(["export", "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "unet" / "my-readme.md").read_text() == "also mine"
    monkeypatch.chdir(tmp_path)                                         # --out . never empties the working folder
    (tmp_path / "thesis.tex").write_text("years of work")
    assert main(["export", "--out", ".", "--overwrite"]) == 0
    assert (tmp_path / "thesis.tex").read_text() == "years of work" and (out / "notes.txt").exists()


def test_plot_does_not_replace_an_existing_file_without_overwrite(files, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1 / s}) for s in range(1, 9)))
    (tmp_path / "mine.png").write_bytes(b"keep me")
    before = _snapshot(tmp_path)
    _refused(capsys, ["plot", run, "--out", tmp_path / "mine.png"], "mine.png")
    assert _snapshot(tmp_path) == before
    assert main(["plot", str(run), "--out", str(tmp_path / "mine.png"), "--overwrite"]) == 0
    assert (tmp_path / "mine.png").read_bytes()[:4] == b"\x89PNG"


# --- nothing created before a refusal ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    "edit sdedit --input digits --ckpt {d}/garbage.safetensors --out {o}/sub/e.png",
    "edit inpaint --input digits --ckpt {d}/garbage.safetensors --out {o}/sub/e.png",
    "reconstruct --input digits --ckpt {d}/garbage.safetensors --out {o}/sub",
    "encode --input digits --ckpt {d}/garbage.safetensors --out {o}/sub/z.npz",
    "interpolate --ckpt {d}/garbage.safetensors --out {o}/sub/i.png",
    "train --dataset folder --data-root {d}/empty --out {o}/sub",
])
def test_a_refusal_creates_no_output_folder(files, tmp_path, capsys, case):
    _refused(capsys, case.format(d=files, o=tmp_path / "new").split(), "")
    assert not (tmp_path / "new").exists()


def test_nan_weights_are_refused_before_run_json_or_images(hostile, tmp_path, capsys):
    out = tmp_path / "s"
    _refused(capsys, ["sample", "--ckpt", hostile / "nan.safetensors", "--n", "2", "--steps", "2", "--quiet",
                      "--out", out], "nan.safetensors")
    assert not out.exists()


def test_sample_n_too_large_is_refused_before_run_json(files, tmp_path, capsys, monkeypatch):
    import ddim.generate
    monkeypatch.setattr(ddim.generate, "open_run", lambda *a, **k: pytest.fail("run.json written"))
    out = tmp_path / "s"
    _refused(capsys, ["sample", "--ckpt", files / "tiny.safetensors", "--n", str(10**12), "--quiet", "--out", out],
             "--n")
    assert not out.exists()


class _NoFeatures(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("Inception features were computed before the refusal")


@pytest.mark.parametrize("bad", ["dim3", "nan"])
def test_fid_refuses_bad_statistics_before_inception_features(files, tmp_path, capsys, monkeypatch, bad):
    import ddim.metrics.fid as fid
    monkeypatch.setattr(fid, "load_inception", lambda *a, **k: _NoFeatures())
    stats = tmp_path / "s.npz"
    if bad == "dim3":
        np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    else:
        np.savez(stats, mu=np.zeros(2048), sigma=np.full((2048, 2048), np.nan))
    _refused(capsys, ["fid", files / "good.npz", stats, "--quiet"], "s.npz")


def test_fid_stats_refuses_a_non_npz_out_before_inception_features(files, tmp_path, capsys, monkeypatch):
    import ddim.metrics.fid as fid
    monkeypatch.setattr(fid, "load_inception", lambda *a, **k: _NoFeatures())
    _refused(capsys, ["fid-stats", files / "good.npz", "--out", tmp_path / "s.txt", "--quiet"], "s.txt")
    assert not (tmp_path / "s.txt").exists()


# --- one safe reader: images, arrays, YAML, JSON, text -------------------------------------------------------------
@pytest.mark.parametrize("case, words", [
    ("encode --input {h}/bomb.png", "bomb.png"),
    ("edit inpaint --input digits --mask {h}/bomb.png", "bomb.png"),
    ("fid {h}/bomb.png {d}/stats.npz", "bomb.png"),
    ("encode --input {h}/huge.npy", "huge.npy"),
    ("edit inpaint --input digits --mask {h}/huge.npy", "huge.npy"),
    ("train --config {h}/binary.yml", "binary.yml"),
    ("train --config {h}/python.yml", "python.yml"),
    ("train --config {h}/dup.yml", "n_iters"),
    ("train --config {h}/dup.yml", "line 4"),
    ("bench --write {h}/binary.md --batches 1 --steps 1", "binary.md"),
])
def test_hostile_files_are_refused_by_name(files, hostile, tmp_path, capsys, case, words):
    argv = case.format(d=files, h=hostile).split()
    if argv[0] in ("encode", "edit"):
        argv += ["--ckpt", str(files / "tiny.safetensors"), "--out", str(tmp_path / "o.npz")]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "o")]
    before = _snapshot(hostile)
    _refused(capsys, argv, words)
    assert _snapshot(hostile) == before
    assert not any(tmp_path.iterdir())


def _sample_run(files, out) -> list[str]:
    argv = ["sample", "--ckpt", str(files / "tiny.safetensors"), "--n", "2", "--steps", "1", "--quiet",
            "--out", str(out)]
    assert main(argv) == 0
    (out / "samples.npz").unlink()          # as if interrupted before assembling
    return argv


@pytest.mark.parametrize("foreign", ["size", "mode"])
def test_a_resumed_sample_folder_with_a_foreign_image_is_refused(files, tmp_path, capsys, foreign):
    out = tmp_path / "s"
    argv = _sample_run(files, out)
    img = Image.new("RGB", (8, 8)) if foreign == "size" else Image.new("L", (16, 16))
    img.save(out / "images" / "000001.png")
    before = _snapshot(out)
    _refused(capsys, argv, "000001.png")
    assert _snapshot(out) == before


def test_a_run_json_that_is_a_list_is_refused_by_name(files, tmp_path, capsys):
    out = tmp_path / "s"
    argv = _sample_run(files, out)
    (out / "run.json").write_text("[1, 2]")
    before = _snapshot(out)
    _refused(capsys, argv, "run.json")
    assert _snapshot(out) == before


def test_readers_api_raises_ddim_errors(hostile):
    from ddim.errors import DDIMError
    from ddim.images import load_images
    from ddim.readers import read_json, read_yaml
    with pytest.raises(DDIMError, match="bomb.png"):
        load_images(hostile / "bomb.png")
    with pytest.raises(DDIMError, match="huge.npy"):
        load_images(hostile / "huge.npy")
    with pytest.raises(DDIMError, match=r"duplicate key 'n_iters' at line 4 \(first at line 2\)"):
        read_yaml(hostile / "dup.yml")
    with pytest.raises(DDIMError, match="python.yml"):
        read_yaml(hostile / "python.yml")
    with pytest.raises(DDIMError, match="binary.yml"):
        read_yaml(hostile / "binary.yml")
    (hostile.parent / "list.json").write_text("[]")
    with pytest.raises(DDIMError, match="list.json"):
        read_json(hostile.parent / "list.json")


# --- 16-bit images at full precision in every reader ---------------------------------------------------------------
@pytest.fixture(scope="module")
def png16(tmp_path_factory):
    d = tmp_path_factory.mktemp("png16")
    values = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 256 + 77).astype(np.uint16)   # 256 levels
    (d / "folder").mkdir()
    Image.fromarray(values).save(d / "folder" / "a.png")
    assert Image.open(d / "folder" / "a.png").mode.startswith("I;16")
    return d, values.astype(np.float64) / 65535 * 2 - 1


def test_16_bit_pngs_are_read_at_full_precision_by_every_reader(png16):
    from ddim.data import ImageFolder
    from ddim.images import load_images
    from ddim.metrics.fid import load_images_uint8 as fid_images
    from ddim.commands.edit import _mask
    d, expected = png16
    x = load_images(d / "folder" / "a.png", channels=1)                 # encode, edit --input, interpolate
    np.testing.assert_allclose(x[0, 0].numpy(), expected, atol=1e-6)
    x = load_images(d / "folder", channels=3)                           # folders, fid
    np.testing.assert_allclose(x[0, 2].numpy(), expected, atol=1e-6)
    x = ImageFolder(d / "folder", 16, channels=1, resize=False)[0]      # train --dataset folder
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    u8 = fid_images(d / "folder")                                       # FID: quantized, not clipped
    assert len(np.unique(u8)) > 200                                     # 8-bit clipping leaves 2
    m = _mask(str(d / "folder" / "a.png"), 1, 16)                       # edit inpaint --mask
    np.testing.assert_allclose(m[0, 0].numpy(), (expected + 1) / 2, atol=1e-6)


# --- messages ----------------------------------------------------------------------------------------------------
def test_errors_name_the_flag_not_the_python_keyword(files, tmp_path, capsys):
    torch.save({"conv_in.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "x.ckpt")
    line = _refused(capsys, ["sample", "--ckpt", tmp_path / "x.ckpt", "--out", tmp_path / "o"], "--config")
    assert "pass config=" not in line
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 16, 16, 3), np.uint8), b=np.zeros((2, 16, 16, 3), np.uint8))
    line = _refused(capsys, ["encode", "--input", tmp_path / "two.npz", "--ckpt", files / "tiny.safetensors",
                             "--out", tmp_path / "z.npz"], "two.npz")
    assert "key=" not in line


def test_a_full_disk_names_the_file(files, tmp_path, capsys, monkeypatch):
    import errno

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", full)
    _refused(capsys, ["consistency", "--ckpt", files / "tiny.safetensors", "--n", "1", "--steps", "1",
                      "--out", tmp_path / "c.png"], "c.png")
    assert not (tmp_path / "c.png").exists() and not list(tmp_path.glob(".c.png.*"))


def test_an_hw_mask_is_accepted_and_broadcast(hostile, files, tmp_path):
    sampler = DDIMSampler(lambda x, t: 0.1 * x, SCHED)
    x0, g = torch.rand(2, 3, 16, 16) * 2 - 1, lambda: torch.Generator().manual_seed(0)
    m = (torch.rand(16, 16) > 0.5).float()
    a = sampler.inpaint(x0, m, 3, generator=g())
    b = sampler.inpaint(x0, m[None, None], 3, generator=g())
    assert torch.equal(a, b)
    assert main(["edit", "inpaint", "--input", "digits", "--n", "2", "--steps", "1", "--ckpt",
                 str(files / "tiny.safetensors"), "--mask", str(hostile / "mask2d.npy"),
                 "--out", str(tmp_path / "m.png")]) == 0


def test_an_interrupted_encode_does_not_promise_a_resume(files, tmp_path, capsys, monkeypatch):
    import ddim.commands.encode as enc

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(enc, "encode", interrupted)
    assert main(["encode", "--input", "digits", "--n", "2", "--ckpt", str(files / "tiny.safetensors"),
                 "--out", str(tmp_path / "z.npz")]) == 130
    err = capsys.readouterr().err
    assert "resume" not in err.replace("does not resume", "") and "does not resume" in err


# --- ecosystem ----------------------------------------------------------------------------------------------------
def test_version(capsys):
    from ddim import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ddim {__version__}"


def test_quiet_on_every_command_that_draws_a_progress_bar(files, tmp_path, capsys):
    assert main(["encode", "--input", "digits", "--n", "2", "--steps", "2", "--ckpt", str(files / "tiny.safetensors"),
                 "--out", str(tmp_path / "z.npz"), "--quiet"]) == 0
    assert "it/s" not in capsys.readouterr().err and "%|" not in capsys.readouterr().err
    from ddim.commands import build_parser
    for argv in (["fid", "a", "b"], ["fid-stats", "a", "--out", "s.npz"], ["sample"], ["eval", "table1"]):
        assert build_parser().parse_args(argv + ["--quiet"]).quiet


def _all_parsers():
    import argparse
    from ddim.commands import build_parser

    def walk(parser, name):
        yield name, parser
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    yield from walk(sp, f"{name} {n}")
    return list(walk(build_parser(), "ddim"))


def test_every_help_page_shows_one_default_per_flag():
    import re
    pages = _all_parsers()
    assert len(pages) > 20
    for name, parser in pages:
        flat = " ".join(parser.format_help().split())
        for entry in re.split(r"\s(?=--?[a-z])", flat):
            assert entry.count("(default") <= 1, f"{name}: {entry[:160]}"
