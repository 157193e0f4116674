import math

import numpy as np
import pytest
import torch

from ddim import NoiseSchedule, timesteps


def test_linear_endpoints_cumprod_and_dtype():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert s.T == 1000
    assert s.betas.dtype == s.alphas_cumprod.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-12)


def test_quadratic_is_squared_linear_in_sqrt_beta():
    s = NoiseSchedule.quadratic(10, 1e-4, 0.02)
    np.testing.assert_allclose(s.betas.sqrt().numpy(), np.linspace(0.01, math.sqrt(0.02), 10), rtol=1e-12)


def test_cosine_matches_f_ratio_below_the_clip():
    T, s_ = 1000, 0.008
    f = lambda u: math.cos((u + s_) / (1 + s_) * math.pi / 2) ** 2
    sched = NoiseSchedule.cosine(T)
    unclipped = sched.betas < 0.999
    ac = sched.alphas_cumprod.numpy()
    for t in [0, 10, 500, 900]:
        assert unclipped[t]
        assert ac[t] == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert sched.betas.max().item() == pytest.approx(0.999)


def test_q_sample_matches_eq4():
    s = NoiseSchedule.linear()
    x0, noise = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    xt = s.q_sample(x0, t, noise)
    for i in range(3):
        a = s.alphas_cumprod[t[i]]
        torch.testing.assert_close(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i])


def test_alpha_minus_one_is_clean_data():
    s = NoiseSchedule.linear()
    assert s.alpha(torch.tensor([-1, 0])).tolist() == [1.0, s.alphas_cumprod[0].item()]


def test_dict_round_trip_is_exact():
    s = NoiseSchedule.cosine(100)
    assert NoiseSchedule.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("betas, word", [
    ([0.1, 0.05], "non-decreasing"),
    ([0.0, 0.1], r"\(0, 1\]"),
    ([0.1, 1.5], r"\(0, 1\]"),
    ([[0.1, 0.2]], "1-D"),
    ([float("nan")], r"\(0, 1\]"),
])
def test_bad_betas_are_refused(betas, word):
    with pytest.raises(ValueError, match=word):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64))


def test_unknown_schedule_name_and_bad_T():
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule.from_name("sigmoid")
    with pytest.raises(ValueError, match="T must"):
        NoiseSchedule.linear(0)


def test_uniform_and_quad_are_the_official_sequences():
    assert timesteps(1000, 50).tolist() == list(range(0, 1000, 20))
    assert timesteps(1000, 5, "quad").tolist() == [0, 50, 200, 450, 800]
    # Official: seq = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2], duplicates kept.
    official = [int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), 100) ** 2]
    assert timesteps(1000, 100, "quad").tolist() == official
    assert len(set(official)) < 100


def test_trailing_and_linspace_follow_diffusers_formulas():
    assert timesteps(1000, 10, "trailing").tolist() == list(range(99, 1000, 100))
    assert timesteps(1000, 10, "linspace").tolist() == np.round(np.linspace(0, 999, 10)).astype(int).tolist()


@pytest.mark.parametrize("skip", ["uniform", "quad", "trailing", "linspace"])
def test_length_range_and_order_for_many_sizes(skip):
    for T in [1, 7, 100, 1000]:
        for steps in sorted({s for s in (1, 2, 3, T // 3, T // 2, T) if 1 <= s <= T}):
            tau = timesteps(T, steps, skip)
            assert tau.dtype == torch.int64 and len(tau) == steps
            assert (tau[1:] >= tau[:-1]).all() and tau.min() >= 0 and tau.max() < T
            if skip != "quad":          # only the official quadratic sequence repeats entries
                assert (tau[1:] > tau[:-1]).all()


@pytest.mark.parametrize("steps", [0, 1001, -3, 2.5])
def test_bad_steps_name_the_parameter(steps):
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=1000\]"):
        timesteps(1000, steps)


def test_unknown_skip_lists_the_choices():
    with pytest.raises(ValueError, match="skip must be one of 'uniform', 'quad', 'trailing', 'linspace'"):
        timesteps(1000, 10, "cubic")


# --- grids spaced in noise level ---------------------------------------------------------------------------
def _lam(a):
    return 0.5 * (np.log(a) - np.log1p(-a))


@pytest.mark.parametrize("skip", ["logsnr", "karras"])
def test_level_spaced_grids_span_t0_to_the_last_step_and_match_diffusers(skip):
    diffusers = pytest.importorskip("diffusers")
    ac = NoiseSchedule.linear().alphas_cumprod
    for steps in (10, 25):
        tau = timesteps(1000, steps, skip, ac)
        assert tau[0] == 0 and tau[-1] == 999 and (tau[1:] > tau[:-1]).all()
        peer = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", **{
            "logsnr": {"use_lu_lambdas": True}, "karras": {"use_karras_sigmas": True}}[skip])
        peer.set_timesteps(steps)
        assert tau.tolist() == peer.timesteps.flip(0).tolist()
    assert timesteps(1000, 1, skip, ac).tolist() == [999]


def test_level_spaced_grids_are_uniform_in_their_variable_before_rounding():
    # On a fine schedule rounding moves a level little (away from the first timesteps, where one timestep
    # is a large change of level), so the spacing shows in the integer timesteps.
    ac = NoiseSchedule.linear(100_000, 1e-6, 2e-4).alphas_cumprod.numpy()
    ramp = np.linspace(0, 1, 20)
    tau = timesteps(100_000, 20, "logsnr", ac).numpy()
    lam = _lam(ac[tau])
    ok = tau >= 100
    np.testing.assert_allclose(lam[ok], (lam[-1] + ramp[::-1] * (lam[0] - lam[-1]))[ok], atol=2e-3)
    tau = timesteps(100_000, 20, "karras", ac).numpy()
    s = np.exp(-_lam(ac[tau])) ** (1 / 7)
    ok = tau >= 100
    np.testing.assert_allclose(s[ok], (s[0] + ramp * (s[-1] - s[0]))[ok], atol=2e-4)


def test_level_spaced_grids_drop_duplicates_and_need_the_alphas():
    ac = NoiseSchedule.linear().alphas_cumprod
    tau = timesteps(1000, 200, "logsnr", ac)          # levels crowd near t = 0: fewer than 200 timesteps
    assert len(tau) < 200 and len(set(tau.tolist())) == len(tau) and tau[0] == 0 and tau[-1] == 999
    with pytest.raises(ValueError, match="needs the schedule's alphas_cumprod"):
        timesteps(1000, 10, "karras")
