"""The sampler against independent truths: closed forms, scipy's ODE solver, and diffusers as a peer."""

import math
import warnings

import numpy as np
import pytest
import torch
from peer_models import peer_model

from ddim import DDIMSampler, NoiseSchedule, slerp, timesteps
from ddim.sampling import ddim_sigma, ddim_step, predict_eps_x0

SCHED = NoiseSchedule.linear()


def _a(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return SCHED.alphas_cumprod[t.cpu()].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class Oracle:
    """Returns the true noise of x_t for a known x_0, and counts its calls."""

    def __init__(self, x0):
        self.x0, self.calls = x0, []

    def __call__(self, x, t):
        self.calls.append(t[0].item())
        a = _a(t, x)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


class GaussianEps:
    """The exact E[eps | x_t] for data N(mu, diag(s^2)): sqrt(1-a) (x - sqrt(a) mu) / (a s^2 + 1 - a)."""

    def __init__(self, mu, s):
        self.mu, self.s = mu, s

    def at_alpha(self, x, a):
        return (1 - a) ** 0.5 * (x - a**0.5 * self.mu) / (a * self.s**2 + 1 - a)

    def __call__(self, x, t):
        return self.at_alpha(x, _a(t, x))


# --- closed forms ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip", ["uniform", "quad", "trailing", "linspace"])
@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_true_noise_recovers_x0_exactly(skip, eta):
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    taus = timesteps(1000, 20, skip)
    x_t = SCHED.q_sample(x0, taus[-1].repeat(3), torch.randn_like(x0))
    out = DDIMSampler(Oracle(x0), SCHED).sample(x_t, steps=20, skip=skip, eta=eta,
                                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-12, rtol=0)


def test_standard_normal_data_contracts_by_the_angle_factor():
    # For N(0, I) data eps* = sqrt(1 - a) x and one eta = 0 step multiplies x by cos(phi_s - phi_t), phi = arccos(sqrt(a)).
    model = GaussianEps(torch.zeros(()), torch.ones(()))
    taus = timesteps(1000, 10).tolist()
    phi = [math.acos(math.sqrt(a)) for a in [1.0] + [SCHED.alphas_cumprod[t].item() for t in taus]]
    factor = math.prod(math.cos(phi[i] - phi[i + 1]) for i in range(len(taus)))
    x = torch.full((1, 1), 1.0, dtype=torch.float64)
    out = DDIMSampler(model, SCHED).sample(x, steps=10)
    assert out.item() == pytest.approx(factor, rel=1e-12)
    assert factor == pytest.approx(0.832, abs=1e-3)
    assert DDIMSampler(model, SCHED).sample(x, steps=1000).item() > 0.99


def test_eta0_converges_to_the_probability_flow_ode_first_order():
    # Eq. 14: d x_bar / d sigma = eps(x_bar / sqrt(sigma^2 + 1)), x_bar = x / sqrt(a), sigma = sqrt((1 - a) / a).
    from scipy.integrate import solve_ivp

    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=6) * 0.5, rng.uniform(0.2, 1.5, size=6)
    model = GaussianEps(torch.tensor(mu), torch.tensor(s))
    x_T = rng.normal(size=(1, 6))
    a_T = SCHED.alphas_cumprod[-1].item()        # "trailing" starts every S at t = T - 1

    def rhs(sig, xbar):
        a = 1 / (1 + sig**2)
        return model.at_alpha(torch.tensor(xbar * math.sqrt(a)), a).numpy()

    sig_T = math.sqrt((1 - a_T) / a_T)
    ode = solve_ivp(rhs, (sig_T, 0.0), x_T[0] / math.sqrt(a_T), rtol=1e-11, atol=1e-11, method="DOP853")
    exact = ode.y[:, -1]
    errs = {}
    for S in (10, 100):
        out = DDIMSampler(model, SCHED).sample(torch.tensor(x_T), steps=S, skip="trailing")
        errs[S] = np.abs(out.numpy()[0] - exact).max()
    assert errs[100] < errs[10] / 5, errs
    assert errs[100] < 0.05


