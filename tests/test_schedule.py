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
