"""The fast path keeps the samples: channels_last, bf16 autocast and torch.compile against float32 eager."""

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.images import to_uint8
from ddim.generate import network
from ddim.models import PRESETS, UNet

SCHED = NoiseSchedule.linear()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = UNet(PRESETS["tiny"]).eval()
    with torch.no_grad():     # shrink the output so that 10 steps stay in a sensible range for a random net
        m.conv_out.weight.mul_(0.1)
    return m


def _sample(fn, x_T):
    return DDIMSampler(fn, SCHED).sample(x_T, steps=10)


def test_channels_last_matches_float32(model):
    x_T = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = _sample(network(model), x_T)
    out = _sample(network(model, channels_last=True), x_T)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert out.dtype == torch.float32


def test_bf16_autocast_stays_close_and_returns_float32(model):
    x_T = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = _sample(network(model), x_T)
    out = _sample(network(model, "bfloat16", channels_last=True), x_T)
    assert out.dtype == torch.float32                    # the sampler's arithmetic stays float32
    err = (out - ref).abs().max().item()
    assert 0 < err < 0.1, err                            # bf16 has 8 mantissa bits: close, not equal


def test_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        network(torch.nn.Identity(), "int8")


@pytest.mark.slow
def test_compiled_network_gives_the_same_images(model):
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = to_uint8(_sample(network(model), x_T))
    out = to_uint8(_sample(network(model, compile=True), x_T))
    assert (ref.int() - out.int()).abs().max() <= 1      # same images up to a rounding flip
