"""Autoguidance (Karras et al. 2024): a model guided by a weaker network of the same task, guide + w (model - guide).

Proven on the Gaussian flow (exact networks, float64): the combination at every call, which network is called
for which w, the interval, the condition reaching the guide, and what it does to samples (the spread shrinks
towards the sharper network, the mean stays); then the command line on the embedded digits model and its guide.
"""

import json

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.commands import main
from ddim.errors import DDIMError
from ddim.sampling import Denoiser

SCHED = NoiseSchedule.linear()
AC = SCHED.alphas_cumprod
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
SD = torch.tensor([0.5, 0.3, 0.8, 0.05], dtype=torch.float64)


class Gaussian:
    """The exact eps (or v) of data N(MU, diag((scale SD)^2)); counts its calls and keeps the labels it got."""

    def __init__(self, scale=1.0, prediction="eps"):
        self.sd, self.prediction, self.calls, self.labels = scale * SD, prediction, 0, []

    def __call__(self, x, t, y=None):
        self.calls += 1
        if y is not None:
            self.labels.append(y.clone())
        a = AC[t.cpu()].to(x.dtype).view(-1, 1)
        var = a * self.sd**2 + 1 - a
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / var
        if self.prediction == "eps":
            return eps
        x0 = MU + a.sqrt() * self.sd**2 / var * (x - a.sqrt() * MU)
        return a.sqrt() * eps - (1 - a).sqrt() * x0


def _noise(n, seed=0):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 3.5])
def test_each_call_is_the_guide_plus_w_times_the_difference(prediction, w):
    good, bad = Gaussian(1.0, prediction), Gaussian(1.6, prediction)
    d = Denoiser(good, SCHED, prediction, guidance=w, guide=bad)
    x = _noise(6)
    for t in (999, 500, 20):
        t_b = torch.full((6,), t)
        expected = bad(x, t_b) + w * (good(x, t_b) - bad(x, t_b))
        assert torch.allclose(d.network(x, t), expected, rtol=1e-13, atol=1e-15)
    assert d.nfe == 3                       # the pair counts as one evaluation, as CFG's call of 2B does


def test_which_network_is_called():
    x = _noise(3)
    t_b = torch.full((3,), 400)
    for w, model_calls, guide_calls in ((1.0, 1, 0), (0.0, 0, 1), (2.0, 1, 1)):
        good, bad = Gaussian(), Gaussian(1.6)
        out = Denoiser(good, SCHED, guidance=w, guide=bad).network(x, 400)
        assert (good.calls, bad.calls) == (model_calls, guide_calls)
        expected = {1.0: Gaussian()(x, t_b), 0.0: Gaussian(1.6)(x, t_b)}.get(w)
        if expected is None:
            expected = 2 * Gaussian()(x, t_b) - Gaussian(1.6)(x, t_b)
        assert torch.allclose(out, expected, rtol=1e-13, atol=1e-15)
    good, bad = Gaussian(), Gaussian(1.6)       # outside the guidance interval: the model alone
    d = Denoiser(good, SCHED, guidance=2.0, guide=bad, guidance_interval=(100, 600))
    d.network(x, 900), d.network(x, 300), d.network(x, 50)
    assert (good.calls, bad.calls) == (3, 1)


def test_the_guide_gets_the_models_condition():
    good, bad = Gaussian(), Gaussian(1.6)
    y = torch.tensor([3, 1, 4])
    Denoiser(good, SCHED, y=y, guidance=2.0, guide=bad).network(_noise(3), 700)
    assert torch.equal(good.labels[0], y) and torch.equal(bad.labels[0], y)      # not the null label


