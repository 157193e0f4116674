"""Checkpoints: official files reproduce the official outputs, diffusers parity both ways, own format exact, errors."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddim.checkpoint import CheckpointError, LoadedModel, export_diffusers, load, save
from ddim.commands import main
from ddim.models import PRESETS, UNet, UNetConfig
from ddim.schedule import NoiseSchedule
from shared_fixtures import FIXTURES, needs_fixtures

OFFICIAL_CONFIG = FIXTURES / "official_small_config.json"


def eps(loaded: LoadedModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(x, t)


def random_tiny(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(PRESETS["tiny"]).eval()
    with torch.no_grad():  # move every weight off its init (zero biases, unit norms) so mix-ups show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# --- the official release's own files --------------------------------------------------------------------------

@needs_fixtures
@pytest.mark.parametrize("file, kwargs, expected", [
    ("official_small_model.ckpt", {}, "eps_model"),
    ("official_small_train.pth", {}, "eps_ema"),                 # EMA weights by default
    ("official_small_train.pth", {"ema": False}, "eps_model"),   # raw weights on request
])
def test_official_files_reproduce_official_outputs(file, kwargs, expected):
    io = load_file(FIXTURES / "official_small_io.safetensors")
    loaded = load(FIXTURES / file, config=OFFICIAL_CONFIG, **kwargs)
    assert not loaded.model.training
    assert loaded.format == ("official-ckpt" if file.endswith(".ckpt") else "official-train")
    torch.testing.assert_close(eps(loaded, io["x"], io["t"]), io[expected], atol=1e-5, rtol=0)


@needs_fixtures
def test_official_train_metadata_and_schedule_from_config(tmp_path):
    cfg = json.loads(OFFICIAL_CONFIG.read_text())
    cfg["diffusion"] = {"beta_schedule": "quad", "beta_start": 1e-4, "beta_end": 0.02, "num_diffusion_timesteps": 500}
    yml = tmp_path / "cfg.yml"
    import yaml

    yml.write_text(yaml.safe_dump(cfg))
    loaded = load(FIXTURES / "official_small_train.pth", config=yml)
    assert loaded.metadata["epoch"] == 3 and loaded.metadata["step"] == 1234
    assert loaded.metadata["official_config"]["model"]["var_type"] == "fixedlarge"
    assert loaded.schedule == NoiseSchedule.quadratic(500, 1e-4, 0.02)
    assert loaded.config == UNetConfig.from_official(cfg)
    # Without a diffusion section: the official default.
    assert load(FIXTURES / "official_small_model.ckpt", config=UNetConfig.from_official(cfg)).schedule == \
        NoiseSchedule.linear(1000, 1e-4, 0.02)


@needs_fixtures
def test_official_file_without_config_is_a_clear_error():
    with pytest.raises(CheckpointError, match="official_small_model.ckpt.*config="):
        load(FIXTURES / "official_small_model.ckpt")


def test_official_style_file_infers_matching_preset(tmp_path):
    model = random_tiny()
    torch.save(model.state_dict(), tmp_path / "model.ckpt")
    loaded = load(tmp_path / "model.ckpt")
    assert loaded.config == PRESETS["tiny"] and loaded.metadata["config_inferred"]


# --- diffusers ---------------------------------------------------------------------------------------------------

DDPM_STYLE = dict(  # google/ddpm-cifar10-32's options, with small channels for speed
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2, attention_head_dim=None,
    norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.1,
)


def diffusers_model(**overrides):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(1)
    model = diffusers.UNet2DModel(**{**DDPM_STYLE, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_diffusers_folder_loads_with_same_outputs_and_exports_back(tmp_path):
    theirs = diffusers_model()
    theirs.save_pretrained(tmp_path / "unet")
    loaded = load(tmp_path / "unet")
    assert loaded.format == "diffusers"
    assert loaded.config == UNetConfig(16, 3, 3, 32, (1, 2, 2), 2, (8,), 0.1)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 499, 999])
    with torch.no_grad():
        ref = theirs(x, t).sample
    torch.testing.assert_close(eps(loaded, x, t), ref, atol=1e-5, rtol=0)

    export_diffusers(loaded, tmp_path / "back")
    import diffusers

    again = diffusers.UNet2DModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x, t).sample, ref, atol=1e-5, rtol=0)
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "back")
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), loaded.schedule.alphas_cumprod, rtol=1e-5, atol=0)


def test_diffusers_bin_weights_and_legacy_attention_names(tmp_path):
    theirs = diffusers_model()
    theirs.save_pretrained(tmp_path / "unet")
    # Rewrite as an old upload: .bin weights, attention called query/key/value/proj_attn.
    state = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    legacy = {k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value").replace("to_out.0",
              "proj_attn"): v for k, v in state.items()}
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(legacy, tmp_path / "unet" / "diffusion_pytorch_model.bin")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        ref = theirs(x, t).sample
    torch.testing.assert_close(eps(load(tmp_path / "unet"), x, t), ref, atol=1e-5, rtol=0)


def test_diffusers_weights_file_named_directly(tmp_path):
    diffusers_model().save_pretrained(tmp_path)
    assert load(tmp_path / "diffusion_pytorch_model.safetensors").format == "diffusers"


def test_diffusers_pipeline_folder_takes_scheduler_config(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    diffusers_model().save_pretrained(tmp_path / "unet")
    diffusers.DDIMScheduler(num_train_timesteps=400, beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02,
                            prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    loaded = load(tmp_path)  # pipeline root: unet/ and scheduler/ inside
    assert loaded.prediction == "v"
    assert loaded.schedule == NoiseSchedule.quadratic(400, 1e-4, 0.02)
    assert load(tmp_path / "unet").schedule.T == 400


def test_diffusers_without_scheduler_defaults_to_ddpm_linear(tmp_path):
    diffusers_model().save_pretrained(tmp_path)
    loaded = load(tmp_path)
    assert loaded.schedule == NoiseSchedule.linear(1000, 1e-4, 0.02) and loaded.prediction == "eps"


@pytest.mark.parametrize("option, value", [
    ("resnet_time_scale_shift", "scale_shift"),
    ("num_class_embeds", 0),
    ("flip_sin_to_cos", True),
    ("attention_head_dim", 8),
    ("norm_eps", 1e-5),
])
def test_unsupported_diffusers_option_is_named(tmp_path, option, value):
    # Only the config matters: the error must come before any weight is read.
    conf = {"_class_name": "UNet2DModel", **DDPM_STYLE, option: value}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match=f"config.json.*{option}"):
        load(tmp_path)


def _cli_refuses(tmp_path, capsys, ckpt, *words):
    """`ddim sample --ckpt ckpt` exits 2 with one line holding every word, and writes nothing."""
    out = tmp_path / "out"
    code = main(["sample", "--ckpt", str(ckpt), "--n", "1", "--steps", "2", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and all(w in err[0] for w in words), err
    assert not out.exists()                                      # no run.json, no images/


@pytest.mark.parametrize("config, key", [
    ([DDPM_STYLE], "holds a JSON list"),
    ({**DDPM_STYLE, "sample_size": "big"}, "sample_size"),
    ({**DDPM_STYLE, "sample_size": -32}, "sample_size"),
    ({**DDPM_STYLE, "sample_size": [16, "x"]}, "sample_size"),
    ({**DDPM_STYLE, "block_out_channels": ["32", 64, 64]}, "block_out_channels"),
    ({**DDPM_STYLE, "layers_per_block": "2"}, "layers_per_block"),
    ({**DDPM_STYLE, "in_channels": 0}, "in_channels"),
    ({**DDPM_STYLE, "dropout": "none"}, "dropout"),
])
def test_a_malformed_diffusers_config_is_one_line_and_writes_nothing(tmp_path, capsys, config, key):
    diffusers_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"config.json.*{key}"):
        load(tmp_path / "m")
    _cli_refuses(tmp_path, capsys, tmp_path / "m", "config.json", key)


@pytest.mark.parametrize("scheduler, key", [
    ([1], "holds a JSON list"), ({"num_train_timesteps": "1000"}, "num_train_timesteps"),
    ({"beta_start": "small"}, "beta_start"), ({"trained_betas": [0.1, "x"]}, "trained_betas"),
    ({"clip_sample": True, "clip_sample_range": 2.0}, "clip_sample_range"),
])
def test_a_malformed_scheduler_config_is_one_line(tmp_path, capsys, scheduler, key):
    diffusers_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "scheduler_config.json").write_text(json.dumps(scheduler))
    _cli_refuses(tmp_path, capsys, tmp_path / "m", "scheduler_config.json", key)


def test_a_bad_format_version_on_the_command_line(tmp_path, capsys):
    save(tmp_path / "m.safetensors", random_tiny(), NoiseSchedule.linear())
    meta = {**json.loads((tmp_path / "m.safetensors").read_bytes()[8:8 + int.from_bytes(
        (tmp_path / "m.safetensors").read_bytes()[:8], "little")])["__metadata__"], "format_version": "x"}
    save_file(load_file(tmp_path / "m.safetensors"), tmp_path / "m.safetensors", metadata=meta)
    _cli_refuses(tmp_path, capsys, tmp_path / "m.safetensors", "m.safetensors", "format_version 'x'")


@pytest.mark.parametrize("scheduler, mode", [
    ({"_class_name": "DDPMScheduler", "clip_sample": True}, True),
    ({"_class_name": "DDPMScheduler"}, True),                      # diffusers' default for DDPM and DDIM
    ({"_class_name": "DDIMScheduler", "clip_sample": True}, "keep-eps"),   # DDIM's step keeps the network's eps
    ({"_class_name": "DDIMScheduler", "clip_sample": False}, False),
    ({"_class_name": "PNDMScheduler"}, False),
])
def test_the_scheduler_config_says_how_to_clip(tmp_path, scheduler, mode):
    diffusers_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "scheduler_config.json").write_text(json.dumps(scheduler))
    assert load(tmp_path / "m").clip_denoised == mode


def test_ddim_sample_honours_clip_sample_of_a_diffusers_scheduler(tmp_path):
    """`ddim sample` on a folder whose DDPMScheduler says clip_sample: true clips x0_pred (as --clip-denoised
    does); --no-clip-denoised turns it off, and run.json records what ran."""
    diffusers_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler",
                                                                       "clip_sample": True}))
    (tmp_path / "plain").mkdir()
    diffusers_model().save_pretrained(tmp_path / "plain")            # the same weights, no scheduler config

    def run(ckpt, out, *flags):
        argv = ["sample", "--ckpt", str(ckpt), "--n", "2", "--steps", "3", "--quiet", "--out", str(tmp_path / out)]
        assert main(argv + list(flags)) == 0
        return (np.load(tmp_path / out / "samples.npz")["arr_0"],
                json.loads((tmp_path / out / "run.json").read_text()))

    honoured, manifest = run(tmp_path / "m", "a")
    clipped, _ = run(tmp_path / "plain", "b", "--clip-denoised")
    unclipped, _ = run(tmp_path / "m", "c", "--no-clip-denoised")
    assert np.array_equal(honoured, clipped) and not np.array_equal(honoured, unclipped)
    assert "clip_denoised" in json.dumps(manifest) and '"clip_denoised": true' in json.dumps(manifest)


def test_export_refuses_what_diffusers_cannot_express(tmp_path):
    cfg = UNetConfig(image_size=16, ch=32, ch_mult=(2, 2), attn_resolutions=(8,))
    with pytest.raises(ValueError, match="ch_mult"):
        export_diffusers(UNet(cfg), tmp_path)


# --- own format --------------------------------------------------------------------------------------------------

def test_own_format_round_trip_is_exact(tmp_path):
    model = random_tiny()
    schedule = NoiseSchedule.cosine(200)
    meta = {"step": 12, "ema_rate": 0.9999, "note": "round trip", "dataset": {"name": "x", "size": [16, 16]}}
    save(tmp_path / "m.safetensors", model, schedule, prediction="v", metadata=meta)
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.format == "ddim" and loaded.prediction == "v" and loaded.metadata == meta
    assert loaded.config == model.config and loaded.schedule == schedule and loaded.schedule.name == "cosine"
    assert loaded.schedule.betas.dtype == torch.float64
    ours, theirs = model.state_dict(), loaded.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 150])
    assert torch.equal(eps(loaded, x, t), model(x, t).detach())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # the temp file is gone


def test_own_format_keeps_bfloat16_and_channels_last_models(tmp_path):
    model = random_tiny().to(torch.bfloat16).to(memory_format=torch.channels_last)
    save(tmp_path / "m.safetensors", model, NoiseSchedule.linear())
    loaded = load(tmp_path / "m.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()))
    assert loaded.model.conv_in.weight.dtype == torch.bfloat16


def test_own_format_refuses_a_different_config(tmp_path):
    save(tmp_path / "m.safetensors", random_tiny(), NoiseSchedule.linear())
    assert load(tmp_path / "m.safetensors", config="tiny").config == PRESETS["tiny"]
    with pytest.raises(CheckpointError, match="m.safetensors.*differs"):
        load(tmp_path / "m.safetensors", config="digits")


def test_save_rejects_unknown_prediction_and_non_json_metadata(tmp_path):
    with pytest.raises(ValueError, match="prediction"):
        save(tmp_path / "m.safetensors", random_tiny(), NoiseSchedule.linear(), prediction="epsilon")
    with pytest.raises(TypeError):
        save(tmp_path / "m.safetensors", random_tiny(), NoiseSchedule.linear(), metadata={"x": object()})
    assert not list(tmp_path.iterdir())


# --- bad files ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content", [
    ("garbage.pt", b"this is not a checkpoint at all" * 10),
    ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!!"),
    ("empty.ckpt", b""),
])
def test_corrupt_file_names_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name):
        load(tmp_path / name, config="tiny")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    model = random_tiny()
    full = tmp_path / f"full{suffix}"
    if suffix == ".safetensors":
        save(full, model, NoiseSchedule.linear())
    else:
        torch.save(model.state_dict(), full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cut{suffix}"):
        load(cut, config="tiny")


def test_mismatched_keys_are_listed(tmp_path):
    state = random_tiny().state_dict()
    state.pop("conv_in.weight")
    state.pop("mid.attn_1.q.bias")
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "bad.ckpt", config="tiny")
    msg = str(err.value)
    assert "bad.ckpt" in msg and "conv_in.weight" in msg and "mid.attn_1.q.bias" in msg and "extra.weight" in msg


def test_mismatched_shapes_are_listed(tmp_path):
    torch.save(random_tiny().state_dict(), tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match="m.ckpt.*(conv_in.weight|shape)"):
        load(tmp_path / "m.ckpt", config=UNetConfig(16, 1, 1, 32, (1, 2), 1, (8,), 0.0))


class Payload:
    """A class whose unpickling would run code; weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickle_with_custom_class_is_refused(tmp_path, capsys):
    torch.save({"conv_in.weight": torch.zeros(1), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: holds pickled Python objects.*code.*will not run it") as e:
        load(tmp_path / "evil.pt", config="tiny")
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)   # not torch's advice to run it
    assert "pickled code ran" not in capsys.readouterr().out
    # The same file still unpickles with the unsafe loader: the refusal is ours, not a broken file.
    assert pickle is not None and torch.load(tmp_path / "evil.pt", weights_only=False) is not None


def test_missing_path_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        load(tmp_path / "nope.ckpt")
    torch.save(random_tiny().state_dict(), tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match="preset"):
        load(tmp_path / "m.ckpt", config="not-a-preset")


def test_own_file_moved_next_to_a_config_json_is_still_own_format(tmp_path):
    save(tmp_path / "m.safetensors", random_tiny(), NoiseSchedule.linear())
    shutil.copy(tmp_path / "m.safetensors", tmp_path / "n.safetensors")
    (tmp_path / "config.json").write_text("{}")
    assert load(tmp_path / "n.safetensors").format == "ddim"
