"""Exact inversion (BDIA, EDICT), fixed-point refinement of inversion steps, and CFG++ (CPU, float64).

Truths: float64 round trips at roundoff; bit-equality with the methods these reduce to (BDIA gamma = 0 is DDIM,
refine = 0 is the eq.-13 walk, CFG++ lambda = 0 is w = 0); the closed-form inverse of the DDIM sampling walk on
Gaussian data (its eps is affine in x); and the network calls counted by the denoiser.
"""

import math

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.errors import DDIMError
from ddim.sampling import BDIA, DDIM, EDICT, Coupled, Denoiser, make_solver, walk
from ddim.sampling.plan import invert_plan

SCHED = NoiseSchedule.linear()
AC = SCHED.alphas_cumprod
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
SD = torch.tensor([0.5, 0.3, 0.8, 0.2], dtype=torch.float64)
EXACT = ["bdia", "edict", BDIA(0.5), EDICT(0.9, leapfrog=False)]


def _v(a):
    return a * SD**2 + 1 - a


def gaussian(x, t, y=None):
    """The exact eps for data N(MU, diag(SD^2)) (docs/ARCHITECTURE.md, "Adding a solver")."""
    a = AC[t].to(x.dtype).view(-1, *[1] * (x.ndim - 1))
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / _v(a)


class Net(torch.nn.Module):
    """A tiny random non-linear eps network, class-conditional if classes > 0 (label -1: none)."""

    def __init__(self, classes=0, d=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(d + 2 + 3, 32, generator=g, dtype=torch.float64) / 3)
        self.w2 = torch.nn.Parameter(torch.randn(32, d, generator=g, dtype=torch.float64) / 6)
        self.emb = torch.randn(classes + 1, 3, generator=g, dtype=torch.float64)
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        s = t.to(x.dtype)[:, None] / 1000
        e = self.emb[0 if y is None else y + 1].expand(len(x), -1)
        return torch.tanh(torch.cat([x, torch.sin(3 * s), torch.cos(3 * s), e], 1) @ self.w1) @ self.w2 + 0.1 * x


def _data(n=16, seed=1):
    return MU + SD * torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# -- exact inversion


@pytest.mark.parametrize("solver", EXACT, ids=str)
@pytest.mark.parametrize("case", ["gaussian", "net", "net-guided", "net-cfg++"])
def test_bdia_and_edict_round_trips_return_x0_to_roundoff_at_10_steps(solver, case):
    x0 = _data()
    model = gaussian if case == "gaussian" else Net(classes=0 if case == "net" else 3)
    cond = {} if case in ("gaussian", "net") else {"y": torch.arange(16) % 3, "guidance": 3.0}
    if case == "net-cfg++":
        cond = {"y": torch.arange(16) % 3, "guidance": 0.6, "guidance_mode": "cfg++"}
    sampler = DDIMSampler(model, SCHED)
    z = sampler.invert(x0, 10, solver=solver, **cond)
    assert isinstance(z, Coupled) and z.x.shape == x0.shape
    assert _rel(sampler.sample(z, 10, solver=solver, **cond), x0) < 1e-9
    # DDIM's own round trip is far from exact on the same data: the exact solvers are not trivially so
    assert _rel(sampler.sample(sampler.invert(x0, 10, **cond), 10, **cond), x0) > 1e-4


def test_exact_round_trips_hold_on_other_skips_and_batches():
    x0, net = _data(), Net()
    sampler = DDIMSampler(net, SCHED)
    for solver in ("bdia", "edict"):
        z = Coupled.cat([sampler.invert(x0[:5], 7, "quad", solver=solver),
                         sampler.invert(x0[5:], 7, "quad", solver=solver)])
        assert _rel(torch.cat([sampler.sample(z[:9], 7, skip="quad", solver=solver),
                               sampler.sample(z[9:], 7, skip="quad", solver=solver)]), x0) < 1e-9
        z1 = sampler.invert(x0[:2], 1, solver=solver)                    # one step: still exact
        assert _rel(sampler.sample(z1, 1, solver=solver), x0[:2]) < 1e-12


def test_bdia_with_gamma_0_is_bit_equal_to_ddim_unguided_and_guided():
    x_T = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    net = Net(classes=2)
    sampler = DDIMSampler(net, SCHED)
    for cond in ({}, {"y": torch.tensor([0, 1, -1, 0, 1, 1]), "guidance": 3.0}):
        for steps, skip in ((10, "uniform"), (25, "quad")):
            assert torch.equal(sampler.sample(x_T, steps, skip=skip, solver=BDIA(0.0), **cond),
                               sampler.sample(x_T, steps, skip=skip, **cond))
    assert not torch.equal(sampler.sample(x_T, 10, solver="bdia"), sampler.sample(x_T, 10))


