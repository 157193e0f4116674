"""The solvers after DDIM, proven: convergence order against the closed-form Gaussian flow, parity with diffusers'
schedulers on the same grid, exactness on a point mass, inversion round trips; and the diffusers options
(final_alpha, steps_offset, clipping that keeps eps) against diffusers' DDIMScheduler."""

import math
import warnings
from collections import deque

import pytest
import torch
from peer_models import peer_model

from ddim import DDIMSampler, NoiseSchedule, timesteps
from ddim.sampling import PLMS, Denoiser, DPMSolverPP, Step, UniPC, make_solver, walk
from ddim.sampling.multistep import exp_integral
from ddim.sampling.unipc import unipc_rhos

SCHED = NoiseSchedule.linear()




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
    model = peer_model()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    peer = _float64(_ddim_peer(set_alpha_to_one=False, steps_offset=1), final=SCHED.alphas_cumprod[0].item())
    peer.set_timesteps(steps)
    sampler = DDIMSampler(model, SCHED)
    assert sampler.taus(steps, "uniform", steps_offset=1).tolist() == peer.timesteps.flip(0).tolist()
    ours = sampler.sample(x_T, steps, final_alpha="alpha_0", steps_offset=1)
    torch.testing.assert_close(ours, _run_diffusers(peer, model, x_T)[-1], atol=1e-10, rtol=0)
    assert sampler.sample_plan(steps, final_alpha="alpha_0", steps_offset=1)[-1].a_s == SCHED.alphas_cumprod[0].item()


def test_final_alpha_0_drops_the_identity_step_when_tau1_is_0():
    sampler = DDIMSampler(peer_model(), SCHED)
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
    sampler = DDIMSampler(peer_model(), SCHED)
    with pytest.raises(ValueError, match="past the last timestep 999"):
        sampler.taus(10, "trailing", steps_offset=1)
    with pytest.raises(ValueError, match="explicit skip list is used as given"):
        sampler.taus(3, [0, 10, 20], steps_offset=1)
    with pytest.raises(ValueError, match="steps_offset must be an integer >= 0"):
        sampler.taus(3, steps_offset=-1)


# --- the closed-form truth -------------------------------------------------------------------------------
# A fine schedule (the linear one of Ho et al. on 100x finer steps: integer timesteps are nearly continuous)
# and data N(mu, diag(s^2)), for which E[eps | x_t] and the probability-flow ODE's solution are known.
FINE = NoiseSchedule.linear(100_000, 1e-6, 2e-4)
FAC = FINE.alphas_cumprod
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
SD = torch.tensor([0.5, 0.3, 0.8, 0.05], dtype=torch.float64)
LO = 3000          # the grids end at this timestep (alpha ~ 0.996) rather than at t = 0 (see _grid)


class Gaussian:
    """The optimal eps for data N(mu, diag(s^2)): sqrt(1-a) (x - sqrt(a) mu) / (a s^2 + 1 - a), and the flow."""

    def __init__(self, alphas, mu=MU, s=SD):
        self.alphas, self.mu, self.s = alphas, mu, s

    def __call__(self, x, t):
        a = self.alphas[t.cpu()].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a)

    def flow(self, x, a_from, a_to):
        """The probability-flow ODE's exact solution from level a_from to a_to."""
        v = lambda a: a * self.s**2 + 1 - a                               # noqa: E731  Var of x at level a
        return math.sqrt(a_to) * self.mu + (v(a_to) / v(a_from)).sqrt() * (x - math.sqrt(a_from) * self.mu)


def _grid(kind, N):
    """A karras / logsnr grid of N levels from timestep LO to T - 1: `timesteps` on the schedule's tail.

    It ends at a fixed positive level where one timestep is a small change of level, so rounding leaves the
    grid smooth; at t = 0 the first timesteps are large jumps in lambda that no N refines, a floor under
    the error of a third-order method."""
    return (timesteps(FINE.T - LO, N, kind, FAC[LO:]) + LO).tolist()


def _x_T(n=64):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _slope(errs, Ns):
    x, y = torch.tensor(Ns, dtype=torch.float64).log(), torch.tensor(errs, dtype=torch.float64).log()
    return -(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()).item()


