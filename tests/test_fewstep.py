"""Few-step sampling (issue 22), proven on closed forms and against peers: the optimized (DMN) and GITS grids on
the Gaussian flow; the stochastic solvers' moments; the guidance toolbox, zero terminal SNR and
DPM-Solver++(2M) SDE against diffusers; the limits (an empty guidance interval, rescale 0, network calls)."""

import math
import warnings

import pytest
import torch
from peer_models import peer_model

from ddim import DDIMSampler, NoiseSchedule, timesteps
from ddim.errors import DDIMError
from ddim.sampling import PLMS, Denoiser, WalkOptions, make_solver
from ddim.sampling.denoiser import dynamic_threshold, rescale_guided
from ddim.sampling.gits import fit_gits
from ddim.sampling.stochastic import Churn, Restart

SCHED = NoiseSchedule.linear()
AC = SCHED.alphas_cumprod
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
SD = torch.tensor([0.5, 0.3, 0.8, 0.05], dtype=torch.float64)


class Gaussian:
    """Data N(MU, diag(SD^2)): the exact eps (or v) at every level, and the probability-flow ODE's solution."""

    def __init__(self, alphas=AC, prediction="eps"):
        self.alphas, self.prediction = alphas, prediction

    def __call__(self, x, t):
        a = self.alphas[t.cpu()].to(x.dtype).view(-1, 1)
        v = a * SD**2 + 1 - a
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / v
        if self.prediction == "eps":
            return eps
        x0 = MU + a.sqrt() * SD**2 / v * (x - a.sqrt() * MU)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def exact(self, x_T, a_T):
        """The ODE's end at alpha = 1 from x_T at level a_T."""
        return MU + (SD**2 / (a_T * SD**2 + 1 - a_T)).sqrt() * (x_T - math.sqrt(a_T) * MU)


def _noise(n, seed):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- optimized grids on the Gaussian flow ------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["dpm++2m", "unipc"])
def test_optimized_and_gits_grids_against_the_exact_flow(solver, one_thread, capsys):
    model, x_T, x_fit = Gaussian(), _noise(512, 0), _noise(128, 1)
    sampler, exact = DDIMSampler(model, SCHED), Gaussian().exact(_noise(512, 0), AC[-1].item())
    rows = []
    for N in range(5, 11):
        err = {}
        for skip in ("trailing", "logsnr", "karras", "optimized"):
            err[skip] = (sampler.sample(x_T, N, skip=skip, solver=solver) - exact).abs().mean().item()
        grid = fit_gits(sampler, N, solver, x_T=x_fit, candidates=12, teacher=150, refine=3)
        assert len(grid) == N and grid[-1] == SCHED.T - 1 and grid == sorted(set(grid))
        err["gits"] = (sampler.sample(x_T, N, skip=grid, solver=solver) - exact).abs().mean().item()
        rows.append((N, err))
        # The fitted grid beats every hand-made one; the model-free one is a valid grid of N timesteps.
        assert err["gits"] < min(err["trailing"], err["logsnr"], err["karras"]), (N, err)
        assert len(timesteps(SCHED.T, N, "optimized", AC, order=2)) == N
    with capsys.disabled():                                   # the table the issue asks for (pytest -s shows it)
        print(f"\n{solver}: mean |error| at alpha = 1 against the exact flow")
        for N, err in rows:
            print(f"  N={N:2d} " + " ".join(f"{k}={v:.2e}" for k, v in err.items()))


def test_the_optimized_grid_is_logsnr_for_a_first_order_solver_and_moves_for_higher_orders():
    # With the error model sigma / sqrt(a) = e^-lambda, DMN's first-order bound is sum_s (e^(h_s) - 1): convex,
    # least at equal steps in lambda, so the optimized first-order grid is the logsnr grid.
    for N in (8, 10):
        assert timesteps(SCHED.T, N, "optimized", AC, order=1).tolist() == timesteps(SCHED.T, N, "logsnr", AC).tolist()
        assert timesteps(SCHED.T, N, "optimized", AC, order=2).tolist() != timesteps(SCHED.T, N, "logsnr", AC).tolist()
    with pytest.raises(DDIMError, match="order must be 1, 2 or 3"):
        timesteps(SCHED.T, 8, "optimized", AC, order=4)