def test_edict_with_p_1_and_no_leapfrog_runs_ddim_on_x_with_the_eps_of_y():
    # p = 1: no mixing; x_T = y_T: x moves with the prediction made at y = x, i.e. x's first step is DDIM's
    x_T = torch.randn(3, 4, dtype=torch.float64)
    sampler = DDIMSampler(Net(), SCHED)
    first = next(iter(sampler.iter_sample(x_T, 5, solver=EDICT(1.0, leapfrog=False))))[1]
    ddim_first = next(iter(sampler.iter_sample(x_T, 5)))[1]
    torch.testing.assert_close(first, ddim_first, atol=1e-14, rtol=0)


def test_network_calls_of_the_exact_solvers():
    net, x0 = Net(), _data(4)
    sampler = DDIMSampler(net, SCHED)
    for solver, inv, from_z, from_noise in (("bdia", 10, 9, 10), ("edict", 20, 20, 20)):
        net.calls = 0
        z = sampler.invert(x0, 10, solver=solver)
        assert sampler.last_nfe == net.calls == inv
        net.calls = 0
        sampler.sample(z, 10, solver=solver)
        assert sampler.last_nfe == net.calls == from_z
        sampler.sample(z.x, 10, solver=solver)
        assert sampler.last_nfe == from_noise


def test_iter_invert_yields_each_level_and_the_last_is_the_latent():
    x0, sampler = _data(3), DDIMSampler(Net(), SCHED)
    for solver in ("bdia", "edict"):
        ts = [t for t, _, _ in sampler.iter_invert(x0, 6, solver=solver)]
        assert ts == sampler.taus(6).tolist()
        *_, (_, last, _) = sampler.iter_invert(x0, 6, solver=solver)
        torch.testing.assert_close(last, sampler.invert(x0, 6, solver=solver).x, atol=0, rtol=0)


def test_coupled_latents_are_checked_against_the_solver_and_the_plan():
    sampler = DDIMSampler(Net(), SCHED)
    z = sampler.invert(_data(2), 10, solver="bdia")
    with pytest.raises(DDIMError, match="solver='bdia'"):
        sampler.sample(z, 10)
    with pytest.raises(DDIMError, match="solver='bdia'"):
        sampler.sample(z, 10, solver="edict")
    with pytest.raises(DDIMError, match="timesteps"):
        sampler.sample(z, 20, solver="bdia")
    with pytest.raises(DDIMError, match="gamma=0"):
        sampler.invert(_data(2), 10, solver=BDIA(0))
    with pytest.raises(DDIMError, match="refine"):
        sampler.invert(_data(2), 10, solver="edict", refine=1)
    for bad in (-0.1, 1.5, "1", True):
        with pytest.raises(DDIMError, match="gamma"):
            BDIA(bad)
    for bad in (0, 1.1, None):
        with pytest.raises(DDIMError, match="p must"):
            EDICT(bad)
    with pytest.raises(DDIMError, match="eta"):
        make_solver("bdia", eta=0.5)


# -- fixed-point refinement


def _exact_ddim_inverse(x0, taus):
    """The closed-form inverse of the DDIM sampling walk on the Gaussian: each sampling step from level a_s is
    affine in x_s (x_t = A x_s + B), so it is solved for x_s level by level from the data up."""
    x, a_t = x0, 1.0
    for t in taus:
        a_s = AC[t].item()
        c = math.sqrt(1 - a_t) - math.sqrt(a_t / a_s) * math.sqrt(1 - a_s)
        A = math.sqrt(a_t / a_s) + c * math.sqrt(1 - a_s) / _v(a_s)
        B = -c * math.sqrt(1 - a_s) * math.sqrt(a_s) * MU / _v(a_s)
        x, a_t = (x - B) / A, a_s
    return x


def test_refine_0_is_bit_equal_to_the_eq13_walk():
    x0, net = _data(), Net(classes=2)
    sampler = DDIMSampler(net, SCHED)
    for solver in ("ddim", "dpm++2m", "unipc"):
        for cond in ({}, {"y": 1, "guidance": 3.0}):
            plan = invert_plan(SCHED, sampler.taus(10))
            want = x0
            for _, want, _ in walk(x0, plan, Denoiser(net, SCHED, **cond), make_solver(solver).fresh(plan)):
                pass
            assert torch.equal(sampler.invert(x0, 10, solver=solver, refine=0, **cond), want)
            assert torch.equal(sampler.invert(x0, 10, solver=solver, **cond), want)


