"""DeepCache: exact when off or when nothing changed; a full pass every N calls, reset at every walk.
(DDIMSampler's other tests: the list at the top of test_sampler.py.)"""

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.config import SampleConfig
from ddim.generate import make_sampler
from ddim.models import PRESETS, UNet
from ddim.models.deepcache import DeepCache

SCHED = NoiseSchedule.linear()


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = UNet(type(cfg)(**{**cfg.to_dict(), "num_res_blocks": 2})).eval()
    with torch.no_grad():                   # random but not tiny outputs, so differences would show
        for p in model.parameters():
            p.mul_(3)
    return model


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_a_cached_call_with_unchanged_inputs_equals_the_full_pass(unet, branch):
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([700, 700, 700])
    with torch.no_grad():
        full = unet(x, t)
        eps, deep = unet.forward_features(x, t, branch=branch)
        shallow, _ = unet.forward_features(x, t, branch=branch, deep=deep)
    torch.testing.assert_close(eps, full, atol=0, rtol=0)
    torch.testing.assert_close(shallow, full, atol=1e-6, rtol=1e-5)


def test_interval_one_is_bit_identical(unet):
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plain = DDIMSampler(unet, SCHED).sample(x_T, steps=6)
    cached = DDIMSampler(DeepCache(unet, interval=1), SCHED).sample(x_T, steps=6)
    assert torch.equal(plain, cached)


def test_a_full_pass_every_n_calls_and_a_fresh_cache_per_walk(unet):
    net = DeepCache(unet, interval=3)
    sampler = DDIMSampler(net, SCHED)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    a = sampler.sample(x_T, steps=7)
    assert (net.calls, net.full_calls) == (7, 3)                       # calls 0, 3, 6
    b = sampler.sample(x_T, steps=7)
    assert (net.calls, net.full_calls) == (7, 3) and torch.equal(a, b)  # reset: the same walk again
    exact = DDIMSampler(unet, SCHED).sample(x_T, steps=7)
    assert not torch.equal(a, exact) and torch.isfinite(a).all()        # it is an approximation


def test_the_config_switches_it_on_and_refuses_bad_settings(unet):
    from ddim.checkpoint import LoadedModel
    loaded = LoadedModel(unet, SCHED, "eps", unet.config)
    sampler = make_sampler(loaded, SampleConfig(cache_interval=2, cache_branch=1))
    x_T = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(sampler.sample(x_T, steps=4)).all()
    with pytest.raises(ValueError, match="cache_branch must be"):
        DeepCache(unet, 2, branch=3)
    with pytest.raises(ValueError, match="needs a ddim.models.UNet"):
        DeepCache(lambda x, t: x, 2)
    assert "cache_branch" not in SampleConfig().manifest() and SampleConfig(cache_interval=2).manifest()[
        "cache_interval"] == 2


@pytest.mark.slow
def test_compiled_cache_gives_the_eager_cache_images(unet):
    # the cache compiles the U-Net's two passes (full, shallow); its bookkeeping stays in Python
    from ddim.checkpoint import LoadedModel
    loaded = LoadedModel(unet, SCHED, "eps", unet.config)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eager = make_sampler(loaded, SampleConfig(cache_interval=2)).sample(x_T, steps=6)
        compiled = make_sampler(loaded, SampleConfig(cache_interval=2, compile=True))
        out = compiled.sample(x_T, steps=6)
        again = compiled.sample(x_T, steps=6)                    # a second walk: the cache was reset
    # this random network's outputs reach |x| ~ 100: compare relative to that scale
    assert (out - eager).abs().max() <= 1e-4 * eager.abs().max()
    assert torch.equal(out, again)


@pytest.mark.slow
def test_a_copy_of_a_used_compiled_cache_runs_its_own_weights(unet):
    # a compiled pass stays bound to the U-Net it was made from; the copy must make its own
    import copy
    net = DeepCache(copy.deepcopy(unet), interval=2, compile=True)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        net(x, t)
        twin = copy.deepcopy(net)
        twin.unet.conv_out.bias.data += 1.0          # only the copy's weights change
        twin.reset_cache()
        net.reset_cache()
        assert torch.allclose(twin(x, t), net(x, t) + 1.0, atol=1e-5)