def _sampling_error(solver, kind, N):
    """Max error of the state at tau_1 (the second-to-last yield: the last step to alpha = 1 is first order)."""
    model, x_T = Gaussian(FAC), _x_T()
    skip = _grid(kind, N)
    states = [x for _, x, _ in DDIMSampler(model, FINE).iter_sample(x_T, steps=N, skip=skip, solver=solver)]
    return (states[-2] - model.flow(x_T, FAC[skip[-1]].item(), FAC[skip[0]].item())).abs().max().item()


NS = (64, 128, 256)
ORDERS = {"ddim": 1, "dpm++2m": 2, "dpm++3m": 3, "unipc": 3, "plms": 2, "dpm++3m-shipped": 2}


@pytest.mark.parametrize("kind", ["karras", "logsnr"])
@pytest.mark.parametrize("solver", list(ORDERS))
def test_convergence_order_against_the_gaussian_flow(solver, kind, one_thread):
    errs = [_sampling_error(solver, kind, N) for N in NS]
    slope = _slope(errs, NS)
    # Measured (karras / logsnr): ddim 1.00/1.00, dpm++2m 2.03/2.00, dpm++3m 3.12/3.16, unipc 3.04/3.03,
    # plms 2.04/2.03 (its fixed Adams-Bashforth weights assume equal steps), dpm++3m-shipped 1.99/2.09.
    assert abs(slope - ORDERS[solver]) < 0.3, (solver, kind, slope, errs)


def test_the_true_third_order_beats_the_shipped_one_and_the_gap_grows_with_N(one_thread):
    true, shipped = ([_sampling_error(s, "karras", N) for N in NS] for s in ("dpm++3m", "dpm++3m-shipped"))
    ratios = [s / t for s, t in zip(shipped, true)]
    assert ratios[0] > 1.5 and ratios[-1] > 2 * ratios[0], ratios        # the gap grows like N (order 3 vs 2)


# --- parity with diffusers -------------------------------------------------------------------------------
def _peer_cfg():
    pytest.importorskip("diffusers")
    warnings.filterwarnings("ignore")
    return dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _ours(solver, x_T, skip, model, **kw):
    return [x for _, x, _ in DDIMSampler(model, SCHED).iter_sample(x_T, len(skip), skip=skip, solver=solver, **kw)]


FINAL = {"zero": 1.0, "sigma_min": "alpha_0"}      # diffusers' final_sigmas_type -> our final_alpha