def test_refined_inversion_converges_to_the_exact_inverse_of_ddim_sampling():
    x0, sampler = _data(), DDIMSampler(gaussian, SCHED)
    exact = _exact_ddim_inverse(x0, sampler.taus(20).tolist())
    errs = [(sampler.invert(x0, 20, refine=K) - exact).abs().max().item() for K in range(6)]
    assert all(b < 0.7 * a for a, b in zip(errs, errs[1:])), errs             # a contraction, K by K
    assert (sampler.invert(x0, 20, refine=40) - exact).abs().max() < 1e-9
    rt = [_rel(sampler.sample(sampler.invert(x0, 20, refine=K), 20), x0) for K in (0, 1, 2, 4)]
    assert all(b < a for a, b in zip(rt, rt[1:])), rt                          # the round trip tightens


@pytest.mark.parametrize("solver", ["ddim", "plms", "dpm++2m", "dpm++3m", "unipc"])
def test_refine_costs_k_extra_calls_per_step_for_every_deterministic_solver(solver):
    net, x0 = Net(classes=2), _data(4)
    sampler = DDIMSampler(net, SCHED)
    for K in (1, 3):
        net.calls = 0
        z = sampler.invert(x0, 8, solver=solver, refine=K, y=0, guidance=2.0)
        assert sampler.last_nfe == net.calls == 8 * (1 + K) and torch.isfinite(z).all()
    # a multistep solver's history is restored before each redo: refining twice from the same start agrees
    torch.testing.assert_close(sampler.invert(x0, 8, solver=solver, refine=2),
                               sampler.invert(x0, 8, solver=solver, refine=2), atol=0, rtol=0)


def test_refine_is_checked():
    sampler = DDIMSampler(Net(classes=2), SCHED)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(DDIMError, match="refine"):
            sampler.invert(_data(2), 5, refine=bad)
    with pytest.raises(DDIMError, match="cfg\\+\\+"):
        sampler.invert(_data(2), 5, refine=1, y=0, guidance=0.5, guidance_mode="cfg++")
    with pytest.raises(DDIMError, match="deterministic"):
        sampler.invert(_data(2), 5, solver=DDIM(0.5), refine=1)


# -- CFG++


def test_cfgpp_at_lambda_0_is_w_0_bit_for_bit():
    net, x = Net(classes=3), _data(6)
    sampler = DDIMSampler(net, SCHED)
    y = torch.arange(6) % 3
    for solver in ("ddim", "dpm++2m"):
        assert torch.equal(sampler.sample(x, 10, solver=solver, y=y, guidance=0.0, guidance_mode="cfg++"),
                           sampler.sample(x, 10, solver=solver, y=y, guidance=0.0))
        assert torch.equal(sampler.invert(x, 10, solver=solver, y=y, guidance=0.0, guidance_mode="cfg++"),
                           sampler.invert(x, 10, solver=solver, y=y, guidance=0.0))


def test_cfgpp_at_lambda_1_takes_w_1s_x0_and_w_0s_eps_and_swaps_them_to_invert():
    net, x = Net(classes=3), _data(6)
    y, t, a = torch.arange(6) % 3, 500, AC[500].item()
    eps_u, x0_u = Denoiser(net, SCHED, y=y, guidance=0.0)(x, t, a)
    eps_c, x0_c = Denoiser(net, SCHED, y=y, guidance=1.0)(x, t, a)
    eps, x0 = Denoiser(net, SCHED, y=y, guidance=1.0, guidance_mode="cfg++")(x, t, a)
    torch.testing.assert_close(eps, eps_u, atol=1e-13, rtol=0)
    torch.testing.assert_close(x0, x0_c, atol=1e-13, rtol=0)
    eps, x0 = Denoiser(net, SCHED, y=y, guidance=1.0, guidance_mode="cfg++", inverting=True)(x, t, a)
    torch.testing.assert_close(eps, eps_c, atol=1e-13, rtol=0)
    torch.testing.assert_close(x0, x0_u, atol=1e-13, rtol=0)


