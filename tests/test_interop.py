"""Meeting users where they are: Hub ids from a local cache (offline), a complete diffusers pipeline folder that
gives our samples, class-conditional models both ways."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddim import DDIMSampler, NoiseSchedule
from ddim.checkpoint import export_diffusers, export_pipeline, load, save
from ddim.commands import main
from ddim.errors import DDIMError
from ddim.generate import load_model
from ddim.models import PRESETS, UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]


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


def test_a_hub_revision_with_path_parts_is_refused_before_any_lookup(tmp_path, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")

    def looked_up(*args, **kwargs):
        raise AssertionError("the Hub (or its cache) was asked")

    monkeypatch.setattr(hub, "snapshot_download", looked_up)
    monkeypatch.setattr(hub.HfApi, "list_repo_files", looked_up)
    for spec in ("user/repo@../../../x/ref", "user/repo@main/../../x", "user/repo@./main", "user/repo@a//b"):
        with pytest.raises(DDIMError, match="revision .* '\\.\\.' path part"):
            load(spec)
    assert main(["sample", "--ckpt", "user/repo@../../../x/ref", "--n", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ckpt" in err[0] and not (tmp_path / "s").exists()
    monkeypatch.setattr(hub.HfApi, "list_repo_files", lambda *a, **k: [])    # refs/pr/N is a revision
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: str(tmp_path))
    with pytest.raises(DDIMError, match="without config.json"):
        load("user/repo@refs/pr/1")


def _fake_hub(monkeypatch, repo_folder, cache):
    """huggingface_hub's listing and download, served from a local folder: records the files fetched."""
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import filter_repo_objects

    files = sorted(p.relative_to(repo_folder).as_posix() for p in repo_folder.rglob("*") if p.is_file())
    fetched = []

    def download(repo_id, revision=None, allow_patterns=None, local_files_only=False, **kwargs):
        assert not local_files_only
        for f in filter_repo_objects(files, allow_patterns=allow_patterns):
            (cache / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repo_folder / f, cache / f)
            fetched.append(f)
        return str(cache)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub.HfApi, "list_repo_files", lambda self, repo_id, revision=None, **k: files)
    monkeypatch.setattr(hub, "snapshot_download", download)
    return fetched


def test_a_hub_download_fetches_one_weights_format_safetensors_first(tmp_path, monkeypatch):
    loaded = load_model()
    repo = export_pipeline(loaded, tmp_path / "repo")
    weights = repo / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), repo / "unet" / "diffusion_pytorch_model.bin")      # the repo has both
    (repo / "vae").mkdir()
    (repo / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"another model: not needed")
    fetched = _fake_hub(monkeypatch, repo, tmp_path / "cache")
    got = load("someone/both-formats")
    assert sorted(fetched) == ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                               "unet/diffusion_pytorch_model.safetensors"]
    assert got.format == "diffusers" and got.schedule == loaded.schedule
    weights.unlink()                                           # a .bin-only repo gets its .bin
    shutil.rmtree(tmp_path / "cache")
    fetched = _fake_hub(monkeypatch, repo, tmp_path / "cache")
    load("someone/bin-only")
    assert "unet/diffusion_pytorch_model.bin" in fetched and not [f for f in fetched if f.endswith(".safetensors")]


def test_the_hub_error_names_the_cli_that_current_huggingface_hub_installs(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub.HfApi, "list_repo_files", offline)
    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(DDIMError, match="no cached copy.*`hf download someone/model`") as e:
        load("someone/model")
    assert "huggingface-cli" not in str(e.value)


def test_a_class_conditional_export_runs_in_diffusers_with_the_documented_call(tmp_path, capfd):
    """README's 'Class-conditional models in diffusers' loop gives our guided samples; loading it warns of no
    config key diffusers does not know; our load reads the null label back from the weights' metadata."""
    diffusers = pytest.importorskip("diffusers")
    readme = (ROOT / "README.md").read_text()
    assert "class_labels=torch.cat([torch.full_like(y, null), y])" in readme and "num_class_embeds - 1" in readme
    loaded = load_model("digits-cond")
    capfd.readouterr()
    assert main(["export", "--ckpt", "digits-cond", "--out", str(tmp_path / "pipe")]) == 0
    assert "class_labels" in capfd.readouterr().out                   # the command says how to run it
    assert "ddim" not in json.dumps(json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text()))
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "pipe")
    assert "not expected" not in capfd.readouterr().err
    unet, scheduler = pipe.unet, pipe.scheduler
    null = unet.config.num_class_embeds - 1
    y, w = torch.tensor([0, 3, 7]), 2.0
    x_T = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x = x_T
    scheduler.set_timesteps(10)
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = unet(torch.cat([x, x]), t, class_labels=torch.cat([torch.full_like(y, null), y])).sample
        uncond, cond = out.chunk(2)
        x = scheduler.step(uncond + w * (cond - uncond), t, x, eta=0.0).prev_sample
    with torch.no_grad():
        ours = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction).sample(x_T, steps=10, y=y, guidance=w)
    assert (ours - x).abs().max() < 1e-4
    back = load(tmp_path / "pipe")
    assert back.config == loaded.config and back.config.null_class


def test_exports_of_the_previous_version_still_mark_the_null_label(tmp_path):
    """Before the marker moved to the weights' metadata it was a config.json key; such folders read the same."""
    loaded = load_model("digits-cond")
    export_diffusers(loaded.model, tmp_path / "unet")
    conf = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps({**conf, "ddim_null_class": True}))
    save_file(load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"),
              tmp_path / "unet" / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    assert load(tmp_path / "unet").config == loaded.config