def test_explicit_timesteps_are_taken_ascending_or_as_diffusers_descending():
    sampler, x_T = DDIMSampler(Gaussian(), SCHED), _noise(4, 0)
    assert sampler.taus(3, [999, 500, 0]).tolist() == [0, 500, 999]
    assert sampler.taus(3, torch.tensor([999, 500, 0])).tolist() == [0, 500, 999]
    assert torch.equal(sampler.sample(x_T, 3, skip=[999, 500, 0]), sampler.sample(x_T, 3, skip=[0, 500, 999]))
    with pytest.raises(DDIMError, match="ascending"):
        sampler.taus(3, [500, 999, 0])


# --- stochastic samplers: moments of the closed form -----------------------------------------------------------
@pytest.mark.parametrize("solver, steps", [("dpm++2m-sde", 50), ("churn", 50), ("restart", 30)])
def test_stochastic_samplers_draw_the_gaussian(solver, steps, one_thread):
    n = 4000
    sampler = DDIMSampler(Gaussian(), SCHED)
    gens = [torch.Generator().manual_seed(10_000 + i) for i in range(n)]      # per-sample noise
    out = sampler.sample(_noise(n, 0), steps, skip="logsnr", solver=solver, generator=gens)
    mean_z = (out.mean(0) - MU) / (SD / math.sqrt(n))
    var_z = (out.var(0) - SD**2) / (SD**2 * math.sqrt(2 / (n - 1)))
    cov = torch.cov(out.T)
    off = cov - torch.diag(torch.diag(cov))
    off_z = off / (torch.outer(SD, SD) / math.sqrt(n))
    assert mean_z.abs().max() < 5 and var_z.abs().max() < 5 and off_z.abs().max() < 5, (mean_z, var_z, off_z)


def test_stochastic_samples_do_not_depend_on_their_batch():
    sampler = DDIMSampler(Gaussian(), SCHED)
    x = _noise(3, 0)
    for solver in ("dpm++2m-sde", "churn", "restart"):
        gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]   # noqa: E731
        full = sampler.sample(x, 10, skip="logsnr", solver=solver, generator=gens())
        one = sampler.sample(x[1:2], 10, skip="logsnr", solver=solver, generator=gens()[1:2])
        torch.testing.assert_close(full[1:2], one, rtol=0, atol=1e-12)


# --- parity with diffusers -------------------------------------------------------------------------------------
def _diffusers():
    diffusers = pytest.importorskip("diffusers")
    warnings.filterwarnings("ignore")
    return diffusers


def test_dynamic_thresholding_matches_ddim_scheduler_thresholding():
    diffusers = _diffusers()
    peer = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                   set_alpha_to_one=True, timestep_spacing="trailing", thresholding=True,
                                   dynamic_thresholding_ratio=0.995, sample_max_value=1.5)
    peer.alphas_cumprod = AC.clone()
    peer.set_timesteps(10)
    model = peer_model()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    x = x_T.clone()
    for t in peer.timesteps:
        x = peer.step(model(x, t.expand(len(x))), t, x, use_clipped_model_output=True).prev_sample
    ours = DDIMSampler(model, SCHED).sample(x_T, 10, skip=peer.timesteps.tolist(), clip_denoised="dynamic",
                                           threshold_max=1.5)
    assert ((ours - x).norm() / x.norm()).item() < 1e-6
    # thresholding was active: plain clipping gives another result
    clipped = DDIMSampler(model, SCHED).sample(x_T, 10, skip=peer.timesteps.tolist(), clip_denoised=True)
    assert ((clipped - x).norm() / x.norm()).item() > 1e-3
    # the function itself: s at least 1, so data inside [-1, 1] is untouched
    small = torch.rand(3, 16, dtype=torch.float64) * 2 - 1
    assert torch.equal(dynamic_threshold(small), small)