def test_eta1_every_step_is_the_ddpm_posterior():
    betas, ac = SCHED.betas.numpy(), SCHED.alphas_cumprod.numpy()
    plan = DDIMSampler(Oracle(None), SCHED).sample_plan(1000)
    for step in plan[:-1]:
        t = step.t
        assert (step.a_t, step.a_s) == (ac[t], ac[t - 1])
        assert ddim_sigma(step.a_t, step.a_s, 1.0)**2 == pytest.approx(betas[t] * (1 - ac[t - 1]) / (1 - ac[t]), rel=1e-9)
    # The mean of the step equals the posterior mean of q(x_{t-1} | x_t, x_0) (Ho et al., eq. 7).
    t = 400
    x0, x_t = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    eps, x0_pred = predict_eps_x0((x_t - math.sqrt(ac[t]) * x0) / math.sqrt(1 - ac[t]), x_t, ac[t])
    torch.testing.assert_close(x0_pred, x0)
    sigma = ddim_sigma(ac[t], ac[t - 1], 1.0)
    mean = ddim_step(x0_pred, eps, ac[t - 1], sigma)
    post = (math.sqrt(ac[t - 1]) * betas[t] / (1 - ac[t])) * x0 \
        + (math.sqrt(1 - betas[t]) * (1 - ac[t - 1]) / (1 - ac[t])) * x_t
    torch.testing.assert_close(mean, post, rtol=1e-10, atol=1e-12)


def test_eta1_step_has_posterior_mean_and_variance_empirically():
    # Run the real loop for one step (t -> s) over many samples of one x_t and compare the moments.
    t, s, n = 600, 500, 40000
    ac = SCHED.alphas_cumprod.numpy()
    x0 = torch.full((n, 1), 0.3, dtype=torch.float64)
    x_t = torch.full((n, 1), 0.1, dtype=torch.float64)
    it = DDIMSampler(Oracle(x0), SCHED).iter_sample(x_t, 2, eta=1.0, skip=[s, t], generator=torch.Generator().manual_seed(0))
    _, x_s, _ = next(it)
    beta = 1 - ac[t] / ac[s]
    mean = math.sqrt(ac[s]) * beta / (1 - ac[t]) * 0.3 + math.sqrt(1 - beta) * (1 - ac[s]) / (1 - ac[t]) * 0.1
    var = (1 - ac[s]) / (1 - ac[t]) * beta
    assert x_s.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(var / n))
    assert x_s.var().item() == pytest.approx(var, rel=0.03)


def test_large_variance_is_finite_where_eq12_would_be_nan():
    taus = timesteps(1000, 10)
    ac = SCHED.alphas_cumprod
    a_s = lambda i: ac[taus[i - 1]] if i > 0 else 1.0      # the step after tau_1 goes to alpha = 1
    negative = [i for i in range(10) if 1 - a_s(i) - (1 - ac[taus[i]] / a_s(i)) < 0]
    assert len(negative) == 4          # eq. 12 with sigma-hat would take sqrt of a negative number here
    model = GaussianEps(torch.tensor(0.2), torch.tensor(0.5))
    out = DDIMSampler(model, SCHED).sample(torch.randn(8, 3), steps=10, variance="large",
                                          generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0 + 1e-6   # last step returns the clipped x0_pred


# --- peers ---------------------------------------------------------------------------------------------


def _run_diffusers(scheduler, model, x_T, generator, **step_kw):
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.expand(len(x))), t, x, generator=generator, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_matches_diffusers_ddim_scheduler(steps, eta):
    diffusers = pytest.importorskip("diffusers")
    warnings.filterwarnings("ignore")
    model = peer_model()
    make = lambda: diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                           beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
                                           steps_offset=0, timestep_spacing="leading")
    ours = lambda x: DDIMSampler(model, SCHED).sample(x, steps=steps, eta=eta, generator=torch.Generator().manual_seed(7))

    # As configured, diffusers keeps its schedule in float32: agreement at float32 precision.
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    peer = make()
    peer.set_timesteps(steps)
    torch.testing.assert_close(ours(x_T), _run_diffusers(peer, model, x_T, torch.Generator().manual_seed(7), eta=eta),
                               atol=2e-3, rtol=0)
    # Given the same float64 alphas, the two updates agree to float64 roundoff: the formulas are the same.
    x_T = x_T.double()
    peer = make()
    peer.alphas_cumprod, peer.final_alpha_cumprod = SCHED.alphas_cumprod.clone(), torch.tensor(1.0, dtype=torch.float64)
    peer.set_timesteps(steps)
    torch.testing.assert_close(ours(x_T), _run_diffusers(peer, model, x_T, torch.Generator().manual_seed(7), eta=eta),
                               atol=1e-10, rtol=0)


