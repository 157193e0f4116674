"""Two processes under torchrun (gloo, CPU) train to identical weights, matching one process with the same batch."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ddim import train as tr
from ddim.config import config_from_dict

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    import ddim.models as models
    from ddim import train as tr
    from ddim.config import config_from_dict

    made = []

    class Recording(models.UNet):  # remember the trained module of this rank
        def __init__(self, config):
            super().__init__(config)
            made.append(self)

    models.UNet = Recording
    torch.set_num_threads(1)
    cfg = config_from_dict(json.loads(sys.argv[1]))
    tr.train(cfg, progress=False)
    torch.save(made[0].state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
""")


def _cfg_dict(tmp_path, out, batch_size=4):
    npz = tmp_path / "tiny.npz"
    if not npz.exists():
        np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8))
    return {"data": {"dataset": "npz", "root": str(npz), "image_size": 8, "channels": 1, "random_flip": True},
            "model": {"preset": "tiny", "dropout": 0.0, "ema_rate": 0.9},
            "diffusion": {"num_diffusion_timesteps": 100},
            "training": {"batch_size": batch_size, "n_iters": 3, "snapshot_freq": 3, "log_freq": 1,
                         "sample_freq": 0, "sample_steps": 2, "n_samples": 2},
            "optim": {"lr": 1e-3},
            "out_dir": str(tmp_path / out), "device": "cpu"}


def _torchrun(tmp_path, cfg: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), json.dumps(cfg), str(tmp_path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_hold_identical_weights(tmp_path):
    proc = _torchrun(tmp_path, _cfg_dict(tmp_path, "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # One process with the same global batch draws the same data, t, eps and flips: same update up to
    # float summation order (Adam's first steps are ~lr * sign(g), hence the lr-sized tolerance).
    torch.set_num_threads(1)
    single = tr.train(config_from_dict(_cfg_dict(tmp_path, "single")), progress=False)
    s = torch.load(single / "ckpt-0000003.pt", weights_only=True)["model"]
    assert max((r0[k] - s[k]).abs().max().item() for k in r0) < 1e-3
    loss = lambda run: [json.loads(ln)["loss"] for ln in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert loss("ddp") == pytest.approx(loss("single"), rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    assert (tmp_path / "ddp" / "model.safetensors").exists()


@pytest.mark.slow
def test_batch_not_divisible_by_world_size(tmp_path):
    proc = _torchrun(tmp_path, _cfg_dict(tmp_path, "odd", batch_size=5))
    assert proc.returncode != 0
    assert "training.batch_size (5) must be divisible by the number of processes (2)" in proc.stderr
