"""`WalkOptions`: one object from the command line to the solver and the denoiser, each option defaulted once and
checked once; the plan's level -> timestep map; the network calls a walk made, as generate's callers see them."""

import dataclasses
import inspect
import math

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.config import SampleConfig
from ddim.errors import DDIMError
from ddim.sampling import DDIM, PLMS, Plan, Solver, Step, WalkOptions, ddim_step, registry
from ddim.sampling.options import DEFAULTS

SCHED = NoiseSchedule.linear()
AC = SCHED.alphas_cumprod.tolist()


def test_the_keyword_api_has_one_signature_per_walk_and_its_defaults_are_the_options():
    s = DDIMSampler(lambda x, t: 0.1 * x, SCHED)
    for drain, iterate in ((s.sample, s.iter_sample), (s.invert, s.iter_invert)):
        a, b = inspect.signature(drain), inspect.signature(iterate)
        assert list(a.parameters.values()) == list(b.parameters.values())
        assert a.return_annotation is torch.Tensor or a.return_annotation == "Tensor"
    params = inspect.signature(s.sample).parameters
    assert list(params)[:9] == ["x_T", "steps", "eta", "skip", "variance", "generator", "clip_denoised", "progress",
                                "solver"]                                   # the public positional order
    for f in dataclasses.fields(WalkOptions):
        assert params[f.name].default == f.default, f.name                  # one default each
    config = SampleConfig()
    assert {k: getattr(config, k) for k in WalkOptions.__dataclass_fields__} == dataclasses.asdict(DEFAULTS)


def test_sample_config_builds_the_walk_options_and_agrees_with_the_plan():
    config = SampleConfig(steps=7, solver="dpm++2m", guidance=2, final_alpha="alpha_0")
    assert config.walk == WalkOptions(7, solver="dpm++2m", guidance=2.0, final_alpha="alpha_0")
    assert config.walk_options() == config.walk.kwargs()
    for bad in (0.5, "one", True):                                         # what the plan refuses, refused up front
        with pytest.raises(DDIMError, match="final_alpha"):
            SampleConfig(final_alpha=bad)
    # the same validator, the same message, whichever door the value comes in by
    messages = set()
    for build in (lambda: SampleConfig(guidance=float("inf")), lambda: WalkOptions(guidance=float("inf")),
                  lambda: DDIMSampler(lambda x, t: x, SCHED).sample(torch.randn(1, 2), 2, guidance=float("inf"))):
        with pytest.raises(DDIMError) as e:
            build()
        messages.add(str(e.value))
    assert len(messages) == 1, messages


def test_an_explicit_skip_list_sets_S():
    s = DDIMSampler(lambda x, t: 0.1 * x, SCHED)
    x = torch.randn(2, 3, dtype=torch.float64)
    assert WalkOptions(None, skip=[10, 20]).steps == 2
    assert WalkOptions(None, skip=torch.tensor([10, 20])).skip == (10, 20)
    torch.testing.assert_close(s.sample(x, None, skip=[10, 20]), s.sample(x, 2, skip=[10, 20]), atol=0, rtol=0)
    with pytest.raises(DDIMError, match="steps=3 disagrees"):
        s.sample(x, 3, skip=[10, 20])
    with pytest.raises(DDIMError, match="steps must be"):
        WalkOptions(None)                                                 # a named skip needs S


def test_check_plan_runs_no_network_call():
    from ddim.generate import check_plan
    calls = []
    s = DDIMSampler(lambda x, t: calls.append(t) or x, SCHED)
    check_plan(s, SampleConfig(steps=10, eta=1.0))
    with pytest.raises(DDIMError, match="eta=5.0"):
        check_plan(s, SampleConfig(steps=10, eta=5.0))                     # needs the plan: refused by prepare
    with pytest.raises(DDIMError, match="steps must be an integer in"):
        check_plan(s, SampleConfig(steps=1001))                            # needs T
    with pytest.raises(DDIMError, match="guidance=2.0 needs class labels"):
        check_plan(s, SampleConfig(guidance=2))
    assert calls == []