def test_a_guide_equal_to_the_model_changes_nothing():
    x_T = _noise(64)
    plain = DDIMSampler(Gaussian(), SCHED).sample(x_T, 20)
    for w in (0.0, 3.0):
        guided = DDIMSampler(Gaussian(), SCHED, guide=Gaussian()).sample(x_T, 20, guidance=w)
        assert torch.allclose(guided, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m"])
def test_guidance_away_from_a_blurrier_guide_sharpens_and_keeps_the_mean(solver):
    """The weak network spreads the data wider (1.6 SD); w > 1 moves samples away from it: the spread falls
    below the model's own (which w = 1 reproduces) and keeps falling with w, and the mean, shared by both
    networks, stays MU."""
    x_T = _noise(4000, 1)
    sampler = DDIMSampler(Gaussian(), SCHED, guide=Gaussian(1.6))
    spreads = []
    for w in (1.0, 2.0, 3.0):
        x = sampler.sample(x_T, 50, solver=solver, guidance=w)
        spreads.append(x.std(0))
        assert torch.allclose(x.mean(0), MU, atol=4 * SD.max().item() / 4000**0.5)
    plain = DDIMSampler(Gaussian(), SCHED).sample(x_T, 50, solver=solver)
    assert torch.allclose(spreads[0], plain.std(0), rtol=1e-12)
    assert bool((spreads[1] < 0.97 * spreads[0]).all() and (spreads[2] < spreads[1]).all())


def test_exact_inversion_holds_with_a_guide():
    sampler = DDIMSampler(Gaussian(), SCHED, guide=Gaussian(1.6))
    x_0 = MU + SD * _noise(16, 2)
    z = sampler.invert(x_0, 10, solver="bdia", guidance=2.5)
    assert torch.allclose(sampler.sample(z, 10, solver="bdia", guidance=2.5), x_0, rtol=0, atol=1e-10)


def test_bad_guides_are_refused_in_one_line():
    with pytest.raises(DDIMError, match="guide must be"):
        DDIMSampler(Gaussian(), SCHED, guide="digits-weak")
    with pytest.raises(DDIMError, match="guidance_mode='cfg\\+\\+' with a guide"):
        Denoiser(Gaussian(), SCHED, y=1, guidance=0.5, guidance_mode="cfg++", guide=Gaussian())
    with pytest.raises(DDIMError, match="guide network"):            # the error names the way out
        DDIMSampler(Gaussian(), SCHED).sample(_noise(2), 5, guidance=2.0)


# --- the command line: the embedded model and its guide ---------------------------------------------------------
def _run_json(out):
    return json.loads((out / "run.json").read_text())


def cli(*argv):
    assert main(list(argv)) == 0


def _fails(capsys, *argv):
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_the_embedded_default_is_autoguided_by_its_weak_model(tmp_path, one_thread):
    from ddim.generate import EMBEDDED, load_model, recorded_guidance, weights_fingerprint
    rec = recorded_guidance(load_model("digits"))
    assert rec is not None and rec["guide"] == "embedded:digits-weak" and EMBEDDED["digits-weak"].exists()
    cli("sample", "--n", "4", "--steps", "5", "--out", str(tmp_path / "default"), "--quiet")
    cli("sample", "--n", "4", "--steps", "5", "--guide", "digits-weak", "--guidance", str(rec["guidance"]),
        "--out", str(tmp_path / "explicit"), "--quiet")
    cli("sample", "--n", "4", "--steps", "5", "--guide", "none", "--out", str(tmp_path / "plain"), "--quiet")
    cli("sample", "--n", "4", "--steps", "5", "--guidance", "1", "--out", str(tmp_path / "w1"), "--quiet")
    default, plain = _run_json(tmp_path / "default"), _run_json(tmp_path / "plain")
    assert (default["guide"], default["guidance"]) == ("embedded:digits-weak", rec["guidance"])
    assert default["guide_model"] == weights_fingerprint(load_model("digits-weak").model)
    assert "guide" not in plain and plain["guidance"] == 1.0 and "guide" not in _run_json(tmp_path / "w1")
    arr = {k: __import__("numpy").load(tmp_path / k / "samples.npz")["arr_0"]
           for k in ("default", "explicit", "plain", "w1")}
    assert (arr["default"] == arr["explicit"]).all() and (arr["plain"] == arr["w1"]).all()
    assert not (arr["default"] == arr["plain"]).all()


def test_a_guide_of_another_task_is_refused_before_anything_is_written(tmp_path, capsys):
    err = _fails(capsys, "sample", "--n", "2", "--guide", "digits-cond", "--guidance", "2", "--out", str(tmp_path / "x"))
    assert "guide 'digits-cond'" in err and "prediction" in err and not (tmp_path / "x").exists()
    err = _fails(capsys, "sample", "--n", "2", "--guide", "none", "--guidance", "2", "--out", str(tmp_path / "y"))
    assert "--guide" in err and not (tmp_path / "y").exists()
    err = _fails(capsys, "sample", "--ckpt", "digits-cond", "--class", "all", "--n", "2", "--guide", "digits-cond",
                 "--out", str(tmp_path / "w"))           # no recorded weight to fall back on
    assert "--guidance" in err and not (tmp_path / "w").exists()
    err = _fails(capsys, "sample", "--n", "2", "--guide", str(tmp_path / "missing.safetensors"), "--out",
                    str(tmp_path / "z"))
    assert "missing.safetensors" in err and not (tmp_path / "z").exists()


def test_the_recorded_guide_is_the_embedded_one_beside_a_folder_of_its_name(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits-weak").mkdir()                      # e.g. an earlier `ddim sample --out digits-weak`
    cli("sample", "--n", "2", "--steps", "3", "--out", "out", "--quiet")
    assert _run_json(tmp_path / "out")["guide"] == "embedded:digits-weak"


def test_a_guided_run_resumes_and_refuses_another_guide(tmp_path, ckpt, capsys, one_thread):
    import shutil

    from ddim import NoiseSchedule
    from ddim.checkpoint import save
    from ddim.models import PRESETS, UNet
    guide, out = tmp_path / "guide.safetensors", tmp_path / "run"
    shutil.copy(ckpt, guide)
    args = ("sample", "--ckpt", ckpt, "--guide", str(guide), "--guidance", "2", "--n", "3", "--steps", "2",
            "--out", str(out), "--quiet")
    cli(*args)
    first = (out / "samples.npz").read_bytes()
    (out / "images" / "000001.png").unlink()
    cli(*args)                                               # resumed: the same images
    assert (out / "samples.npz").read_bytes() == first
    torch.manual_seed(1)                                     # another network under the same file name
    save(guide, UNet(PRESETS["tiny"]), NoiseSchedule.linear())
    err = _fails(capsys, *args)
    assert "guide_model" in err and "--overwrite" in err
    err = _fails(capsys, *args[:3], "--guide", "none", *args[7:])
    assert "'guide'" in err                                   # a setting the new run drops is listed too


def test_guide_refusals_name_what_differs(ckpt, cond_ckpt, capsys, tmp_path):
    from ddim.generate import load_guide, load_model
    with pytest.raises(DDIMError, match="number of classes is 0, the model's is 3"):
        load_guide(ckpt, load_model(cond_ckpt))
    with pytest.raises(DDIMError, match="guide 'embedded:nothing'"):
        load_guide("embedded:nothing", load_model(ckpt))
    err = _fails(capsys, "sample", "--n", "2", "--guidance-mode", "cfg++", "--guidance", "0.5",
                 "--out", str(tmp_path / "x"))
    assert "--guidance-mode cfg++" in err and "--guide none" in err and not (tmp_path / "x").exists()


def test_a_recorded_relative_guide_is_read_from_the_models_folder(tmp_path, ckpt, monkeypatch, one_thread):
    import shutil

    from ddim.checkpoint import save
    from ddim.generate import load_model
    folder = tmp_path / "pair"
    folder.mkdir()
    shutil.copy(ckpt, folder / "weak.safetensors")
    m = load_model(ckpt)
    save(folder / "model.safetensors", m.model, m.schedule, prediction=m.prediction,
         metadata={"autoguidance": {"guide": "weak.safetensors", "guidance": 2.0}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                             # no weak.safetensors here
    cli("sample", "--ckpt", str(folder / "model.safetensors"), "--n", "2", "--steps", "2", "--out", "out", "--quiet")
    run = _run_json(elsewhere / "out")
    assert run["guide"] == str(folder / "weak.safetensors") and run["guidance"] == 2.0
