"""U-Net: official parity on the release's own fixtures, official key names/shapes, dtypes and memory formats."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ddim.models import PRESETS, UNet, UNetConfig
from ddim.models.unet import timestep_embedding
from shared_fixtures import FIXTURES, needs_fixtures


def tiny(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig(**{**PRESETS["tiny"].to_dict(), **overrides})
    return UNet(cfg).eval()


@needs_fixtures
def test_reproduces_official_outputs_from_plain_state_dict():
    cfg = UNetConfig.from_official(json.loads((FIXTURES / "official_small_config.json").read_text()))
    model = UNet(cfg).eval()
    model.load_state_dict(torch.load(FIXTURES / "official_small_model.ckpt", weights_only=True))
    io = load_file(FIXTURES / "official_small_io.safetensors")
    with torch.no_grad():
        eps = model(io["x"], io["t"])
    torch.testing.assert_close(eps, io["eps_model"], atol=1e-5, rtol=0)


@needs_fixtures
@pytest.mark.parametrize("name", ["cifar10", "celeba64", "lsun256"])
def test_presets_match_official_manifest(name):
    official = {"cifar10": "cifar10", "celeba64": "celeba", "lsun256": "bedroom"}[name]
    manifest = json.loads((FIXTURES / "official_state_dict_manifest.json").read_text())[official]
    assert UNetConfig.from_official({"data": {"image_size": manifest["config"]["image_size"]},
                                     "model": manifest["config"]}) == PRESETS[name]
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = UNet(PRESETS[name])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert list(shapes) == list(manifest["state_dict"])  # same order too
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]


def test_cifar10_parameter_count():
    with torch.device("meta"):
        model = UNet(PRESETS["cifar10"])
    assert sum(p.numel() for p in model.parameters()) == 35_746_307


def test_digits_preset_fits_under_10_mb():
    with torch.device("meta"):
        model = UNet(PRESETS["digits"])
    assert 4 * sum(p.numel() for p in model.parameters()) < 10e6


def test_timestep_embedding_closed_form():
    # Official formula: frequencies 10000^(-i/(half-1)), so the first is 1 and the last exactly 1e-4.
    t = torch.tensor([0, 1, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(emb[1, 0], torch.sin(torch.tensor(1.0)))
    torch.testing.assert_close(emb[2, 3], torch.sin(torch.tensor(999 * 1e-4)))
    assert timestep_embedding(t, 7).shape == (3, 7)


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_and_non_square_sizes(batch):
    model = tiny()
    for hw in [(16, 16), (8, 24), (32, 16)]:
        x = torch.randn(batch, 3, *hw)
        with torch.no_grad():
            assert model(x, torch.randint(0, 1000, (batch,))).shape == x.shape


@pytest.mark.parametrize("hw", [(15, 16), (16, 9), (0, 16)])
def test_image_size_not_allowed(hw):
    with pytest.raises(ValueError, match="image size .* not allowed"):
        tiny()(torch.randn(1, 3, *hw), torch.zeros(1, dtype=torch.long))


def test_bad_config_and_channels():
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=30, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="32"):
        UNetConfig(ch=48)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny()(torch.randn(1, 1, 16, 16), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNetConfig(image_size=32, attn_resolutions=(12,))  # the release would silently build no attention
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"chanels": 3})


def test_float_and_scalar_t_equal_long_t():
    model, x = tiny(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x, torch.tensor([7, 7]))
        torch.testing.assert_close(model(x, torch.tensor([7.0, 7.0])), ref)
        torch.testing.assert_close(model(x, torch.tensor(7)), ref)


def test_timestep_changes_output():
    model, x = tiny(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([0])), model(x, torch.tensor([500])))


def test_batch_elements_are_independent():
    # Attention and GroupNorm must never mix samples: output i depends on input i only.
    model, x, t = tiny(), torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    with torch.no_grad():
        full = model(x, t)
        torch.testing.assert_close(model(x[1:2], t[1:2]), full[1:2], atol=1e-5, rtol=1e-5)


def test_config_dict_round_trip_is_json_safe():
    for cfg in PRESETS.values():
        assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_channels_last_matches_contiguous():
    model, x, t = tiny(), torch.randn(2, 3, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        ref = model(x, t)
        model = model.to(memory_format=torch.channels_last)
        out = model(x, t)  # a contiguous input is converted inside
        out_cl = model(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_close_to_float32(dtype):
    model, x, t = tiny(), torch.randn(2, 3, 16, 16), torch.tensor([10, 600])
    with torch.no_grad():
        ref = model(x, t)
        try:
            out = model.to(dtype)(x.to(dtype), t)
        except RuntimeError as e:  # some CPU builds lack half kernels for conv/GroupNorm
            pytest.skip(f"{dtype} forward unsupported on this CPU build: {e}")
    assert out.dtype == dtype and torch.isfinite(out).all()
    # bf16 keeps 8 mantissa bits (rel. step 2^-8 ~ 4e-3), fp16 11 bits; ~20 layers of rounding accumulate, so
    # allow a few percent of the output's scale rather than an absolute 1e-5.
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < (0.05 if dtype == torch.bfloat16 else 0.01)


def test_float32_input_to_bf16_model_returns_float32():
    model = tiny().to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 16), torch.tensor([5]))
    assert out.dtype == torch.float32


def test_one_optimizer_step_lowers_loss():
    model = tiny(dropout=0.0).train()
    x, t, target = torch.randn(4, 3, 16, 16), torch.randint(0, 1000, (4,)), torch.randn(4, 3, 16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        loss = (model(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


def test_class_conditional_network_adds_a_label_embedding_with_a_null_label():
    from ddim.models import PRESETS, UNet, UNetConfig
    torch.manual_seed(0)
    cfg = UNetConfig(**{**PRESETS["tiny"].to_dict(), "num_classes": 4})
    net = UNet(cfg).eval()
    assert net.label_emb.weight.shape == (5, 4 * cfg.ch)              # 4 labels and the null one
    with torch.no_grad():
        net.label_emb.weight.normal_()
        x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
        y = torch.tensor([0, 3, -1])
        out = net(x, t, y)
        assert out.shape == x.shape
        torch.testing.assert_close(net(x, t), net(x, t, torch.full((3,), -1)))   # no y: the null label
        assert not torch.allclose(net(x, t, torch.tensor([0, 0, 0])), net(x, t, torch.tensor([1, 1, 1])))
        torch.testing.assert_close(out[2:], net(x[2:], t[2:], y[2:]))           # per sample
    with pytest.raises(ValueError, match=r"class labels must be integers in \[0, 4\)"):
        net(x, t, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(PRESETS["tiny"])(x, t, y)