@pytest.mark.parametrize("final", list(FINAL))
@pytest.mark.parametrize("steps", [8, 20])        # below 15 steps lower_order_final lowers the last two steps
@pytest.mark.parametrize("solver, order", [("dpm++2m", 2), ("dpm++3m-shipped", 3)])
def test_dpm_solver_pp_matches_diffusers_multistep_scheduler(solver, order, steps, final):
    import diffusers
    peer = diffusers.DPMSolverMultistepScheduler(**_peer_cfg(), algorithm_type="dpmsolver++", solver_order=order,
                                                 timestep_spacing="trailing", final_sigmas_type=final,
                                                 lower_order_final=True, thresholding=False)
    peer.set_timesteps(steps)
    model, x_T = peer_model(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = _run_diffusers(peer, model, x_T)
    ours = _ours(solver, x_T, peer.timesteps.flip(0).tolist(), model, final_alpha=FINAL[final])
    # diffusers steps in float32 (it casts x to float32 and keeps sigmas in float32): float32 agreement,
    # at every state. The true 3M differs from its order-3 scheduler by O(h^3), far above this.
    assert len(ours) == len(expected) and max(_rel(o, e) for o, e in zip(ours, expected)) < 1e-6
    if order == 3:
        true = _ours("dpm++3m", x_T, peer.timesteps.flip(0).tolist(), model, final_alpha=FINAL[final])
        assert _rel(true[-1], expected[-1]) > 1e-4


@pytest.mark.parametrize("final", list(FINAL))
@pytest.mark.parametrize("steps", [8, 20])
def test_unipc_matches_diffusers_unipc_bh2(steps, final):
    import diffusers
    peer = diffusers.UniPCMultistepScheduler(**_peer_cfg(), solver_type="bh2", solver_order=2, predict_x0=True,
                                             timestep_spacing="trailing", lower_order_final=True,
                                             final_sigmas_type=final)
    peer.set_timesteps(steps)
    skip = peer.timesteps.flip(0).tolist()
    model, x_T = peer_model(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = _ours("unipc", x_T, skip, model, final_alpha=FINAL[final])
    expected = _run_diffusers(peer, model, x_T)
    # diffusers' UniPC makes its last step first order at any step count; ours (as its DPM-Solver) only below
    # 15 steps or where the step goes to alpha = 1. They differ only in that one step to alpha_0 at 20 steps.
    differs = final == "sigma_min" and steps >= 15
    assert max(_rel(o, e) for o, e in zip(ours[:-1], expected[:-1])) < 1e-6                   # float32 sigmas
    assert _rel(ours[-1], expected[-1]) < (1e-4 if differs else 1e-6)
    # UniPC does not cast x: given float64 sigmas of our alphas it agrees to float64 roundoff.
    peer.set_timesteps(steps)
    sigma = lambda a: ((1 - a) / a).sqrt()                                 # noqa: E731
    last = torch.zeros(1, dtype=torch.float64) if final == "zero" else sigma(SCHED.alphas_cumprod[:1])
    peer.sigmas = torch.cat([sigma(SCHED.alphas_cumprod[peer.timesteps]), last])
    expected = _run_diffusers(peer, model, x_T)
    assert max(_rel(o, e) for o, e in zip(ours[:-1], expected[:-1])) < 1e-12
    assert differs or _rel(ours[-1], expected[-1]) < 1e-12


@pytest.mark.parametrize("warmup", ["heun", "euler"])
def test_plms_matches_diffusers_pndm_without_runge_kutta(warmup):
    """PNDMScheduler(skip_prk_steps=True) walks tau_S, tau_{S-1}, tau_{S-1}, ..., tau_1: its first step is a pseudo
    improved Euler step that evaluates the network twice (S + 1 calls). PLMS(warmup="heun") does the same; the
    default warm-up ("euler") makes S calls, and matches PNDM fed the first call's eps again at its repeated
    timestep. Both match at every state before the last; PNDM's last step to alpha = 1 is an Adams-Bashforth
    step, ours first order (1e-6 apart here)."""
    import diffusers
    steps = 20
    peer = _float64(diffusers.PNDMScheduler(**_peer_cfg(), skip_prk_steps=True, set_alpha_to_one=True,
                                            steps_offset=0, timestep_spacing="leading"), final=1.0)
    peer.set_timesteps(steps)
    model, x_T = peer_model(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, expected, first = x_T.clone(), [], None
    with torch.no_grad():
        for k, t in enumerate(peer.timesteps):
            out = first if (k == 1 and warmup == "euler") else model(x, t.expand(len(x)))
            first = out if k == 0 else first
            x = peer.step(out, t, x).prev_sample
            expected.append(x)
    expected = expected[1:]                           # drop PNDM's intermediate (the Euler point of its first step)
    skip = sorted(set(peer.timesteps.tolist()))
    den = Denoiser(model, SCHED)
    plan = DDIMSampler(model, SCHED).sample_plan(steps, skip)
    ours = [x for _, x, _ in walk(x_T, plan, den, PLMS(warmup=warmup, lower_order_final=False).fresh(plan))]
    assert den.nfe == steps + (warmup == "heun")
    assert max(_rel(o, e) for o, e in zip(ours[:-1], expected[:-1])) < 1e-12
    assert _rel(ours[-1], expected[-1]) < 1e-5


# --- exactness, inversion, NFE ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", list(ORDERS))
def test_a_point_mass_is_solved_exactly_at_any_step_count(solver):
    # With s = 0 every x0_pred is mu, and along the exact flow eps is constant: any combination is exact.
    model = Gaussian(SCHED.alphas_cumprod, s=torch.zeros(4, dtype=torch.float64))
    sampler = DDIMSampler(model, SCHED)
    for steps, skip in [(1, "uniform"), (2, "uniform"), (3, "quad"), (7, "karras"), (12, "logsnr"), (40, "trailing")]:
        x_T = _x_T(8)
        plan = sampler.sample_plan(steps, skip)
        for step, (_, x, _) in zip(plan, sampler.iter_sample(x_T, steps, skip=skip, solver=solver)):
            torch.testing.assert_close(x, model.flow(x_T, plan[0].a_t, step.a_s), atol=1e-12, rtol=0)
        torch.testing.assert_close(x, MU.expand_as(x), atol=1e-12, rtol=0)


def _round_trip_error(solver, kind, N):
    """Invert x from level LO to T - 1 and sample it back, on plans of the same levels both ways."""
    model = Gaussian(FAC)
    ts = _grid(kind, N)
    # A multistep method's first step is first order, with local error h^2 x0'. Sampling starts at the noisy
    # end, where x0_pred hardly moves with lambda; inversion starts at the data end, where it does, so the
    # first step is split off as a tiny one (one timestep) to show each method's own order.
    ts = [ts[0], ts[0] + 1] + ts[1:]

    def run(x, ts):
        plan = [Step(t, FAC[t].item(), FAC[u].item()) for t, u in zip(ts[:-1], ts[1:])]
        for _, x, _ in walk(x, plan, Denoiser(model, FINE), make_solver(solver).fresh(plan)):
            pass
        return x
    a_lo = FAC[ts[0]].item()
    x_lo = math.sqrt(a_lo) * (MU + SD * _x_T()) + math.sqrt(1 - a_lo) * _x_T().flip(0)
    up = run(x_lo, ts)
    back = run(up, ts[::-1])
    return (up - model.flow(x_lo, a_lo, FAC[ts[-1]].item())).abs().max().item(), (back - x_lo).abs().max().item()


@pytest.mark.parametrize("solver", list(ORDERS))
def test_inversion_round_trips_the_gaussian_at_the_solvers_order(solver, one_thread):
    errs = [_round_trip_error(solver, "logsnr", N) for N in NS]
    invert, round_trip = _slope([e for e, _ in errs], NS), _slope([e for _, e in errs], NS)
    # The encoding error falls at the solver's order. The round trip's is at most the sum of two such errors,
    # and can fall faster: decoding on the same levels undoes part of the encoding's leading error (2M: ~3).
    assert abs(invert - ORDERS[solver]) < 0.3 and round_trip > ORDERS[solver] - 0.3, (solver, invert, round_trip)


def _api_round_trip(solver, N):
    model = Gaussian(SCHED.alphas_cumprod)
    x0 = MU + SD * _x_T(32)
    sampler = DDIMSampler(model, SCHED)
    x_rec = sampler.sample(sampler.invert(x0, N, "karras", solver=solver), N, skip="karras", solver=solver)
    return (x_rec - x0).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("solver", [s for s in ORDERS if s != "ddim"])
def test_invert_then_sample_reconstructs_through_the_public_api(solver):
    # From clean data the first step evaluates the network at tau_1 on x_0 (see ddim.sampling.plan), an error
    # no N removes (~1e-4 here), so this shows the walk works both ways and beats DDIM, not the order.
    err = {N: _api_round_trip(solver, N) for N in (10, 50)}
    assert err[50] < err[10] / 4 and err[50] < _api_round_trip("ddim", 50) / 10, err


@pytest.mark.parametrize("solver", list(ORDERS) + ["plms-heun"])
def test_each_solver_makes_one_network_call_per_step(solver):
    calls = []
    model = lambda x, t: (calls.append(t[0].item()), 0.1 * x)[1]             # noqa: E731
    sampler = DDIMSampler(model, SCHED)
    sampler.sample(torch.randn(2, 3, dtype=torch.float64), 10, solver=PLMS(warmup="heun") if solver == "plms-heun"
                   else solver)
    taus = sampler.taus(10).flip(0).tolist()
    assert calls == (taus[:2] + taus[1:] if solver == "plms-heun" else taus)   # heun: one extra call, at tau_{S-1}
    calls.clear()
    sampler.invert(torch.randn(2, 3, dtype=torch.float64), 10, solver=PLMS(warmup="heun") if solver == "plms-heun"
                   else solver)
    assert len(calls) == 10 + (solver == "plms-heun")


def test_solver_relations_and_options():
    model, x_T = peer_model(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    run = lambda s: DDIMSampler(model, SCHED).sample(x_T, 12, skip="trailing", solver=s)   # noqa: E731
    # UniP-2 (no corrector) is DPM-Solver++(2M); first-order DPM-Solver++ and PLMS are DDIM.
    torch.testing.assert_close(run(UniPC(corrector=False)), run("dpm++2m"), atol=1e-12, rtol=0)
    torch.testing.assert_close(run(DPMSolverPP(1)), run("ddim"), atol=1e-12, rtol=0)
    torch.testing.assert_close(run(PLMS(1)), run("ddim"), atol=1e-12, rtol=0)
    for name in ("plms", "dpm++2m", "dpm++3m", "dpm++3m-shipped", "unipc"):
        with pytest.raises(ValueError, match=r"eta=0.5: solver .* is deterministic"):
            make_solver(name, eta=0.5)
        with pytest.raises(ValueError, match=r"variance='large': solver .* has no variance"):
            make_solver(name, variance="large")
    assert make_solver("dpm++3m-shipped").name == "dpm++3m-shipped" and make_solver("dpm++3m").name == "dpm++3m"
    for bad, match in [(lambda: DPMSolverPP(4), "order must be 1, 2 or 3"), (lambda: DPMSolverPP(2, shipped=True),
                       "needs order=3"), (lambda: PLMS(warmup="rk4"), "warmup must be"),
                       (lambda: UniPC(corrector=1), "corrector must be"), (lambda: PLMS(lower_order_final=None),
                       "lower_order_final must be")]:
        with pytest.raises(ValueError, match=match):
            bad()


def test_third_order_weights_are_exact_for_quadratic_x0_at_any_step_ratios():
    # The derivation itself, free of any grid: for x0(lambda) quadratic, D must equal
    # x0 + (I_1 / I_0) x0' + (I_2 / I_0) x0'' whatever the steps h_{i-2}, h_{i-1}, h (either direction).
    gen = torch.Generator().manual_seed(0)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64).item()   # noqa: E731
    worst = {"true": 0.0, "shipped": 0.0, "unic": 0.0}
    for _ in range(300):
        sign = 1 if u(0, 1) < 0.5 else -1
        lam, h, h0, h1 = u(-3, 3), sign * u(0.05, 3), sign * u(0.05, 3), sign * u(0.05, 3)
        c = [u(-1, 1) for _ in range(3)]
        x0 = lambda l: c[0] + c[1] * (l - lam) + c[2] * (l - lam) ** 2             # noqa: E731
        i0 = exp_integral(h, 0)
        exact = c[0] + exp_integral(h, 1) / i0 * c[1] + exp_integral(h, 2) / i0 * 2 * c[2]
        for name, solver in (("true", DPMSolverPP(3)), ("shipped", DPMSolverPP(3, shipped=True))):
            solver._hist = deque([(lam - h0 - h1, None), (lam - h0, None)])
            w = solver.weights(3, lam, lam + h)
            got = w[0] * x0(lam) + w[1] * x0(lam - h0) + w[2] * x0(lam - h0 - h1)
            worst[name] = max(worst[name], abs(got - exact))
        # UniC-2's order conditions with nodes at one earlier point and at the end of the step.
        rks = [-h0 / h, 1.0]
        rho = unipc_rhos(rks, h, simplified=False)
        got = x0(lam) + sum(p / r * (x0(lam + r * h) - x0(lam)) for p, r in zip(rho, rks))
        worst["unic"] = max(worst["unic"], abs(got - exact))
    assert worst["true"] < 1e-11 and worst["unic"] < 1e-11 and worst["shipped"] > 1e-2, worst
