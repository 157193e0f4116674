"""The solvers after DDIM, proven: convergence order against the closed-form Gaussian flow, parity with diffusers'
schedulers on the same grid, exactness on a point mass, inversion round trips; and the diffusers options
(final_alpha, steps_offset, clipping that keeps eps) against diffusers' DDIMScheduler."""

import math
import warnings

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.sampling import Denoiser

SCHED = NoiseSchedule.linear()


def _peer_model():
    """A fixed smooth network (a random conv, tanh), the same for both sides of a parity test."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1).double()

    def model(x, t):
        with torch.no_grad():
            return torch.tanh(net(x.double()) + t.view(-1, 1, 1, 1).double() / 1000).to(x.dtype)
    return model


def _run_diffusers(scheduler, model, x_T, **step_kw):
    """diffusers' own loop: one network call per entry of scheduler.timesteps; returns every state."""
    x, states = x_T.clone(), []
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.expand(len(x))), t, x, **step_kw).prev_sample
            states.append(x)
    return states


def _float64(peer, final=None):
    """Give a diffusers scheduler our float64 alphas, so both sides compute in float64 (set before set_timesteps)."""
    peer.alphas_cumprod = SCHED.alphas_cumprod.clone()
    if final is not None:
        peer.final_alpha_cumprod = torch.tensor(final, dtype=torch.float64)
    return peer


# --- diffusers options ---------------------------------------------------------------------------------
def _ddim_peer(**kw):
    import diffusers
    warnings.filterwarnings("ignore")
    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False,
               set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    return diffusers.DDIMScheduler(**{**cfg, **kw})


@pytest.mark.parametrize("steps", [10, 25])
def test_final_alpha_0_and_steps_offset_match_diffusers_set_alpha_to_one_false(steps):
    pytest.importorskip("diffusers")
    model = _peer_model()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    peer = _float64(_ddim_peer(set_alpha_to_one=False, steps_offset=1), final=SCHED.alphas_cumprod[0].item())
    peer.set_timesteps(steps)
    sampler = DDIMSampler(model, SCHED)
    assert sampler.taus(steps, "uniform", steps_offset=1).tolist() == peer.timesteps.flip(0).tolist()
    ours = sampler.sample(x_T, steps, final_alpha="alpha_0", steps_offset=1)
    torch.testing.assert_close(ours, _run_diffusers(peer, model, x_T)[-1], atol=1e-10, rtol=0)
    assert sampler.sample_plan(steps, final_alpha="alpha_0", steps_offset=1)[-1].a_s == SCHED.alphas_cumprod[0].item()


def test_final_alpha_0_drops_the_identity_step_when_tau1_is_0():
    sampler = DDIMSampler(_peer_model(), SCHED)
    plan = sampler.sample_plan(10, "linspace", final_alpha="alpha_0")       # linspace starts at t = 0
    assert len(plan) == 9 and plan[-1].a_s == SCHED.alphas_cumprod[0].item()
    with pytest.raises(ValueError, match="final_alpha must be 1.0"):
        sampler.sample_plan(10, final_alpha=0.5)


@pytest.mark.parametrize("clip, use_clipped", [("keep-eps", False), (True, True)])
def test_clipping_modes_match_diffusers_use_clipped_model_output(clip, use_clipped):
    pytest.importorskip("diffusers")
    model = lambda x, t: -0.5 * x                                     # noqa: E731  x0_pred leaves [-1, 1]
    x_T = 2 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    peer = _float64(_ddim_peer(clip_sample=True), final=1.0)
    peer.set_timesteps(10)
    expected = _run_diffusers(peer, model, x_T, use_clipped_model_output=use_clipped)[-1]
    ours = DDIMSampler(model, SCHED).sample(x_T, 10, clip_denoised=clip)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=0)
    other = DDIMSampler(model, SCHED).sample(x_T, 10, clip_denoised={True: "keep-eps", "keep-eps": True}[clip])
    assert (other - ours).abs().max() > 1e-3                         # the two modes differ on this model


def test_keep_eps_clips_x0_but_returns_the_networks_eps():
    out = torch.full((2, 3), 4.0, dtype=torch.float64)
    x = torch.zeros(2, 3, dtype=torch.float64)
    eps, x0 = Denoiser(lambda x_, t: out, SCHED, clip="keep-eps")(x, 500, SCHED.alphas_cumprod[500].item())
    assert x0.abs().max() <= 1 and torch.equal(eps, out)
    with pytest.raises(ValueError, match="clip_denoised must be one of"):
        Denoiser(lambda x_, t: out, SCHED, clip="yes")


def test_steps_offset_is_checked():
    sampler = DDIMSampler(_peer_model(), SCHED)
    with pytest.raises(ValueError, match="past the last timestep 999"):
        sampler.taus(10, "trailing", steps_offset=1)
    with pytest.raises(ValueError, match="explicit skip list is used as given"):
        sampler.taus(3, [0, 10, 20], steps_offset=1)
    with pytest.raises(ValueError, match="steps_offset must be an integer >= 0"):
        sampler.taus(3, steps_offset=-1)