def test_cfgpp_ddim_step_is_cfg_with_the_papers_time_varying_weight():
    # x_s = sqrt(a_s) x0(eps_lam) + sqrt(1-a_s) eps_u is a CFG DDIM step with
    # w = lam sqrt(a_s/a_t) sqrt(1-a_t) / (sqrt(a_s/a_t) sqrt(1-a_t) - sqrt(1-a_s))
    net, x, lam = Net(classes=3), _data(6), 0.4
    y = torch.arange(6) % 3
    sampler = DDIMSampler(net, SCHED)
    plan = sampler.sample_plan(10)
    first = next(iter(sampler.iter_sample(x, 10, y=y, guidance=lam, guidance_mode="cfg++")))[1]
    s = plan[0]
    r = math.sqrt(s.a_s / s.a_t) * math.sqrt(1 - s.a_t)
    w = lam * r / (r - math.sqrt(1 - s.a_s))
    eps, x0 = Denoiser(net, SCHED, y=y, guidance=w)(x, s.t, s.a_t)
    torch.testing.assert_close(first, math.sqrt(s.a_s) * x0 + math.sqrt(1 - s.a_s) * eps, atol=1e-13, rtol=0)


def test_cfgpp_is_checked():
    sampler = DDIMSampler(Net(classes=3), SCHED)
    x = _data(2)
    with pytest.raises(DDIMError, match="lambda"):
        sampler.sample(x, 5, y=1, guidance=3.0, guidance_mode="cfg++")
    with pytest.raises(DDIMError, match="needs class labels"):
        sampler.sample(x, 5, guidance=0.5, guidance_mode="cfg++")
    with pytest.raises(DDIMError, match="guidance_mode"):
        sampler.sample(x, 5, y=1, guidance=0.5, guidance_mode="cfg+")
    with pytest.raises(DDIMError, match="clip_denoised"):
        sampler.sample(x, 5, y=1, guidance=0.5, guidance_mode="cfg++", clip_denoised=True)


def test_transfer_through_exact_inversion_keeps_the_class_round_trip_exact():
    net, x0 = Net(classes=3), _data(4)
    sampler = DDIMSampler(net, SCHED)
    for solver in ("bdia", "edict"):
        same = sampler.transfer(x0, 1, 1, 10, solver=solver)            # to its own class: the round trip
        assert _rel(same, x0) < 1e-9
        other = sampler.transfer(x0, 1, 2, 10, solver=solver)
        assert _rel(other, x0) > 1e-3
    assert _rel(sampler.transfer(x0, 1, 1, 10, refine=3), x0) < _rel(sampler.transfer(x0, 1, 1, 10), x0)


# -- the command line


def test_encode_and_reconstruct_take_solver_and_refine(cond_ckpt, tmp_path):
    import json

    import numpy as np

    from ddim.commands import main
    base = ["--ckpt", cond_ckpt, "--input", "digits", "--n", "3", "--class", "1", "--guidance", "3"]
    for solver in ("bdia", "edict"):
        out = str(tmp_path / f"{solver}.npz")
        assert main(["encode", *base, "--steps", "4", "--solver", solver, "--out", out]) == 0
        z = np.load(tmp_path / f"{solver}.npz")
        assert z["latents"].shape == z["latents_y"].shape == (3, 3, 16, 16) and str(z["solver"]) == solver
    assert main(["encode", *base, "--steps", "4", "--refine", "2", "--out", str(tmp_path / "r.npz")]) == 0
    assert int(np.load(tmp_path / "r.npz")["refine"]) == 2 and "latents_y" not in np.load(tmp_path / "r.npz")
    mse = {}
    for name, flags in (("ddim", []), ("bdia", ["--solver", "bdia"]), ("edict", ["--solver", "edict"]),
                        ("refine", ["--refine", "1"])):
        assert main(["reconstruct", *base, "--steps", "5", *flags, "--out", str(tmp_path / name)]) == 0
        mse[name] = json.loads((tmp_path / name / "mse.json").read_text())["5"]
    # float32 through a random network, guided: BDIA at roundoff; EDICT's inverse re-evaluates the network at
    # points that differ by roundoff and divides by p twice a step, so in float32 it is less exact (its authors
    # ran in float64); DDIM's round trip is nowhere near either
    assert mse["bdia"] < 1e-8 and mse["edict"] < 1e-4 and mse["ddim"] > 1e4 * mse["edict"], mse