def test_large_variance_matches_diffusers_ddpm_fixed_large():
    diffusers = pytest.importorskip("diffusers")
    model = peer_model()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    peer = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   variance_type="fixed_large", clip_sample=True)
    peer.alphas_cumprod, peer.one = SCHED.alphas_cumprod.clone(), torch.tensor(1.0, dtype=torch.float64)
    peer.set_timesteps(timesteps=timesteps(1000, 10).flip(0).tolist())
    expected = _run_diffusers(peer, model, x_T, torch.Generator().manual_seed(7))
    out = DDIMSampler(model, SCHED).sample(x_T, steps=10, variance="large", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


# --- inversion -----------------------------------------------------------------------------------------
def test_invert_evaluates_tau1_first_and_sample_walks_back():
    model = Oracle(torch.zeros(1, 2))
    sampler = DDIMSampler(model, SCHED)
    sampler.invert(torch.randn(1, 2, dtype=torch.float64), steps=5)
    assert model.calls == [0, 0, 200, 400, 600]
    model.calls.clear()
    sampler.sample(torch.randn(1, 2, dtype=torch.float64), steps=5)
    assert model.calls == [800, 600, 400, 200, 0]


def test_reconstruction_error_shrinks_with_steps():
    model = GaussianEps(torch.tensor([0.3, -0.2, 0.1, 0.0]), torch.tensor([0.5, 0.3, 0.8, 0.2]))
    x0 = model.mu + model.s * torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = DDIMSampler(model, SCHED)
    err = {S: ((sampler.sample(sampler.invert(x0, S), S) - x0) ** 2).mean().item() for S in (10, 50, 200)}
    # Euler's error is O(1/S), so the MSE falls about as 1/S^2 (the shape of the paper's Table 2).
    assert err[10] > 8 * err[50] > 8 * 8 * err[200], err
    assert err[200] < 1e-3


def test_invert_is_the_same_step_run_backwards():
    # With the true noise, encoding is exact: x_T = sqrt(a) x0 + sqrt(1 - a) eps for any starting eps.
    x0 = torch.randn(2, 3, dtype=torch.float64)
    noise = torch.randn(2, 3, dtype=torch.float64)

    def fixed_noise(x, t):
        return noise
    z = DDIMSampler(fixed_noise, SCHED).invert(x0, steps=10)
    a = SCHED.alphas_cumprod[900]
    torch.testing.assert_close(z, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-12, rtol=0)


# --- randomness ----------------------------------------------------------------------------------------
def _noisy_model():
    return GaussianEps(torch.tensor(0.1), torch.tensor(0.6))


def test_same_seed_same_sample_and_different_seed_differs():
    x = torch.randn(3, 5)
    run = lambda seed: DDIMSampler(_noisy_model(), SCHED).sample(x, steps=10, eta=1.0,
                                                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_eta0_ignores_the_generator():
    x = torch.randn(3, 5)
    a = DDIMSampler(_noisy_model(), SCHED).sample(x, steps=10, generator=torch.Generator().manual_seed(1))
    b = DDIMSampler(_noisy_model(), SCHED).sample(x, steps=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_per_sample_generators_make_samples_independent_of_the_batch():
    x = torch.randn(4, 5)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    batch = DDIMSampler(_noisy_model(), SCHED).sample(x, steps=10, eta=0.5, generator=gens([10, 11, 12, 13]))
    alone = DDIMSampler(_noisy_model(), SCHED).sample(x[2:3], steps=10, eta=0.5, generator=gens([12]))
    torch.testing.assert_close(batch[2:3], alone, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        DDIMSampler(_noisy_model(), SCHED).sample(x, steps=10, eta=0.5, generator=gens([1, 2]))


# --- loop behaviour ----------------------------------------------------------------------------------
def test_iter_sample_yields_every_step_and_ends_at_sample():
    x = torch.randn(2, 3)
    sampler = DDIMSampler(_noisy_model(), SCHED)
    steps = list(sampler.iter_sample(x, steps=7))
    assert [t for t, _, _ in steps] == timesteps(1000, 7).flip(0).tolist()
    torch.testing.assert_close(steps[-1][1], sampler.sample(x, steps=7), atol=0, rtol=0)
    torch.testing.assert_close(steps[-1][1], steps[-1][2])      # eta = 0: the last step returns x0_pred


def test_repeated_quad_timesteps_cost_no_network_call():
    taus = timesteps(1000, 100, "quad")
    model = Oracle(torch.zeros(1, 2, dtype=torch.float64))
    DDIMSampler(model, SCHED).sample(torch.randn(1, 2, dtype=torch.float64), steps=100, skip="quad")
    assert len(model.calls) == len(torch.unique(taus)) < 100
    assert model.calls == sorted(set(model.calls), reverse=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_follows_input_dtype(dtype):
    out = DDIMSampler(_noisy_model(), SCHED).sample(torch.randn(2, 3, dtype=dtype), steps=5, eta=1.0)
    assert out.dtype == dtype


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_predictions_recover_x0_exactly(prediction):
    x0 = torch.randn(3, 4, dtype=torch.float64)

    def model(x, t):
        a = _a(t, x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return x0 if prediction == "x0" else a.sqrt() * eps - (1 - a).sqrt() * x0
    x_T = SCHED.q_sample(x0, torch.full((3,), 980), torch.randn_like(x0))
    torch.testing.assert_close(DDIMSampler(model, SCHED, prediction).sample(x_T, steps=20), x0, atol=1e-10, rtol=0)


def test_v_prediction_runs_on_zero_terminal_snr():
    betas = SCHED.betas.clone()
    betas[-1] = 1.0
    zsnr = NoiseSchedule(betas)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        DDIMSampler(_noisy_model(), zsnr, "eps")
    out = DDIMSampler(lambda x, t: torch.zeros_like(x), zsnr, "v").sample(torch.randn(2, 3), steps=10, skip="trailing")
    assert torch.isfinite(out).all()


def test_clip_denoised_keeps_x0_pred_in_range():
    model = lambda x, t: -3 * x     # noqa: E731  (a wild model whose x0_pred leaves [-1, 1])
    outs = list(DDIMSampler(model, SCHED).iter_sample(torch.randn(4, 3), steps=10, clip_denoised=True))
    assert all(x0.abs().max() <= 1 for _, _, x0 in outs)


# --- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, r"steps must be an integer >= 1"),
    ({"steps": 1001}, r"steps must be an integer in \[1, T=1000\]"),
    ({"eta": -0.1}, r"eta must be a finite number >= 0"),
    ({"eta": float("nan")}, r"eta must be a finite number >= 0"),
    ({"eta": 2.0}, r"eta=2.0 makes 1 - a_s - sigma\^2 negative"),
    ({"skip": "cubic"}, r"skip must be one of"),
    ({"skip": [5, 3]}, r"skip: an explicit sequence must be ascending"),
    ({"variance": "small"}, r"variance must be one of \('eta', 'large'\)"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDIMSampler(_noisy_model(), SCHED).sample(torch.randn(2, 3), **kwargs)


def test_unknown_prediction():
    with pytest.raises(ValueError, match=r"prediction must be one of \('eps', 'x0', 'v'\)"):
        DDIMSampler(_noisy_model(), SCHED, prediction="score")


def test_wrong_output_shape():
    with pytest.raises(ValueError, match=r"model output has shape \(2, 6\) but x has \(2, 3\)"):
        DDIMSampler(lambda x, t: torch.cat([x, x], 1), SCHED).sample(torch.randn(2, 3), steps=5)


def test_non_finite_values_name_the_step():
    def model(x, t):
        return x * (float("inf") if t[0] == 400 else 0.1)
    with pytest.raises(ValueError, match=r"non-finite values appeared at step 3 of 5 \(t=400\)"):
        DDIMSampler(model, SCHED).sample(torch.randn(2, 3), steps=5)


# --- slerp ---------------------------------------------------------------------------------------------
def test_slerp_endpoints_are_exact():
    z0, z1 = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    assert torch.equal(slerp(z0, z1, 0.0), z0)
    assert torch.equal(slerp(z0, z1, 1.0), z1)


def test_slerp_midpoint_of_orthogonal_unit_vectors():
    z0, z1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(z0, z1, 0.5), (z0 + z1) / math.sqrt(2))
    # Along the arc the norm stays 1; linear interpolation would shrink it.
    for a in torch.linspace(0, 1, 7):
        assert slerp(z0, z1, a).norm().item() == pytest.approx(1.0, abs=1e-6)


def test_slerp_falls_back_to_lerp_when_parallel_and_takes_per_sample_alpha():
    z0 = torch.randn(2, 5)
    z1 = 2 * z0
    torch.testing.assert_close(slerp(z0, z1, 0.25), 0.75 * z0 + 0.25 * z1)
    w0, w1 = torch.randn(2, 5), torch.randn(2, 5)
    both = slerp(w0, w1, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(both, torch.stack([w0[0], w1[1]]))
    with pytest.raises(ValueError, match="same shape"):
        slerp(w0, w1[:1], 0.5)