def test_zero_terminal_snr_matches_diffusers():
    _diffusers()
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
    for base in (NoiseSchedule.linear(), NoiseSchedule.quadratic(), NoiseSchedule.cosine()):
        ours = base.rescale_zero_terminal_snr()
        theirs = rescale_zero_terminal_snr(base.betas.clone())
        assert (ours.betas - theirs).abs().max().item() < 1e-12
        assert ours.alphas_cumprod[-1].item() == 0 and ours.betas[-1].item() == 1


def test_guidance_rescale_matches_rescale_noise_cfg():
    _diffusers()
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
    g = torch.Generator().manual_seed(0)
    cond, uncond = (torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    guided = uncond + 7.5 * (cond - uncond)
    for phi in (0.0, 0.3, 0.7, 1.0):
        torch.testing.assert_close(rescale_guided(guided, cond, phi), rescale_noise_cfg(guided, cond, phi),
                                   atol=1e-6, rtol=0)


def test_dpm_solver_pp_2m_sde_matches_diffusers_given_the_same_noise():
    diffusers = _diffusers()
    for steps in (8, 20):
        peer = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                                     algorithm_type="sde-dpmsolver++", solver_order=2,
                                                     timestep_spacing="trailing", final_sigmas_type="zero",
                                                     lower_order_final=True)
        peer.set_timesteps(steps)
        model = peer_model()
        x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        g = torch.Generator().manual_seed(7)
        noises = [torch.randn(x_T.shape, generator=g, dtype=torch.float64) for _ in range(steps)]
        x = x_T.clone()
        for t, z in zip(peer.timesteps, noises):
            x = peer.step(model(x, t.expand(len(x))), t, x, variance_noise=z).prev_sample
        ours = DDIMSampler(model, SCHED).sample(x_T, steps, skip=peer.timesteps.tolist(), solver="dpm++2m-sde",
                                               generator=torch.Generator().manual_seed(7))
        assert ((ours - x).norm() / x.norm()).item() < 1e-6, steps           # diffusers steps in float32


def test_ipndm_is_plms_with_euler_warmup_and_the_diff_sampler_update():
    # diff-sampler's iPNDM in EDM coordinates: x~ = x / sqrt(a), sigma = sqrt((1 - a) / a), d = eps, and
    # x~_next = x~ + (sigma_next - sigma) * Adams-Bashforth(d history), order min(4, step + 1).
    model, x_T = Gaussian(), _noise(16, 0)
    taus = timesteps(SCHED.T, 8, "logsnr", AC).tolist()
    ours = [x for _, x, _ in DDIMSampler(model, SCHED).iter_sample(x_T, 8, skip=taus, solver="ipndm")]
    ab = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    levels = [AC[t].item() for t in reversed(taus)] + [1.0]
    x, hist = x_T.clone(), []
    for i, t in enumerate(reversed(taus)):
        a, a_next = levels[i], levels[i + 1]
        d = model(x, torch.full((len(x),), t))
        hist.insert(0, d)
        k = min(4, len(hist)) if a_next < 1 else 1
        comb = sum(w * h for w, h in zip(ab[k], hist))
        sig = lambda a: math.sqrt((1 - a) / a)                                # noqa: E731
        x = math.sqrt(a_next) * (x / math.sqrt(a) + (sig(a_next) - sig(a)) * comb)
        torch.testing.assert_close(ours[i], x, atol=1e-12, rtol=0)
    assert isinstance(make_solver("ipndm"), PLMS) and make_solver("ipndm").warmup == "euler"


