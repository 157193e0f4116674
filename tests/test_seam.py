"""The sampler's seam is public: plans of levels, the denoiser, and a Solver written outside the package."""

import math

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.sampling import DDIM, Denoiser, SigmaHat, Solver, ddim_step, make_solver

SCHED = NoiseSchedule.linear()
AC = SCHED.alphas_cumprod.tolist()


class Recorder(Solver):
    """A custom solver: the plain DDIM ODE step, recording every level it is given and the history it keeps."""

    def __init__(self):
        self.seen = []        # shared across walks on purpose: the test reads it

    def begin(self):
        self.history = []     # per-walk state

    def step(self, denoise, x, i, noise):
        s = self.plan[i]
        eps, x0 = denoise(x, s.t, s.a_t)
        self.history.append(x0)
        self.seen.append((s.t, s.a_t, s.a_s, len(self.history)))
        return ddim_step(x0, eps, s.a_s), x0


def test_a_custom_solver_gets_the_plan_and_a_fresh_history_per_walk():
    model = lambda x, t: 0.1 * x                                      # noqa: E731
    sampler = DDIMSampler(model, SCHED)
    rec = Recorder()
    x = torch.randn(2, 3, dtype=torch.float64)
    ours = sampler.sample(x, steps=4, solver=rec)
    assert [(t, a_t, a_s) for t, a_t, a_s, _ in rec.seen] == [
        (750, AC[750], AC[500]), (500, AC[500], AC[250]), (250, AC[250], AC[0]), (0, AC[0], 1.0)]
    assert [n for *_, n in rec.seen] == [1, 2, 3, 4]
    torch.testing.assert_close(ours, sampler.sample(x, steps=4), atol=0, rtol=0)   # the same math as "ddim"
    rec.seen.clear()
    sampler.invert(x, steps=4, solver=rec)                              # the same instance, a new walk
    assert [(t, a_t, a_s, n) for t, a_t, a_s, n in rec.seen] == [
        (0, 1.0, AC[0], 1), (0, AC[0], AC[250], 2), (250, AC[250], AC[500], 3), (500, AC[500], AC[750], 4)]
    assert not hasattr(rec, "history")                                  # the template kept no walk's state


def test_sample_and_invert_plans_hold_only_levels_and_mirror_each_other():
    sampler = DDIMSampler(lambda x, t: x, SCHED)
    fwd, back = sampler.sample_plan(5), sampler.invert_plan(5)
    assert [(s.a_t, s.a_s) for s in fwd] == [(s.a_s, s.a_t) for s in reversed(back)]
    assert [s.t for s in fwd] == [800, 600, 400, 200, 0] and [s.t for s in back] == [0, 0, 200, 400, 600]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_pairs_agree_with_x_at_its_level_even_from_clean_data(prediction):
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64)
    out = torch.randn(4, 3, dtype=torch.float64)
    den = Denoiser(lambda x_, t: out, SCHED, prediction)
    for t, a_t in [(300, AC[300]), (0, 1.0)]:                          # the network's level, and clean data
        eps, x0 = den(x, t, a_t)
        torch.testing.assert_close(math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps, x, atol=1e-12, rtol=0)
    eps, x0 = den(x, 0, 1.0)
    torch.testing.assert_close(x0, x, atol=1e-12, rtol=0)               # from clean data x0_pred is the data
    assert den.nfe == 3


def test_clipping_lives_in_the_denoiser():
    den = Denoiser(lambda x, t: -3 * x, SCHED, clip=True)
    x = 2 * torch.randn(8, 3, dtype=torch.float64)
    eps, x0 = den(x, 500, AC[500])
    assert x0.abs().max() <= 1
    torch.testing.assert_close(math.sqrt(AC[500]) * x0 + math.sqrt(1 - AC[500]) * eps, x, atol=1e-12, rtol=0)


def test_solver_names_and_instances():
    assert isinstance(make_solver("ddim", 0.5), DDIM) and make_solver("ddim", 0.5).eta == 0.5
    assert isinstance(make_solver("ddim", variance="large"), SigmaHat)
    with pytest.raises(ValueError, match="solver must be one of"):
        make_solver("rk4")
    with pytest.raises(ValueError, match="configure the named 'ddim' solver"):
        make_solver(DDIM(), eta=0.5)
    with pytest.raises(ValueError, match="inversion needs a deterministic solver"):
        DDIMSampler(lambda x, t: x, SCHED).invert(torch.randn(1, 2), steps=3, solver=DDIM(1.0))


def test_last_nfe_counts_the_calls_of_a_two_call_solver():
    import torch
    from ddim import DDIMSampler, NoiseSchedule
    from ddim.sampling.solvers import Solver
    from ddim.sampling.steps import ddim_step

    class TwoCalls(Solver):
        def step(self, denoise, x, i, noise):
            s = self.plan[i]
            denoise(x, s.t, s.a_t)
            eps, x0 = denoise(x, s.t, s.a_t)
            return ddim_step(x0, eps, s.a_s, 0.0, None), x0

    calls = []
    model = lambda x, t: (calls.append(1), torch.zeros_like(x))[1]      # noqa: E731
    sampler = DDIMSampler(model, NoiseSchedule.linear(100))
    sampler.sample(torch.randn(2, 1, 4, 4), steps=5, solver=TwoCalls())
    assert sampler.last_nfe == len(calls) == 10
    sampler.invert(torch.randn(2, 1, 4, 4), steps=3)
    assert sampler.last_nfe == 3
