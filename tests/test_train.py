"""ddim.train: the DDPM objective, EMA, the LR schedule, and the training loop on tiny data (CPU, seconds).
Its failure modes (torn logs, divergence, signals, resume checks): test_reliability_train.py; two processes:
test_ddp.py; the configs it reads: test_config.py."""

import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ddim import train as tr
from ddim.config import config_from_dict, load_json
from ddim.schedule import NoiseSchedule
from tiny_runs import tiny_run_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Recorder(nn.Module):
    """Returns zeros and remembers its inputs, so the loss equals the mean squared target."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        self.x, self.t = x, t
        return torch.zeros_like(x) + self.w


def _batch(seed=0, shape=(6, 1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_targets_match_hand_formulas(prediction):
    s = NoiseSchedule.linear(1000)
    x0, eps = _batch()
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    m = Recorder().double()
    loss = tr.loss_fn(m, s, x0, t, eps, prediction)
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps                     # eq. 4 by hand
    assert torch.allclose(m.x, x_t, atol=1e-12) and torch.equal(m.t, t)
    target = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
    assert loss.item() == pytest.approx(target.square().mean().item(), rel=1e-6)
    # "sum" over pixels (official) is the per-pixel mean times the pixel count
    loss_sum = tr.loss_fn(m, s, x0, t, eps, prediction, reduction="sum")
    assert loss_sum.item() == pytest.approx(loss.item() * 16, rel=1e-6)
    with pytest.raises(ValueError, match="prediction"):
        tr.loss_fn(m, s, x0, t, eps, "score")


def test_sample_t_uniform_and_antithetic():
    g = torch.Generator().manual_seed(0)
    t = tr.sample_t(10000, 1000, g)
    assert t.min() >= 0 and t.max() <= 999 and abs(t.float().mean().item() - 499.5) < 10
    t = tr.sample_t(7, 1000, torch.Generator().manual_seed(1), antithetic=True)
    assert t.shape == (7,)
    half = tr.sample_t(7, 1000, torch.Generator().manual_seed(1), antithetic=True)[:4]
    assert torch.equal(t[4:], 999 - half[:3])                        # the official pairing t, T - 1 - t


def test_ema_math_and_warmup():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    tr.ema_update(a, b, 0.9)
    for e, p0, p in zip(a.parameters(), before, b.parameters()):
        assert torch.allclose(e, 0.9 * p0 + 0.1 * p)
    assert tr.ema_decay(0, 0.9999, warmup=True) == pytest.approx(0.1)
    assert tr.ema_decay(90, 0.9999, warmup=True) == pytest.approx(0.91)
    assert tr.ema_decay(10**7, 0.9999, warmup=True) == 0.9999 and tr.ema_decay(0, 0.9999) == 0.9999


def test_lr_warmup():
    assert [tr.lr_at(k, 1.0, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert tr.lr_at(0, 2e-4, 0) == 2e-4


def test_loss_decreases_on_fixed_batch():
    import dataclasses
    from ddim.models import PRESETS, UNet
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(PRESETS["tiny"], image_size=8))
    s = NoiseSchedule.linear(1000)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    eps, t = torch.randn_like(x0), torch.tensor([10, 200, 500, 900])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = tr.loss_fn(model, s, x0, t, eps).item()
    for _ in range(15):
        loss = tr.loss_fn(model, s, x0, t, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert tr.loss_fn(model, s, x0, t, eps).item() < 0.7 * first


# --- the loop ---------------------------------------------------------------------------------------------
def _cfg(tmp_path, out="run", **training):
    return config_from_dict(tiny_run_dict(tmp_path, out, **training))


def _metrics(run):
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_run_dir(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.device = "cpu"                       # a setting the run record must not shadow
    run = tr.train(cfg, progress=False)
    names = sorted(p.name for p in run.iterdir())
    assert names == ["ckpt-0000004.pt", "ckpt-0000006.pt", "config.json", "metrics.jsonl", "model.safetensors",
                     "samples"]                                       # keep_last=2
    assert (run / "samples" / "step-0000006.png").exists()
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert set(rows[0]) >= {"step", "loss", "lr", "grad_norm", "it_per_s", "img_per_s"}
    assert rows[0]["lr"] == pytest.approx(1e-3 / 3) and all(math.isfinite(r["loss"]) for r in rows)
    record = json.loads((run / "config.json").read_text())
    assert record["training"]["batch_size"] == 4 and record["unet"]["image_size"] == 8
    assert record["resolved_device"] == "cpu"
    assert load_json(run / "config.json") == cfg                     # the run's own record reads back
    state = torch.load(run / "ckpt-0000006.pt", weights_only=True)
    assert state["step"] == 6 and set(state) >= {"model", "ema", "optimizer", "scaler", "rng_gen", "rng_torch"}
    from ddim import checkpoint
    loaded = checkpoint.load(run / "model.safetensors")
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state["ema"][k])                        # the export is the EMA model


def test_resume_follows_the_same_curve(tmp_path):
    full = tr.train(_cfg(tmp_path, "full", n_iters=6), progress=False)
    tr.train(_cfg(tmp_path, "part", n_iters=3, snapshot_freq=3), progress=False)
    cfg = _cfg(tmp_path, "part", n_iters=6, snapshot_freq=3)
    cfg.resume = True
    part = tr.train(cfg, progress=False)
    a, b = _metrics(full), _metrics(part)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]           # dropout, t, eps, flips, data order
    sa = torch.load(full / "ckpt-0000006.pt", weights_only=True)
    sb = torch.load(part / "ckpt-0000006.pt", weights_only=True)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]) and torch.equal(sa["ema"][k], sb["ema"][k])


def test_refuses_non_empty_run_dir_and_mismatched_resume(tmp_path):
    tr.train(_cfg(tmp_path, n_iters=2), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        tr.train(_cfg(tmp_path, n_iters=2), progress=False)
    cfg = _cfg(tmp_path, n_iters=4)
    cfg.resume, cfg.model.ch = True, 64
    with pytest.raises(ValueError, match="was trained with model"):
        tr.train(cfg, progress=False)


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run = tr.train(_cfg(tmp_path, n_iters=2), progress=False)
    good = torch.load(run / "ckpt-0000002.pt", weights_only=True)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = _cfg(tmp_path, n_iters=4)
    cfg.resume = True
    with pytest.raises(OSError, match="ckpt-0000002.pt is intact") as e:
        tr.train(cfg, progress=False)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in run.glob("ckpt-*")] == ["ckpt-0000002.pt"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    again = torch.load(run / "ckpt-0000002.pt", weights_only=True)
    assert all(torch.equal(good["model"][k], again["model"][k]) for k in good["model"])


def test_bad_inputs_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="training.batch_size .* divisible"):
        tr.train(_cfg(tmp_path, batch_size=4, grad_accum=3), progress=False)
    with pytest.raises(ValueError, match="fewer than training.batch_size"):
        tr.train(_cfg(tmp_path, "big", batch_size=32), progress=False)
    cfg = _cfg(tmp_path, "missing")
    cfg.data.dataset, cfg.data.root = "folder", str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tr.train(cfg, progress=False)
    with pytest.raises(ValueError, match="optim.lr"):
        _cfg(tmp_path).__class__(optim=type(_cfg(tmp_path).optim)(lr=-1.0)).validate()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    run = tr.train(_cfg(tmp_path, n_iters=2, precision=precision), progress=False)
    assert all(math.isfinite(r["loss"]) for r in _metrics(run))
    state = torch.load(run / "ckpt-0000002.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0                          # the grad scaler is saved for resume


def test_grad_accum_matches_full_batch(tmp_path):
    # Same global batch and randomness: only float summation order differs. (Adam's first steps are about
    # lr * sign(g), so weights are compared to a fraction of lr, and the loss curves closely.)
    runs = []
    for name, accum in (("one", 1), ("acc", 2)):
        cfg = _cfg(tmp_path, name, n_iters=3, grad_accum=accum)
        cfg.model.dropout = 0.0
        runs.append(tr.train(cfg, progress=False))
    la, lb = ([r["loss"] for r in _metrics(run)] for run in runs)
    assert la[0] == pytest.approx(lb[0], rel=1e-6) and la == pytest.approx(lb, rel=1e-4)
    a, b = (torch.load(run / "ckpt-0000002.pt", weights_only=True)["model"] for run in runs)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3          # < one Adam step (lr = 1e-3)


def test_train_on_image_folder_with_a_corrupt_file(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (10 + i, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"junk")
    cfg = _cfg(tmp_path, "folder-run", n_iters=3, batch_size=2)
    cfg.data.dataset, cfg.data.root = "folder", str(folder)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        run = tr.train(cfg, progress=False)
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3]


def test_cosine_lr_decays_from_lr_to_min_lr_after_warmup():
    lrs = [tr.lr_at(k, 1.0, 10, "cosine", 110, 0.01) for k in range(111)]
    assert lrs[:10] == [tr.lr_at(k, 1.0, 10) for k in range(10)]     # the same warm-up as the constant schedule
    assert lrs[10] == 1.0 and abs(lrs[60] - 0.505) < 1e-12 and abs(lrs[110] - 0.01) < 1e-12
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))              # monotone after warm-up
