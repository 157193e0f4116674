"""ddim.runs: "does this folder hold the same run?" A rerun resumes what is missing, other settings or other
weights are refused without --overwrite, and an output that cannot be written is refused before any work
(through the commands, on a tiny random model: `ckpt` in tests/conftest.py)."""

import json

import numpy as np
import torch

from ddim import NoiseSchedule
from ddim.checkpoint import save
from ddim.commands import main
from ddim.models import PRESETS, UNet


def test_sample_resumes_an_interrupted_run(ckpt, tmp_path):
    args = ["sample", "--ckpt", ckpt, "--n", "4", "--steps", "3", "--quiet", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    full = np.load(tmp_path / "r" / "samples.npz")["arr_0"]
    # Simulate a crash: two images and the outputs are gone; the rerun redoes only what is missing.
    for f in ["images/000001.png", "images/000003.png", "samples.npz", "grid.png"]:
        (tmp_path / "r" / f).unlink()
    before = (tmp_path / "r" / "images" / "000000.png").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "r" / "images" / "000000.png").stat().st_mtime_ns == before
    assert np.array_equal(np.load(tmp_path / "r" / "samples.npz")["arr_0"], full)


def test_sample_refuses_to_mix_settings_without_overwrite(ckpt, tmp_path, capsys):
    out = str(tmp_path / "m")
    assert main(["sample", "--ckpt", ckpt, "--n", "2", "--steps", "3", "--quiet", "--out", out]) == 0
    assert main(["sample", "--ckpt", ckpt, "--n", "2", "--steps", "4", "--quiet", "--out", out]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["sample", "--ckpt", ckpt, "--n", "2", "--steps", "4", "--quiet", "--out", out, "--overwrite"]) == 0
    assert json.loads((tmp_path / "m" / "run.json").read_text())["steps"] == 4


def test_resuming_with_another_dtype_or_other_weights_is_refused(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    torch.manual_seed(4)
    save(path, UNet(PRESETS["tiny"]), NoiseSchedule.linear())
    args = ["sample", "--ckpt", str(path), "--n", "2", "--steps", "2", "--quiet", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    assert main(args + ["--dtype", "bfloat16"]) == 2
    assert "dtype" in capsys.readouterr().err
    torch.manual_seed(5)
    save(path, UNet(PRESETS["tiny"]), NoiseSchedule.linear())   # another file at the same --ckpt path
    assert main(args) == 2
    assert "'model'" in capsys.readouterr().err


def test_unwritable_or_wrong_outputs_fail_before_any_work(ckpt, tmp_path, capsys):
    (tmp_path / "file.png").write_bytes(b"x")
    assert main(["sample", "--ckpt", ckpt, "--n", "1", "--steps", "1", "--quiet", "--out",
                 str(tmp_path / "file.png")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["encode", "--ckpt", ckpt, "--input", "digits", "--n", "1", "--steps", "1", "--out",
                 str(tmp_path / "file.png" / "z.npz")]) == 2
    assert "cannot write into" in capsys.readouterr().err
    assert main(["interpolate", "--ckpt", ckpt, "--images", "digits", str(tmp_path / "missing.png"),
                 "--steps", "1", "--out", str(tmp_path / "i.png")]) == 2
    err = capsys.readouterr().err
    assert "--images" in err and "missing.png" in err and "Traceback" not in err

