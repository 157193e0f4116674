"""ddim.generate: samples are a function of (seed, index), not of the batch; the automatic batch size fits the
memory budget; the network's fast path (`generate.network`: channels_last, bf16 autocast, weights cast once,
torch.compile) keeps the samples of float32 eager. (Run manifests and resuming: test_runs.py; the sampler
itself: test_sampler.py.)"""

import numpy as np
import pytest
import torch
from PIL import Image

from ddim import DDIMSampler, NoiseSchedule
from ddim.images import to_uint8
from ddim.commands import main
from ddim.generate import CPU_AUTO_BATCH, auto_batch_size, batch_from_memory, cast_matmul_weights, network
from ddim.models import PRESETS, UNet

SCHED = NoiseSchedule.linear()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = UNet(PRESETS["tiny"]).eval()
    with torch.no_grad():     # shrink the output so that 10 steps stay in a sensible range for a random net
        m.conv_out.weight.mul_(0.1)
    return m


def _sample(fn, x_T):
    return DDIMSampler(fn, SCHED).sample(x_T, steps=10)


def test_channels_last_matches_float32(model):
    x_T = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = _sample(network(model), x_T)
    out = _sample(network(model, channels_last=True), x_T)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert out.dtype == torch.float32


def test_bf16_autocast_stays_close_and_returns_float32(model):
    x_T = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = _sample(network(model), x_T)
    out = _sample(network(model, "bfloat16", channels_last=True), x_T)
    assert out.dtype == torch.float32                    # the sampler's arithmetic stays float32
    err = (out - ref).abs().max().item()
    assert 0 < err < 0.1, err                            # bf16 has 8 mantissa bits: close, not equal


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weights_cast_once_give_what_autocast_gives_bit_for_bit(model, dtype):
    # the low-precision path stores conv/linear weights in the low dtype instead of letting autocast recast
    # them at every call; that must not change a single bit, nor the caller's model
    torch.manual_seed(2)
    cond = UNet(PRESETS["tiny"].__class__(**{**PRESETS["tiny"].to_dict(), "num_classes": 3})).eval()
    for net, y in ((model, None), (cond, torch.tensor([0, 2, -1]))):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        cast = cast_matmul_weights(net, dtype)
        x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 500, 999])
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            ref, out = net(x, t, y), cast(x, t, y)
        assert torch.equal(out, ref)
        assert cast.conv_in.weight.dtype == dtype and cast.norm_out.weight.dtype == torch.float32
        assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in net.state_dict().items())


def test_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        network(torch.nn.Identity(), "int8")


@pytest.mark.slow
def test_compiled_network_gives_the_same_images(model):
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = to_uint8(_sample(network(model), x_T))
    out = to_uint8(_sample(network(model, compile=True), x_T))
    assert (ref.int() - out.int()).abs().max() <= 1      # same images up to a rounding flip


def test_sample_is_a_function_of_seed_and_index_not_of_batch(ckpt, tmp_path):
    common = ["sample", "--ckpt", ckpt, "--n", "5", "--steps", "3", "--eta", "0.5", "--quiet", "--seed", "3"]
    assert main(common + ["--batch-size", "5", "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--batch-size", "2", "--out", str(tmp_path / "b")]) == 0
    assert main(common + ["--batch-size", "auto", "--out", str(tmp_path / "auto")]) == 0
    a, b = np.load(tmp_path / "a" / "samples.npz")["arr_0"], np.load(tmp_path / "b" / "samples.npz")["arr_0"]
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(a, np.load(tmp_path / "auto" / "samples.npz")["arr_0"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "images" / "000004.png")), a[4])
    assert (tmp_path / "a" / "grid.png").exists()
    # A different seed gives different images.
    assert main(common[:-1] + ["4", "--out", str(tmp_path / "c")]) == 0
    assert not np.array_equal(a, np.load(tmp_path / "c" / "samples.npz")["arr_0"])


def test_batch_from_memory_fits_the_budget():
    mib = 2 ** 20
    assert batch_from_memory(1000 * mib, 10 * mib, limit=10_000) == 80        # 80% of 1000 MiB / 10 MiB
    assert batch_from_memory(1000 * mib, 7 * mib, limit=10_000) == 112       # 114 -> multiple of 8
    assert batch_from_memory(1000 * mib, 10 * mib, limit=50) == 48           # capped by the images to make
    assert batch_from_memory(100 * mib, 10 * mib, limit=50) == 8             # small: kept as is
    assert batch_from_memory(13 * mib, 10 * mib, limit=50) == 1              # 10.4 MiB usable
    with pytest.raises(ValueError, match="not even one sample fits"):
        batch_from_memory(5 * mib, 10 * mib, limit=50)
    assert auto_batch_size(lambda x, t: x, (3, 8, 8), "cpu", limit=1000) == CPU_AUTO_BATCH
    assert auto_batch_size(lambda x, t: x, (3, 8, 8), "cpu", limit=5) == 5



def test_the_embedded_student_loads_by_name_and_samples_in_its_one_recorded_step(tmp_path):
    """`--ckpt digits-cond-distilled` is the shipped one-step student: its recorded grid is one step from T - 1,
    its guidance is baked in (1.5), and `ddim sample` makes exactly one network call per batch with it."""
    import json
    from ddim.generate import load_model, recorded_sampling
    student = load_model("digits-cond-distilled")
    assert recorded_sampling(student) == {"steps": 1, "skip": (999,)}
    assert student.metadata["distilled"]["guidance"] == 1.5 and student.config.num_classes == 10
    calls = []
    student.model.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    out = DDIMSampler(student.model, student.schedule, student.prediction).sample(x, steps=1, skip=[999],
                                                                                  y=torch.arange(4))
    assert len(calls) == 1 and out.shape == x.shape and bool(torch.isfinite(out).all())
    assert main(["sample", "--ckpt", "digits-cond-distilled", "--class", "all", "--n", "10", "--quiet",
                 "--out", str(tmp_path / "s")]) == 0
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["steps"] == 1 and run["skip"] == [999]