def test_dtype_float64_runs_the_network_and_the_latents_in_float64(cond_ckpt, tmp_path, capsys):
    import json

    import numpy as np

    from ddim.commands import main
    from ddim.config import SampleConfig
    from ddim.generate import load_model, make_sampler, network
    loaded = load_model(cond_ckpt)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.tensor([0, 2])
    want = loaded.model.double()(x.double(), t, y)
    loaded.model.float()
    assert torch.equal(network(loaded.model, "float64")(x.double(), t, y), want)
    assert next(loaded.model.parameters()).dtype == torch.float32           # the caller's model is not changed
    with pytest.raises(DDIMError, match="mps device has no float64"):
        make_sampler(loaded, SampleConfig(dtype="float64"), "mps")
    base = ["--ckpt", cond_ckpt, "--input", "digits", "--n", "3", "--class", "1", "--guidance", "3", "--steps", "4",
            "--solver", "bdia"]
    mse = {}
    for dtype in ("float32", "float64"):
        assert main(["reconstruct", *base, "--dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
        mse[dtype] = json.loads((tmp_path / dtype / "mse.json").read_text())["4"]
    # a float64 network with float32 latents would stop at float32's roundoff: the walk itself is float64
    assert mse["float64"] < 1e-20 and mse["float32"] > 1e6 * mse["float64"], mse
    assert main(["encode", *base, "--dtype", "float64", "--out", str(tmp_path / "z.npz")]) == 0
    z = np.load(tmp_path / "z.npz")
    assert z["latents"].dtype == z["latents_y"].dtype == np.float64


def test_edit_transfer_takes_solver_and_refine_and_refuses_refine_for_exact_solvers(cond_ckpt, tmp_path, capsys):
    from ddim.commands import main
    base = ["edit", "transfer", "--ckpt", cond_ckpt, "--input", "digits", "--n", "2", "--steps", "3",
            "--from-class", "0", "--to-class", "2"]
    assert main([*base, "--solver", "edict", "--out", str(tmp_path / "a.png")]) == 0
    assert main([*base, "--refine", "2", "--out", str(tmp_path / "b.png")]) == 0
    capsys.readouterr()
    assert main([*base, "--solver", "bdia", "--refine", "1", "--out", str(tmp_path / "c.png")]) == 2
    assert "--refine" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
    with pytest.raises(SystemExit):
        main([*base, "--refine", "-1", "--out", str(tmp_path / "d.png")])
    assert main(["encode", "--input", "digits", "--n", "1", "--steps", "2", "--solver", "edict", "--refine", "1",
                 "--out", str(tmp_path / "e.npz")]) == 2 and not (tmp_path / "e.npz").exists()


def test_eval_table2_takes_the_exact_solvers_and_eval_solvers_counts_edicts_two_calls(tmp_path):
    from ddim import evaluation as ev
    from ddim.config import SampleConfig
    from ddim.generate import load_model
    loaded = load_model()                                            # the embedded digits model, float32
    rows = ev.table2(loaded, SampleConfig(batch_size=2), steps=(3,), images="digits", n=3,
                     solvers=["ddim", "bdia", "edict"], progress=False)
    mse = {r["solver"]: r["mse"] for r in rows}
    assert mse["bdia"] < 1e-8 and mse["edict"] < 1e-5 and mse["ddim"] > 1e-4, mse
    rows = ev.solvers_table(loaded, SampleConfig(skip="trailing", batch_size=2), solvers=["edict"], nfes=(3,), n=2,
                            metric="classifier", progress=False)
    assert [r["nfe"] for r in rows] == [6]                          # two network calls per step


def test_guidance_mode_and_refine_through_walk_options_and_the_command_line(cond_ckpt, tmp_path):
    from ddim.commands import main
    from ddim.config import SampleConfig
    from ddim.sampling import WalkOptions
    sampler = DDIMSampler(Net(classes=3), SCHED)
    x = _data(3)
    opts = WalkOptions(6, guidance=0.5, guidance_mode="cfg++")
    assert torch.equal(sampler.run(x, opts, y=1), sampler.sample(x, 6, y=1, guidance=0.5, guidance_mode="cfg++"))
    assert SampleConfig(guidance=0.5, guidance_mode="cfg++").walk == opts.replace(steps=50)
    assert "guidance_mode" not in SampleConfig().manifest()                # runs recorded before it resume
    for build in (lambda: WalkOptions(guidance_mode="cfgpp"), lambda: SampleConfig(guidance_mode="cfgpp")):
        with pytest.raises(DDIMError, match="guidance_mode"):
            build()
    with pytest.raises(DDIMError, match="lambda in"):                     # refused without a model
        SampleConfig(guidance=3, guidance_mode="cfg++")
    with pytest.raises(DDIMError, match="refine=2: refinement is an option of inversion"):
        sampler.walk(x, opts, y=1, refine=2)
    out = tmp_path / "s"
    assert main(["sample", "--ckpt", cond_ckpt, "--n", "2", "--steps", "3", "--class", "1", "--guidance", "0.6",
                 "--guidance-mode", "cfg++", "--quiet", "--out", str(out)]) == 0
    assert main(["sample", "--ckpt", cond_ckpt, "--n", "2", "--steps", "3", "--class", "1", "--guidance", "3",
                 "--guidance-mode", "cfg++", "--quiet", "--out", str(tmp_path / "t")]) == 2
