"""Evaluation commands on a tiny random 1-channel model: rows, files, resumption, the metric plumbing against
independent truths (a perfect generator scores ~0, noise scores high), and clear errors for bad input."""

import csv
import math
import re

import numpy as np
import pytest
import torch

from ddim import NoiseSchedule
from ddim import evaluation as ev
from ddim.checkpoint import save
from ddim.commands import build_parser
from ddim.config import SampleConfig
from ddim.evaluation import encode as ev_encode, reconstruction_mse, table_quality, table_reconstruction, table_solvers
from ddim.data import digits
from ddim.generate import load_model
from ddim.models import UNet, UNetConfig
from ddim.sampling import SOLVERS, DDIMSampler, Solver
from ddim.sampling.steps import ddim_step


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny1.safetensors"
    save(path, UNet(UNetConfig(16, 1, 1, 32, (1, 2), 1, (8,), 0.0)), NoiseSchedule.linear())
    return load_model(path)


@pytest.fixture(scope="module")
def real():
    return digits(16).images


def _projection_metric(reference: torch.Tensor, dim: int = 8) -> ev.FeatureMetric:
    """A Frechet distance in a fixed random projection of the pixels: independent of any trained network."""
    w = torch.randn(reference[0].numel(), dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    features = lambda x: (x.flatten(1).double() @ w).numpy()   # noqa: E731
    from ddim.metrics.fid import feature_statistics
    mu, sigma = feature_statistics(features(reference))
    return ev.FeatureMetric("projection Frechet distance", features, mu, sigma, "real digits")


def test_metric_scores_a_perfect_generator_near_zero_and_noise_high(real):
    m = _projection_metric(real)
    assert abs(m.distance(real)) < 1e-8 * np.trace(m.sigma)         # the reference itself: exactly 0 up to round-off
    half = m.distance(real[::2])                                     # a different sample of the same data
    noise = m.distance(torch.randn(len(real) // 2, *real.shape[1:], generator=torch.Generator().manual_seed(0)))
    assert half < 0.05 * noise
    assert noise > np.trace(m.sigma)                                 # far: of the order of the data's own spread


def test_classifier_metric_perfect_generator_and_noise(real, tmp_path, monkeypatch):
    from ddim.metrics import classifier
    if classifier.CLASSIFIER_WEIGHTS.exists():
        clf = classifier.load_digits_classifier()
    else:   # a briefly trained one: any fixed feature map must score the reference itself ~0
        clf, _ = classifier.train_digits_classifier(epochs=1)
        monkeypatch.setattr(classifier, "load_digits_classifier", lambda *a, **k: clf)
    m = ev.classifier_metric("digits", cache=tmp_path)
    assert abs(m.distance(real)) < 1e-6 * max(np.trace(m.sigma), 1.0)
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert m.distance(real[1::2]) < 0.1 * m.distance(noise)
    assert list(tmp_path.glob("reference-classifier-*.npz"))        # cached, and read back unchanged
    m2 = ev.classifier_metric("digits", cache=tmp_path)
    assert np.allclose(m.mu, m2.mu) and m.label == "classifier Frechet distance"
    # the same number evaluate_digits reports (its reference is all 1797 real digits too)
    x = real[:300] + 0.3 * torch.randn(300, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    got = classifier.evaluate_digits(x, clf)["frechet_distance_classifier"]
    assert m.distance(x.clamp(-1, 1)) == pytest.approx(got, rel=1e-6)


def test_cells_share_x_T_and_do_not_depend_on_batch_size(loaded):
    a = ev.generate_samples(loaded, 3, SampleConfig(steps=2, batch_size=3))
    b = ev.generate_samples(loaded, 5, SampleConfig(steps=2, batch_size=2))
    assert torch.equal(a, b[:3])
    # eta = 0 at S = 1 is one eq. 12 step from x_T to alpha = 1: x0_pred of sample i's own x_T
    c = ev.generate_samples(loaded, 2, SampleConfig(steps=1))
    d = ev.generate_samples(loaded, 2, SampleConfig(steps=1, eta=1.0))
    assert torch.allclose(c, d)                                       # sigma = 0 on the last step


def test_table1_rows_files_and_resume(loaded, real, tmp_path, monkeypatch):
    m = _projection_metric(real)
    rows = ev.table1(loaded, steps=(1, 3), etas=(0.0, 1.0), n=4, metric=m, out=tmp_path, progress=False)
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        ("eta = 0", 1), ("eta = 0", 3), ("eta = 1", 1), ("eta = 1", 3), ("sigma-hat", 1), ("sigma-hat", 3)]
    assert all(r["n"] == 4 and np.isfinite(r["distance"]) and r["metric"] == m.label for r in rows)
    for ext in ("md", "csv", "png", "json"):
        assert (tmp_path / f"table1.{ext}").stat().st_size > 0
    with open(tmp_path / "table1.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    md = (tmp_path / "table1.md").read_text()
    assert "| sigma-hat |" in md and "S = 3" in md and "projection Frechet distance" in md
    assert (tmp_path / "table1.png").read_bytes()[:4] == b"\x89PNG"
    # The score of a cell is the metric of that cell's samples.
    x = ev.generate_samples(loaded, 4, SampleConfig(steps=3, eta=1.0))
    assert rows[3]["distance"] == pytest.approx(m.distance(x), rel=1e-9)

    # A rerun with the same settings reuses every cell without sampling; other settings need overwrite.
    monkeypatch.setattr(loaded.model, "forward", lambda *a, **k: pytest.fail("resumed run sampled again"))
    again = ev.table1(loaded, steps=(1, 3), etas=(0.0, 1.0), n=4, metric=m, out=tmp_path, progress=False)
    assert [r["distance"] for r in again] == pytest.approx([r["distance"] for r in rows])
    with pytest.raises(FileExistsError, match="overwrite"):
        ev.table1(loaded, steps=(1,), etas=(0.0,), n=5, metric=m, out=tmp_path, progress=False)


def test_table2_rows_files_and_value(loaded, real, tmp_path):
    rows = ev.table2(loaded, SampleConfig(batch_size=2), steps=(1, 2), images=real, n=3, out=tmp_path,
                     progress=False)
    assert [r["steps"] for r in rows] == [1, 2] and all(r["n"] == 3 for r in rows)
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"table2.{ext}").stat().st_size > 0
    # Batched means combine to the mean over all images: compare with one unbatched encode/decode.
    s = DDIMSampler(loaded.model, loaded.schedule)
    x0 = real[:3]
    assert rows[1]["mse"] == pytest.approx(reconstruction_mse(x0, s.sample(s.invert(x0, 2), 2, 0.0)), rel=1e-5)
    assert "| ddim | " in (tmp_path / "table2.md").read_text()


def test_table2_has_a_row_per_solver_and_reuses_finished_cells(loaded, real, tmp_path, monkeypatch):
    kw = dict(steps=(2, 3), images=real, n=3, out=tmp_path, progress=False)
    first = ev.table2(loaded, SampleConfig(batch_size=3), solvers=["ddim"], **kw)
    calls = []
    monkeypatch.setattr(table_reconstruction, "encode", lambda *a, **k: calls.append(a[2].solver) or ev_encode(*a, **k))
    both = ev.table2(loaded, SampleConfig(batch_size=3), solvers=["ddim", "dpm++2m"], **kw)
    assert calls == ["dpm++2m", "dpm++2m"]                          # ddim's cells came from the CSV
    assert [(r["solver"], r["steps"]) for r in both] == [("ddim", 2), ("ddim", 3), ("dpm++2m", 2), ("dpm++2m", 3)]
    assert [r["mse"] for r in both[:2]] == pytest.approx([r["mse"] for r in first])
    assert both[2]["mse"] != both[0]["mse"]                          # another solver, another error
    text = (tmp_path / "table2.md").read_text()
    assert "| solver | S = 2 | S = 3 |" in text and "| ddim | " in text and "| dpm++2m | " in text
    ev.table2(loaded, SampleConfig(batch_size=3), solvers=["dpm++2m"], **kw)
    ev.table2(loaded, SampleConfig(batch_size=3), solvers=["ddim"], **kw)
    assert calls == ["dpm++2m", "dpm++2m"]           # cells a run did not ask for stayed in the CSV for the next
    with pytest.raises(ValueError, match="solver must be one of"):
        ev.table2(loaded, solvers=["euler"], steps=(2,), images=real, n=3, progress=False)


def test_timing_rows_files_and_fit(loaded, tmp_path):
    rows = ev.timing(loaded, SampleConfig(batch_size=2), steps=(1, 2, 4), repeats=1, warmup=0, out=tmp_path,
                     progress=False)
    assert [r["steps"] for r in rows] == [1, 2, 4]
    assert all(r["seconds_per_image"] > 0 for r in rows)               # no timed assertions beyond positivity
    assert "R^2" in (tmp_path / "timing.md").read_text() and (tmp_path / "timing.png").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        ev.timing(loaded, SampleConfig(batch_size=2), steps=(1, 2), repeats=1, out=tmp_path, progress=False)


def test_linear_fit_against_known_lines():
    s = np.array([10, 20, 50, 100, 1000.0])
    slope, intercept, r2 = ev.linear_fit(s, 0.003 * s + 0.02)
    assert slope == pytest.approx(0.003) and intercept == pytest.approx(0.02) and r2 == pytest.approx(1.0)
    _, _, r2_noise = ev.linear_fit(s, np.array([1.0, -1.0, 1.0, -1.0, 0.0]))
    assert r2_noise < 0.5
    with pytest.raises(ValueError):
        ev.linear_fit([5, 5], [1, 2])


@pytest.mark.parametrize("kwargs, match", [
    (dict(etas=(-0.1,)), "eta"),
    (dict(steps=(0,)), "steps"),
    (dict(steps=(1001,)), "steps"),
    (dict(metric="lpips"), "metric"),
    (dict(n=1), "n must be"),
    (dict(etas=(), sigma_hat=False), "etas"),
    (dict(etas=(3.0,)), "eta"),                     # eq. 12 needs 1 - a_s - sigma^2 >= 0
    (dict(metric="inception"), "reference"),
])
def test_table1_bad_input(loaded, kwargs, match):
    args = dict(steps=(2,), etas=(0.0,), n=4, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ev.table1(loaded, **args)


def test_inception_without_weights_says_what_to_pass(loaded, tmp_path, monkeypatch):
    monkeypatch.delenv("DDIM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="inception_weights.*(--inception-weights|DDIM_INCEPTION_WEIGHTS)"):
        ev.table1(loaded, steps=(2,), n=4, metric="inception", reference=str(stats), progress=False)


def test_table2_and_timing_bad_input(loaded):
    with pytest.raises(ValueError, match="steps"):
        ev.table2(loaded, steps=(2000,), images=torch.zeros(2, 1, 16, 16), progress=False)
    with pytest.raises(ValueError, match="images"):
        ev.table2(loaded, steps=(2,), images=torch.zeros(2, 3, 16, 16), progress=False)
    with pytest.raises(ValueError, match="repeats"):
        ev.timing(loaded, steps=(2,), repeats=0, progress=False)


def _parser():
    return build_parser()


def test_cli_commands_run_and_have_examples(loaded, real, tmp_path, monkeypatch, capsys):
    p = _parser()
    for name in ("table1", "table2", "timing"):
        with pytest.raises(SystemExit):
            p.parse_args(["eval", name, "--help"])
        assert f"example: ddim eval {name}" in capsys.readouterr().out
    ckpt = ["--ckpt", str(loaded.metadata.get("path", "")) or _save(loaded, tmp_path), "--device", "cpu"]
    # the CLI's metric is a name; give table1 the independent projection metric instead of the classifier
    monkeypatch.setattr(table_quality, "make_metric", lambda *a, **k: _projection_metric(real))
    for argv in (["eval", "table1", "--steps", "1", "2", "--etas", "0", "--n", "3", "--quiet"],
                 ["eval", "table2", "--steps", "1", "--n", "2", "--quiet"],
                 ["eval", "timing", "--steps", "1", "2", "--batch-size", "1", "--repeats", "1", "--quiet"]):
        args = p.parse_args(argv + ckpt + ["--out", str(tmp_path / "eval")])
        args.fn(args)
        assert (tmp_path / "eval" / f"{argv[1]}.png").exists()
    out = capsys.readouterr().out
    assert "sigma-hat" in out and "| ddim |" in out and "R^2" in out


def _save(loaded, tmp_path):
    path = tmp_path / "m.safetensors"
    save(path, loaded.model, loaded.schedule)
    return str(path)


def test_solvers_table_rows_files_and_resume(loaded, real, tmp_path, monkeypatch):
    m = _projection_metric(real)
    rows = ev.solvers_table(loaded, SampleConfig(skip="trailing", batch_size=4), solvers=("ddim", "dpm++2m"),
                            nfes=(2, 3), n=4, metric=m, out=tmp_path, progress=False)
    assert [(r["solver"], r["nfe"]) for r in rows] == [("ddim", 2), ("ddim", 3), ("dpm++2m", 2), ("dpm++2m", 3)]
    assert "| dpm++2m |" in (tmp_path / "solvers.md").read_text() and (tmp_path / "solvers.png").exists()
    x = ev.generate_samples(loaded, 4, SampleConfig(steps=3, skip="trailing", solver="dpm++2m"))
    assert rows[3]["distance"] == pytest.approx(m.distance(x), rel=1e-9)
    monkeypatch.setattr(loaded.model, "forward", lambda *a, **k: pytest.fail("resumed run sampled again"))
    again = ev.solvers_table(loaded, SampleConfig(skip="trailing", batch_size=4), solvers=("ddim", "dpm++2m"),
                             nfes=(2, 3), n=4, metric=m, out=tmp_path, progress=False)
    assert [r["distance"] for r in again] == pytest.approx([r["distance"] for r in rows])


class _Heun(Solver):
    """Heun's method on the DDIM ODE (eq. 14), written here, outside the package: an Euler step, then the mean of
    the eps at both ends. Two network calls per step, one on the last (its end, alpha = 1, has no level)."""

    def step(self, denoise, x, i, noise):
        s = self.plan[i]
        eps, x0 = denoise(x, s.t, s.a_t)
        x_s = ddim_step(x0, eps, s.a_s)
        if i + 1 == len(self.plan):
            return x_s, x0
        eps_s, _ = denoise(x_s, self.plan[i + 1].t, s.a_s)
        e = (eps + eps_s) / 2
        return ddim_step((x - math.sqrt(1 - s.a_t) * e) / math.sqrt(s.a_t), e, s.a_s), x0


def test_eval_solvers_reports_the_network_calls_a_two_call_solver_made(loaded, real, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(SOLVERS, "heun", lambda eta, variance: _Heun())   # how a new solver is added
    calls = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x, t, *a: calls.append(len(x)) or forward(self, x, t, *a))
    monkeypatch.setattr(table_solvers, "make_metric", lambda *a, **k: _projection_metric(real))
    out = tmp_path / "eval"
    args = _parser().parse_args(["eval", "solvers", "--solvers", "ddim", "heun", "--nfes", "2", "3", "--n", "4",
                                 "--batch-size", "4", "--quiet", "--ckpt", _save(loaded, tmp_path), "--out", str(out)])
    args.fn(args)
    with open(out / "solvers.csv") as f:
        rows = list(csv.DictReader(f))
    # one batch per cell, so the network's own count of batched calls is the calls one sample took
    assert [(r["solver"], int(r["steps"]), int(r["nfe"])) for r in rows] == [
        ("ddim", 2, 2), ("ddim", 3, 3), ("heun", 2, 3), ("heun", 3, 5)]
    assert len(calls) == 2 + 3 + 3 + 5
    md = (out / "solvers.md").read_text()
    assert "| solver | NFE 2 | NFE 3 | NFE 5 |" in md
    assert re.search(r"\| ddim \| [^-|]+ \| [^-|]+ \| - \|", md) and re.search(r"\| heun \| - \| [^-|]+ \| [^-|]+ \|", md)
    assert "heun" in capsys.readouterr().out


# -- the inversion table (`ddim eval inversion`)

INV_METHODS = ["ddim", "ddim+refine1", "ddim+refine2", "plms", "bdia", "edict"]


class GaussianEps(torch.nn.Module):
    """The exact eps of a diagonal Gaussian fitted to the digits (per-pixel mean and variance): a true score, so
    the probability-flow ODE is the one the solvers discretise and refinement converges (a random network's
    eps is no score, and the fixed-point iteration need not contract for it)."""

    def __init__(self, data: torch.Tensor, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.register_buffer("mu", data.mean(0))
        self.register_buffer("var", data.var(0) + 1e-2)
        self.register_buffer("alphas", schedule.alphas_cumprod.clone())

    def forward(self, x, t):
        a = self.alphas[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.var + 1 - a)


def test_inversion_table_rows_calls_roundoff_refinement_and_files(real, tmp_path):
    from ddim.checkpoint.base import LoadedModel
    schedule = NoiseSchedule.linear()
    gaussian = LoadedModel(GaussianEps(real, schedule), schedule, "eps", UNetConfig(16, 1, 1, 32, (1, 2), 1, (8,), 0.0))
    rows = ev.inversion_table(gaussian, SampleConfig(batch_size=2), steps=(3, 6), methods=INV_METHODS,
                              dtypes=("float32", "float64"), images=real, n=3, out=tmp_path, progress=False)
    cell = {(r["method"], r["dtype"], r["steps"]): r for r in rows}
    assert len(rows) == len(INV_METHODS) * 2 * 2 and all(r["n"] == 3 and r["guidance"] == "1" for r in rows)
    for ext in ("md", "csv", "png", "json"):
        assert (tmp_path / f"inversion.{ext}").stat().st_size > 0
    # network calls per image, encode + decode: one per step for the one-call solvers; refine K adds K per
    # encoding step; BDIA decodes a coupled latent in S - 1; EDICT makes two per step each way
    for d in ("float32", "float64"):
        for S in (3, 6):
            want = {"ddim": (S, S), "ddim+refine1": (2 * S, S), "ddim+refine2": (3 * S, S), "plms": (S, S),
                    "bdia": (S, S - 1), "edict": (2 * S, 2 * S)}
            got = {m: (cell[m, d, S]["encode_calls"], cell[m, d, S]["decode_calls"]) for m in want}
            assert got == want and all(cell[m, d, S]["calls"] == sum(want[m]) for m in want)
    # an independent round trip: the sampler's own invert and sample on the same images
    s = DDIMSampler(gaussian.model, schedule)
    x0 = real[:3]
    assert cell["ddim", "float32", 6]["mse"] == pytest.approx(reconstruction_mse(x0, s.sample(s.invert(x0, 6), 6)),
                                                               rel=1e-4)
    for S in (3, 6):
        ddim32 = cell["ddim", "float32", S]["mse"]
        for m in ("bdia", "edict"):         # exact: float32 at its roundoff, float64 far below it
            assert cell[m, "float32", S]["mse"] < 1e-6 * ddim32
            assert cell[m, "float64", S]["mse"] < min(1e-20, 1e-6 * cell[m, "float32", S]["mse"])
        # refinement tightens DDIM's round trip (float64: no roundoff in the way)
        assert (cell["ddim+refine2", "float64", S]["mse"] < cell["ddim+refine1", "float64", S]["mse"]
                < cell["ddim", "float64", S]["mse"])
    text = (tmp_path / "inversion.md").read_text()
    assert "guidance 1, float64:" in text and "| ddim+refine2 | " in text
    assert "| 6 / 12 |" in text                                     # ddim's calls at S = 3 and 6


def test_inversion_table_resumes_and_keeps_cells_it_was_not_asked_for(loaded, real, tmp_path, monkeypatch):
    from ddim.evaluation import table_inversion
    kw = dict(steps=(2,), images=real, n=2, out=tmp_path, progress=False, dtypes=("float32",))
    first = ev.inversion_table(loaded, SampleConfig(batch_size=2), methods=["ddim", "bdia"], **kw)
    calls = []
    monkeypatch.setattr(table_inversion, "encode",
                        lambda *a, **k: calls.append((a[2].solver, k["refine"])) or ev_encode(*a, **k))
    both = ev.inversion_table(loaded, SampleConfig(batch_size=2), methods=["ddim", "bdia", "ddim+refine1"], **kw)
    assert calls == [("ddim", 1)]                                   # ddim's and bdia's cells came from the CSV
    assert [(r["method"], r["mse"]) for r in both[:2]] == [(r["method"], r["mse"]) for r in first]
    ev.inversion_table(loaded, SampleConfig(batch_size=2), methods=["edict"], **kw)
    ev.inversion_table(loaded, SampleConfig(batch_size=2), methods=["ddim", "bdia", "ddim+refine1", "edict"], **kw)
    assert calls == [("ddim", 1), ("edict", 0)]
    with open(tmp_path / "inversion.csv") as f:
        assert len(list(csv.DictReader(f))) == 4

    def fail(*a, **k):
        raise AssertionError("a finished cell called the network")
    monkeypatch.setattr(loaded.model, "forward", fail)
    again = ev.inversion_table(loaded, SampleConfig(batch_size=2), methods=["ddim", "bdia", "ddim+refine1", "edict"],
                               **kw)
    assert [r["calls"] for r in again] == [4, 3, 6, 8]


def test_inversion_table_guided_counts_a_2b_call_once(cond_ckpt, real, tmp_path):
    """Guidance w != 1 evaluates the network once on a batch of 2B (the unconditional and the conditional half):
    the sampler counts that as one call, so the calls do not double; the model's own forward count agrees."""
    cond = load_model(cond_ckpt)
    forwards = []
    hook = cond.model.register_forward_pre_hook(lambda m, args: forwards.append(len(args[0])))
    labels = torch.tensor([0, 2, 1])
    try:
        rows = ev.inversion_table(cond, SampleConfig(batch_size=3), steps=(4,), methods=["ddim", "bdia", "edict"],
                                  guidance=("1", "3", "cfg++:0.5"), dtypes=("float32",), images=real[:3],
                                  labels=labels, n=3, out=tmp_path, progress=False)
    finally:
        hook.remove()
    calls = {(r["method"], r["guidance"]): r["calls"] for r in rows}
    assert calls == {(m, g): c for g in ("1", "3", "cfg++:0.5") for m, c in (("ddim", 8), ("bdia", 7), ("edict", 16))}
    assert len(forwards) == sum(calls.values())                     # one forward per counted call ...
    assert forwards.count(6) == sum(c for (m, g), c in calls.items() if g != "1")   # ... guided ones on 2B
    mse = {(r["method"], r["guidance"]): r["mse"] for r in rows}
    assert mse["bdia", "3"] < 1e-8 and mse["ddim", "3"] > 1e3 * mse["bdia", "3"]
    # refinement does not combine with CFG++: those cells are left out, the others kept
    rows = ev.inversion_table(cond, SampleConfig(batch_size=3), steps=(4,), methods=["ddim", "ddim+refine1"],
                              guidance=("cfg++:0.5",), dtypes=("float32",), images=real[:3], labels=labels, n=3,
                              progress=False)
    assert [r["method"] for r in rows] == ["ddim"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=["euler"]), "methods: 'euler' is not an invertible solver"),
    (dict(methods=["dpm++2m-sde"]), "methods: 'dpm++2m-sde'"),
    (dict(methods=["ddim+refine0"]), "K >= 1"),
    (dict(methods=["bdia+refine1"]), "bdia inverts exactly"),
    (dict(dtypes=["float8"]), "dtypes: 'float8'"),
    (dict(guidance=["cfg++:2"]), "guidance: 'cfg++:2'"),
    (dict(guidance=["3"]), "guidance: '3' needs a class-conditional model"),      # an unconditional model
    (dict(steps=(2000,)), "steps"),
    (dict(n=0), "n must be"),
])
def test_inversion_table_bad_input_is_refused_before_anything_is_written(loaded, real, tmp_path, kwargs, match):
    args = dict(steps=(2,), images=real, n=2, out=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match=re.escape(match)):
        ev.inversion_table(loaded, **{**args, **kwargs})
    assert not (tmp_path / "o").exists()


def test_eval_inversion_cli(loaded, tmp_path, capsys):
    p = _parser()
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "inversion", "--help"])
    assert "example: ddim eval inversion" in capsys.readouterr().out
    args = p.parse_args(["eval", "inversion", "--ckpt", _save(loaded, tmp_path), "--device", "cpu", "--steps", "2",
                         "--methods", "ddim", "bdia", "--dtypes", "float64", "--n", "2", "--quiet",
                         "--out", str(tmp_path / "eval")])
    args.fn(args)
    out = capsys.readouterr().out
    assert "guidance 1, float64:" in out and "| bdia | " in out and (tmp_path / "eval" / "inversion.png").exists()
    from ddim.commands import main                                  # guidance 3 on an unconditional model
    assert main(["eval", "inversion", "--ckpt", _save(loaded, tmp_path), "--guidance", "3", "--n", "2",
                 "--out", str(tmp_path / "g")]) == 2
    assert "guidance: '3' needs a class-conditional model" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_eval_solvers_rows_name_grid_afs_interval_and_settings_and_guide_labels(cond_ckpt, tmp_path, monkeypatch):
    from ddim.generate import image_shape, load_model
    shape = image_shape(load_model(cond_ckpt))
    reference = torch.rand(32, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x, t, *a: calls.append((len(x), a[0].tolist() if a else None))
                        or forward(self, x, t, *a))
    monkeypatch.setattr(table_solvers, "make_metric", lambda *a, **k: _projection_metric(reference))
    out = tmp_path / "eval"
    args = _parser().parse_args(["eval", "solvers", "--solvers", "dpm++2m@optimized,afs", "ddim,gi=0:500",
                                 "restart@logsnr,k=1,inner=1", "--nfes", "4", "--n", "3", "--guidance", "2",
                                 "--batch-size", "3", "--quiet", "--ckpt", cond_ckpt, "--out", str(out)])
    args.fn(args)
    with open(out / "solvers.csv") as f:
        rows = list(csv.DictReader(f))
    nfe = {r["solver"]: int(r["nfe"]) for r in rows}
    assert nfe["dpm++2m@optimized,afs"] == 3 and nfe["ddim,gi=0:500"] == 4      # afs: 4 steps, 3 calls
    assert nfe["restart@logsnr,k=1,inner=1"] > 2 * 4 - 1                         # Heun's calls and the restart's
    assert len(calls) == sum(nfe.values())                                         # one batch per cell
    # guided calls are 2B with labels i % 3 (null labels first); outside the interval one call of B
    assert calls[0] == (6, [-1, -1, -1, 0, 1, 2])
    assert {n for n, _ in calls[3:7]} == {3, 6}