def test_the_plan_maps_levels_to_timesteps():
    s = DDIMSampler(lambda x, t: x, SCHED)
    for plan in (s.sample_plan(10), s.invert_plan(10), s.sample_plan(7, "quad", "alpha_0")):
        assert isinstance(plan, Plan)
        for step in plan:
            if step.a_t < 1:
                assert plan.timestep_at(step.a_t) == step.t                  # a step's own level: exact
            if 0 < step.a_s < 1:
                assert AC[plan.timestep_at(step.a_s)] == step.a_s           # every level the plan reaches
    plan = s.sample_plan(10)
    for t in (3, 123, 456, 999):                                            # any schedule level: its timestep
        assert plan.timestep_at(AC[t]) == t
    lam = lambda a: 0.5 * math.log(a / (1 - a))                            # noqa: E731
    for mid in ((AC[500] * AC[400]) ** 0.5, 0.5, 1e-3):                    # between timesteps: the nearest in lambda
        t = plan.timestep_at(mid)
        assert all(abs(lam(AC[t]) - lam(mid)) <= abs(lam(AC[u]) - lam(mid)) for u in (t - 1, t + 1))
    bare = Plan((Step(500, AC[500], AC[0]),))                               # a caller's plan knows its own levels
    assert bare.timestep_at(AC[500]) == 500
    with pytest.raises(DDIMError, match="no schedule"):
        bare.timestep_at(0.5)


class MidpointDDIM(Solver):
    """A two-call solver written here: the DDIM step with eps averaged with a second evaluation at the midpoint
    level in log-SNR, whose timestep it asks the plan for (it never peeks at plan[i + 1])."""

    def step(self, denoise, x, i, noise):
        s = self.plan[i]
        eps, x0 = denoise(x, s.t, s.a_t)
        if not 0 < s.a_s < 1:
            return ddim_step(x0, eps, s.a_s), x0
        a_m = (s.a_t * s.a_s) ** 0.5
        self.asked = getattr(self, "asked", []) + [self.plan.timestep_at(a_m)]
        eps_m, _ = denoise(ddim_step(x0, eps, a_m), self.plan.timestep_at(a_m), a_m)
        e = 0.5 * (eps + eps_m)
        x0_m = (x - (1 - s.a_t) ** 0.5 * e) / s.a_t ** 0.5
        return ddim_step(x0_m, e, s.a_s), x0


def test_generate_exposes_the_calls_a_two_call_solver_made(monkeypatch):
    from ddim.generate import decode, encode, sample_batch
    monkeypatch.setitem(registry.SOLVERS, "midpoint", lambda eta, variance: MidpointDDIM())
    calls = []
    s = DDIMSampler(lambda x, t: calls.append(int(t[0])) or 0.1 * x, SCHED)
    config = SampleConfig(steps=10, solver="midpoint", batch_size=3)
    sample_batch(s, torch.randn(4, 3), config)
    assert s.last_nfe == len(calls) == 19                                  # 9 steps of two calls, the last of one
    calls.clear()
    z = encode(s, torch.randn(5, 3), config)                                # two batches: last_nfe is one walk's
    assert s.last_nfe == len(calls) // 2 == 20                             # every level of encoding is in (0, 1)
    decode(s, z, config.replace(solver="ddim"))
    assert s.last_nfe == 10


def test_plms_heun_warmup_asks_the_map():
    asked = []

    class Watched(Plan):
        def timestep_at(self, level):
            asked.append(level)
            return super().timestep_at(level)

    s = DDIMSampler(lambda x, t: 0.1 * x, SCHED)
    plan = s.sample_plan(10)
    solver = PLMS(warmup="heun").fresh(Watched(plan, SCHED.alphas_cumprod))
    x = torch.randn(2, 3, dtype=torch.float64)
    den = s.denoiser()
    for i in range(2):
        x, _ = solver.step(den, x, i, None)
    assert asked == [plan[0].a_s] and den.nfe == 3


def test_batch_size_auto_has_one_meaning(monkeypatch):
    import ddim.generate as g
    from ddim.generate import CPU_AUTO_BATCH, resolve_batch_size
    from ddim.models import PRESETS, UNet
    from ddim.checkpoint import LoadedModel
    net = UNet(PRESETS["tiny"])
    loaded = LoadedModel(net, SCHED, "eps", PRESETS["tiny"], {})
    assert resolve_batch_size(SampleConfig(batch_size="auto"), loaded, "cpu", 10) == 10
    assert resolve_batch_size(SampleConfig(batch_size="auto"), loaded, "cpu", 1000) == CPU_AUTO_BATCH
    assert resolve_batch_size(SampleConfig(batch_size=7), loaded, "cpu", 1000) == 7
    seen = []
    monkeypatch.setattr(g, "auto_batch_size", lambda fn, shape, device, limit: seen.append(limit) or 2)
    s = DDIMSampler(lambda x, t: 0.1 * x, SCHED)
    z = g.encode(s, torch.randn(5, 3), SampleConfig(steps=3, batch_size="auto"))   # the same resolver, by the sampler
    assert seen == [5] and len(z) == 5
