"""Meeting users where they are: Hub ids from a local cache (offline), a complete diffusers pipeline folder that
gives our samples, class-conditional models both ways."""

import json

import numpy as np
import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.checkpoint import export_diffusers, export_pipeline, load, save
from ddim.commands import main
from ddim.generate import load_model
from ddim.models import PRESETS, UNet, UNetConfig


def test_export_pipeline_gives_our_samples_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    loaded = load_model()                                 # the embedded digits model
    assert main(["export", "--out", str(tmp_path / "pipe")]) == 0
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, num_inference_steps=20, eta=0.0, output_type="np",
                  generator=torch.Generator().manual_seed(7)).images          # [B, H, W, C] in [0, 1]
    x_T = torch.randn((3, 1, 16, 16), generator=torch.Generator().manual_seed(7))   # the pipeline's draw
    with torch.no_grad():
        ours = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction).sample(x_T, steps=20)
    ours = ((ours / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - theirs).max() < 1e-4
    assert main(["export", "--out", str(tmp_path / "pipe")]) == 2               # no silent overwrite
    again = load(tmp_path / "pipe")                                             # and it reads back
    assert again.schedule == loaded.schedule and again.prediction == loaded.prediction


def test_class_conditional_models_export_and_load_with_num_class_embeds(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cfg = UNetConfig(**{**PRESETS["tiny"].to_dict(), "num_classes": 3})
    model = UNet(cfg).eval()
    with torch.no_grad():
        model.label_emb.weight.normal_()
    export_diffusers(model, tmp_path / "unet")
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    assert theirs.config.num_class_embeds == 4                                   # 3 labels and the null one
    x, t, y = torch.randn(4, 3, 16, 16), torch.tensor([5, 300, 600, 999]), torch.tensor([0, 2, -1, 1])
    with torch.no_grad():
        ref = theirs(x, t, class_labels=torch.where(y == -1, 3, y)).sample
        torch.testing.assert_close(model(x, t, y), ref, atol=1e-5, rtol=1e-5)
        back = load(tmp_path / "unet")
        assert back.config.num_classes == 3 and back.config.null_class
        torch.testing.assert_close(back.model(x, t, y), ref, atol=1e-5, rtol=1e-5)
    save(tmp_path / "c.safetensors", model, NoiseSchedule.linear())
    assert load(tmp_path / "c.safetensors").config == cfg


def _hub_cache(root, repo: str, folder):
    """The layout huggingface_hub reads offline: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.parent.mkdir(parents=True)
    import shutil
    shutil.copytree(folder, snap)
    return snap


def test_a_hub_id_loads_from_the_cache_offline(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    loaded = load_model()
    export_pipeline(loaded, tmp_path / "pipe")
    cache = tmp_path / "hub"
    _hub_cache(cache, "someone/ddim-digits", tmp_path / "pipe")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    got = load("someone/ddim-digits")
    assert got.format == "diffusers" and got.schedule == loaded.schedule
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(got.model(x, t), loaded.model(x, t), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no cached copy.*HF_HUB_OFFLINE"):
        load("someone/not-cached")
    assert main(["sample", "--ckpt", "someone/ddim-digits", "--n", "2", "--steps", "2", "--quiet",
                 "--out", str(tmp_path / "s")]) == 0
    # a local folder spelled like a Hub id wins
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone").mkdir()
    export_pipeline(loaded, tmp_path / "someone" / "local")
    assert load("someone/local").format == "diffusers"


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    arr = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=arr)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "npz", "--data-root", str(tmp_path / "data.npz"), "--model", "tiny",
                 "--image-size", "16", "--channels", "3", "--batch-size", "4", "--steps", "4", "--log-every", "2",
                 "--ckpt-every", "4", "--sample-every", "2", "--n-samples", "4", "--sample-steps", "2",
                 "--device", "cpu", "--tensorboard", "--out", str(run)]) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/img_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    logged = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(logged, rel=1e-6)
    assert [e.step for e in events.Images("samples/ema")] == [2, 4]
