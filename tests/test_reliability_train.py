"""Reliability of training: its checkpoints load, the log survives a torn line, divergence and interrupts stop
cleanly, and configs are type-checked before anything is built (tiny runs on CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddim import checkpoint
from ddim import train as tr
from ddim.config import config_from_dict
from ddim.errors import DDIMError
from ddim.schedule import NoiseSchedule

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg_dict(tmp_path, out="run", **training):
    """Tiny 8x8 grey data (24 images) and the 'tiny' U-Net, as tests/test_train.py builds them."""
    npz = tmp_path / "tiny.npz"
    if not npz.exists():
        np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8))
    return {"data": {"dataset": "npz", "root": str(npz), "image_size": 8, "channels": 1, "random_flip": True},
            "model": {"preset": "tiny", "dropout": 0.1, "ema_rate": 0.9, "ema_warmup": True},
            "diffusion": {"num_diffusion_timesteps": 100, "antithetic": True},
            "training": {"batch_size": 4, "n_iters": 3, "snapshot_freq": 3, "keep_last": 2, "log_freq": 1,
                         "sample_freq": 0, "sample_steps": 5, "n_samples": 4, **training},
            "optim": {"lr": 1e-3, "warmup": 3},
            "out_dir": str(tmp_path / out)}


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