# --- zero terminal SNR sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["dpm++2m", "unipc"])     # DDIM's first-order error shows at 50 steps
def test_sampling_from_alpha_T_zero_with_a_v_network_on_trailing_grids(solver, one_thread):
    zsnr = NoiseSchedule.linear().rescale_zero_terminal_snr()
    with pytest.raises(DDIMError, match="zero terminal SNR"):
        DDIMSampler(Gaussian(zsnr.alphas_cumprod), zsnr, prediction="eps")
    sampler = DDIMSampler(Gaussian(zsnr.alphas_cumprod, "v"), zsnr, prediction="v")
    n = 4000
    taus = sampler.taus(50, "trailing")
    assert taus[-1].item() == zsnr.T - 1
    # The state at tau_1 against the marginal there, N(sqrt(a) mu, a s^2 + 1 - a): the walk from pure noise is
    # right. (The last jump to alpha = 1 returns the posterior mean, narrower than the data where s is small.)
    out = [x for _, x, _ in sampler.iter_sample(_noise(n, 3), 50, skip="trailing", solver=solver)][-2]
    a = zsnr.alphas_cumprod[taus[0]].item()
    mean, sd = math.sqrt(a) * MU, (a * SD**2 + 1 - a).sqrt()
    mean_z = (out.mean(0) - mean) / (sd / math.sqrt(n))
    var_z = (out.var(0) - sd**2) / (sd**2 * math.sqrt(2 / (n - 1)))
    assert mean_z.abs().max() < 5 and var_z.abs().max() < 5, (mean_z, var_z)


# --- limits and network calls ------------------------------------------------------------------------------------
class Conditional:
    """A class-conditional toy network that records the batch size of each call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, y=None):
        self.batches.append(len(x))
        scale = 1 + 0.1 * y.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(x * scale) + t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) / 1000


def test_an_interval_that_covers_no_level_is_guidance_1_with_calls_of_B():
    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    m1, m2 = Conditional(), Conditional()
    plain = DDIMSampler(m1, SCHED).sample(x_T, 10, y=y, guidance=1.0, solver="dpm++2m")
    empty = DDIMSampler(m2, SCHED).sample(x_T, 10, y=y, guidance=4.0, guidance_interval=(2000, 3000),
                                          solver="dpm++2m")
    assert torch.equal(plain, empty) and m2.batches == [3] * 10
    m3 = Conditional()
    sampler = DDIMSampler(m3, SCHED)
    sampler.sample(x_T, 10, y=y, guidance=4.0, guidance_interval=(300, 700), skip="trailing")
    taus = sampler.taus(10, "trailing").tolist()[::-1]
    assert m3.batches == [6 if 300 <= t <= 700 else 3 for t in taus]
    assert sampler.last_nfe == 10


def test_guidance_rescale_0_is_bit_equal_and_rescale_changes_guided_samples():
    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    sampler = DDIMSampler(Conditional(), SCHED)
    base = sampler.sample(x_T, 10, y=y, guidance=3.0)
    assert torch.equal(base, sampler.sample(x_T, 10, y=y, guidance=3.0, guidance_rescale=0.0))
    assert not torch.equal(base, sampler.sample(x_T, 10, y=y, guidance=3.0, guidance_rescale=0.7))
    # and it works through inversion
    z = sampler.invert(base, 10, y=y, guidance=3.0, guidance_rescale=0.7, guidance_interval=(0, 500))
    assert torch.isfinite(z).all()


class Counting:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("solver", ["ipndm", "dpm++2m-sde", "churn", "restart"])
def test_each_new_solver_counts_its_network_calls(solver):
    model = Counting(Gaussian())
    sampler = DDIMSampler(model, SCHED)
    steps = 12
    sampler.sample(_noise(2, 0), steps, skip="logsnr", solver=solver, generator=torch.Generator().manual_seed(0))
    S = len(sampler.taus(steps, "logsnr"))
    expected = {"ipndm": S, "dpm++2m-sde": S, "churn": 2 * S - 1}
    if solver == "restart":
        run = Restart().bind(AC.tolist()).fresh(sampler.sample_plan(steps, "logsnr"))
        expected["restart"] = 2 * S - 1 + 2 * run.k * len(run._inner)
        assert run._inner                                     # the restart interval lies inside this plan
    assert model.calls == sampler.last_nfe == expected[solver]


def test_bad_options_are_one_line_errors_naming_the_keyword():
    sampler = DDIMSampler(Gaussian(), SCHED)
    x = _noise(2, 0)
    for kw, match in [(dict(guidance_interval=(5, 1)), "guidance_interval"),
                      (dict(guidance_rescale=1.5), "guidance_rescale"),
                      (dict(clip_denoised="dynamic", threshold_ratio=2), "threshold_ratio"),
                      (dict(clip_denoised="dynamic", threshold_max=0.5), "threshold_max"),
                      (dict(clip_denoised="percentile"), "clip_denoised"),
                      (dict(solver="dpm++2m-sde", eta=0.5), "eta")]:
        with pytest.raises(DDIMError, match=match):
            sampler.iter_sample(x, 5, **kw)
    with pytest.raises(DDIMError, match="s_churn"):
        Churn(s_churn=-1)
    with pytest.raises(DDIMError, match="restart"):
        Restart(restart=(0.3, 0.1))
    with pytest.raises(DDIMError, match="deterministic"):
        fit_gits(sampler, 5, "churn", x_T=x)
    with pytest.raises(DDIMError, match="y"):
        Denoiser(Gaussian(), SCHED, guidance=2.0, guidance_interval=(0, 10))


# --- the command line ---------------------------------------------------------------------------------------------
def test_schedule_command_writes_a_grid_that_sample_takes_as_skip(tmp_path, capsys):
    import json

    from ddim.commands import main
    steps = tmp_path / "steps.json"
    assert main(["schedule", "--nfe", "3", "--n", "4", "--candidates", "4", "--teacher", "8", "--refine", "0",
                 "--out", str(steps)]) == 0
    taus = json.loads(steps.read_text())["timesteps"]
    assert len(taus) == 3 and taus == sorted(taus, reverse=True) and taus[0] == 999
    out = tmp_path / "s"
    assert main(["sample", "--n", "2", "--solver", "dpm++2m", "--skip", str(steps), "--out", str(out), "--quiet",
                 "--clip-denoised", "dynamic", "--threshold-max", "1.5"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["skip"] == sorted(taus) and run["steps"] == 3 and run["clip_denoised"] == "dynamic"
    assert main(["sample", "--n", "2", "--guidance-interval", "5", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "guidance_interval" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_zero_terminal_snr_training_config_needs_v_or_x0():
    from ddim.config import config_from_dict
    with pytest.raises(DDIMError, match="zero_terminal_snr"):
        config_from_dict({"diffusion": {"zero_terminal_snr": True, "prediction": "eps"}}).validate()
    cfg = config_from_dict({"diffusion": {"zero_terminal_snr": True, "prediction": "v"}}).validate()
    assert cfg.diffusion.zero_terminal_snr


# --- AFS, the analytic first step (Zhou et al. 2024) -------------------------------------------------------------
DETERMINISTIC = ["ddim", "plms", "dpm++2m", "dpm++3m", "unipc", "bdia", "edict", "ipndm"]


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_afs_makes_one_network_call_fewer(solver):
    model, x_T = Counting(Gaussian()), _noise(3, 0)
    sampler = DDIMSampler(model, SCHED)
    sampler.sample(x_T, 6, solver=solver, skip="trailing")
    plain = model.calls
    assert sampler.last_nfe == plain
    model.calls = 0
    out = sampler.sample(x_T, 6, solver=solver, skip="trailing", afs=True)
    assert model.calls == sampler.last_nfe == plain - 1 and torch.isfinite(out).all()


def test_afs_first_step_is_the_analytic_estimate_on_the_gaussian_flow():
    # AFS claims eps(x_T) = x_T: exact for pure noise, off by O(sqrt(a_T)) at the schedule's last level.
    from ddim.sampling.steps import afs_eps_x0
    sampler, x_T = DDIMSampler(Gaussian(), SCHED), _noise(256, 4)
    a_T = AC[-1].item()
    (t, x_s, x0_pred), *_ = list(sampler.iter_sample(x_T, 5, skip="trailing", afs=True))
    a_s = AC[sampler.taus(5, "trailing")[-2]].item()
    eps_afs, x0_afs = afs_eps_x0(x_T, a_T)
    assert torch.equal(eps_afs, x_T)                                          # the estimate it claims
    torch.testing.assert_close(math.sqrt(a_T) * x0_afs + math.sqrt(1 - a_T) * eps_afs, x_T)   # agrees with x_T
    torch.testing.assert_close(x0_pred, x0_afs, atol=0, rtol=0)
    torch.testing.assert_close(x_s, math.sqrt(a_s) * x0_afs + math.sqrt(1 - a_s) * x_T)      # eq. 12 with eps = x_T
    eps_true = Gaussian()(x_T, torch.full((256,), SCHED.T - 1))               # the closed form's exact eps
    bound = 2 * math.sqrt(a_T) * MU.abs().max() + 2 * a_T * x_T.abs().max()
    assert (eps_true - x_T).abs().max() <= bound
    # at alpha_T = 0 (zero terminal SNR) the estimate is exact and x0_pred is 0, not 0 / 0
    eps0, x00 = afs_eps_x0(x_T, 0.0)
    assert torch.equal(eps0, x_T) and torch.equal(x00, torch.zeros_like(x_T))


def test_afs_error_at_a_given_number_of_calls(one_thread, capsys):
    # Reported, not required to win: AFS spends the saved call on one more step.
    model, x_T = Gaussian(), _noise(512, 0)
    sampler, exact = DDIMSampler(model, SCHED), Gaussian().exact(x_T, AC[-1].item())
    rows = []
    for solver in ("ddim", "dpm++2m", "ipndm", "unipc"):
        for calls in (3, 5, 8):
            plain = (sampler.sample(x_T, calls, skip="logsnr", solver=solver) - exact).abs().mean().item()
            assert sampler.last_nfe == calls
            afs = (sampler.sample(x_T, calls + 1, skip="logsnr", solver=solver, afs=True) - exact).abs().mean().item()
            assert sampler.last_nfe == calls
            rows.append((solver, calls, plain, afs))
            assert math.isfinite(afs) and afs < 1.0               # a sample, not a divergence
    with capsys.disabled():
        print("\nmean |error| at alpha = 1 vs the exact flow, logsnr grid, at the same network calls")
        for solver, calls, plain, afs in rows:
            print(f"  {solver:8s} calls={calls}: plain {plain:.2e}  afs {afs:.2e}")


def test_afs_is_refused_where_its_estimate_does_not_hold():
    sampler, x = DDIMSampler(Gaussian(), SCHED), _noise(2, 0)
    with pytest.raises(DDIMError, match="afs=True: .*inversion"):
        sampler.run(x, WalkOptions(5, afs=True), invert=True)
    with pytest.raises(DDIMError, match="afs=True: SDEdit"):
        sampler.sdedit(x, 0.5, 10, afs=True)
    with pytest.raises(DDIMError, match="afs must be True or False"):
        sampler.sample(x, 5, afs=1)
    assert torch.equal(sampler.sdedit(x, 1.0, 4, generator=torch.Generator().manual_seed(0), afs=True),
                       sampler.sample(torch.randn(2, 4, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64), 4, afs=True))


# --- the stochastic solvers' settings by name (solver_options, the command-line flags) ---------------------------
def test_solver_options_build_the_same_solver_as_an_instance():
    sampler, x = DDIMSampler(Gaussian(), SCHED), _noise(4, 0)
    gen = lambda: [torch.Generator().manual_seed(i) for i in range(4)]          # noqa: E731
    for name, settings, instance in (("restart", dict(restart=(0.1, 1.0), k=1, inner=2),
                                      Restart((0.1, 1.0), k=1, inner=2)),
                                     ("churn", dict(s_churn=10.0, s_tmin=0.1, s_tmax=20.0, s_noise=1.003),
                                      Churn(10.0, 0.1, 20.0, 1.003))):
        by_name = sampler.sample(x, 8, solver=name, solver_options=settings, generator=gen())
        assert torch.equal(by_name, sampler.sample(x, 8, solver=instance, generator=gen()))
        assert not torch.equal(by_name, sampler.sample(x, 8, solver=name, generator=gen()))   # defaults differ
    assert WalkOptions(solver="restart", solver_options={"restart": [0.1, 1]}).solver_options == (("restart", (0.1, 1)),)


@pytest.mark.parametrize("kw, match", [
    (dict(solver="ddim", solver_options={"k": 1}), "solver 'ddim' has no settings by name"),
    (dict(solver="churn", solver_options={"k": 1}), "'k' is not a setting of solver 'churn'"),
    (dict(solver="restart", solver_options={"k": 0}), "k must be a positive integer"),
    (dict(solver="restart", solver_options={"restart": (1.0, 0.1)}), "restart must be a pair"),
    (dict(solver="churn", solver_options={"s_churn": -1}), "s_churn must be"),
    (dict(solver=Churn(), solver_options={"s_churn": 1}), "a Solver instance carries its own"),
    (dict(solver="churn", solver_options=[("s_churn", 1, 2)]), "solver_options must be a dict"),
])
def test_bad_solver_options_are_one_line_errors(kw, match):
    with pytest.raises(DDIMError, match=match):
        DDIMSampler(Gaussian(), SCHED).sample(_noise(2, 0), 5, **kw)


def test_the_stochastic_solvers_flags_reach_the_solver_and_are_refused_for_another(tmp_path, capsys):
    from ddim.commands import build_parser, main
    from ddim.commands.common import sample_config
    parse = lambda *a: build_parser().parse_args(["sample", "--steps", "10", "--skip", "uniform", *a])  # noqa: E731
    cfg = sample_config(parse("--solver", "restart", "--restart", "0.1", "1", "--restart-k", "1",
                              "--restart-inner", "2", "--afs"))
    assert dict(cfg.solver_options) == {"restart": (0.1, 1.0), "k": 1, "inner": 2} and cfg.afs
    assert cfg.manifest()["solver_options"] == {"restart": [0.1, 1.0], "k": 1, "inner": 2}
    cfg = sample_config(parse("--solver", "churn", "--s-churn", "5", "--s-tmin", "0.1", "--s-tmax", "9",
                              "--s-noise", "1.003"))
    assert dict(cfg.solver_options) == {"s_churn": 5.0, "s_tmin": 0.1, "s_tmax": 9.0, "s_noise": 1.003}
    plain = sample_config(parse())
    assert plain.solver_options is None and not plain.afs
    assert "solver_options" not in plain.manifest() and "afs" not in plain.manifest()   # earlier runs resume
    for argv, flag in ((["--s-churn", "5"], "--s-churn: a setting of --solver churn, not of --solver ddim"),
                       (["--solver", "churn", "--restart-k", "2"], "--restart-k: a setting of --solver restart"),
                       (["--solver", "dpm++2m", "--restart", "0.1", "1"], "--restart: a setting of --solver restart")):
        out = tmp_path / flag[2:8]
        assert main(["sample", "--n", "1", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and not out.exists()
    assert main(["sample", "--n", "1", "--solver", "restart", "--restart-k", "0", "--out", str(tmp_path / "k")]) == 2
    assert "--restart-k 0: k must be a positive integer" in capsys.readouterr().err


def test_solver_table_rows_parse_to_config_changes():
    from ddim.evaluation.table_solvers import parse_variant
    assert parse_variant("dpm++2m") == {"solver": "dpm++2m"}
    assert parse_variant("dpm++2m@optimized,afs,gi=100:600") == {
        "solver": "dpm++2m", "skip": "optimized", "afs": True, "guidance_interval": (100.0, 600.0)}
    assert parse_variant("restart,restart=0.1:1,k=1,inner=2") == {
        "solver": "restart", "solver_options": {"restart": (0.1, 1.0), "k": 1, "inner": 2}}
    assert parse_variant("churn@logsnr,s_churn=10") == {"solver": "churn", "skip": "logsnr",
                                                        "solver_options": {"s_churn": 10.0}}
    for bad, match in (("ddpm", "'ddpm' is not one of"), ("ddim@cubic", "the grid 'cubic'"),
                       ("ddim,k=1", "'k=1' is not afs"), ("restart,k=x", "'k=x' is not afs")):
        with pytest.raises(DDIMError, match=match):
            parse_variant(bad)
