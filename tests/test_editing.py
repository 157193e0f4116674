"""Classifier-free guidance and editing (SDEdit, inpainting, class transfer) against exact expectations.
(DDIMSampler's other tests: the list at the top of test_sampler.py.)"""

import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.models import PRESETS, UNet, UNetConfig

SCHED = NoiseSchedule.linear()


class Labelled:
    """A toy conditional eps-network: eps = 0.1 x + c[y] (c[-1] for the null label); counts calls and batch."""

    def __init__(self):
        self.c = {-1: 0.0, 0: 0.3, 1: -0.5}
        self.calls = []

    def __call__(self, x, t, y=None):
        self.calls.append(x.shape[0])
        y = torch.full((x.shape[0],), -1) if y is None else y
        shift = torch.tensor([self.c[int(v)] for v in y], dtype=x.dtype).view(-1, *[1] * (x.ndim - 1))
        return 0.1 * x + shift


def test_guidance_is_the_cfg_combination_in_one_batched_call():
    x = torch.randn(3, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    for w, calls in [(1.0, [3]), (0.0, [3]), (2.5, [6])]:
        net = Labelled()
        den = DDIMSampler(net, SCHED).denoiser(y=y, guidance=w)
        eps, _ = den(x, 500, float(SCHED.alphas_cumprod[500]))
        cond = torch.tensor([0.3, -0.5, 0.3], dtype=torch.float64).view(-1, 1)
        torch.testing.assert_close(eps, 0.1 * x + w * cond)      # uncond + w (cond - uncond), uncond shift 0
        assert net.calls == calls and den.nfe == 1
    with pytest.raises(ValueError, match="needs class labels"):
        DDIMSampler(Labelled(), SCHED).sample(x, steps=3, guidance=2.0)


def test_guidance_composes_with_every_solver_and_a_real_conditional_unet():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**{**PRESETS["tiny"].to_dict(), "num_classes": 2})).eval()
    x_T = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for solver in ("ddim", "dpm++2m", "unipc", "plms"):
            out = DDIMSampler(net, SCHED).sample(x_T, steps=4, solver=solver, y=torch.tensor([0, 1]), guidance=3.0)
            assert torch.isfinite(out).all()


def _gaussian_model(x0):
    def model(x, t, y=None):
        a = SCHED.alphas_cumprod[t].to(x.dtype).view(-1, *[1] * (x.ndim - 1))
        return (x - a.sqrt() * x0) / (1 - a).sqrt()            # the exact eps for the point mass at x0
    return model


def test_sdedit_strength_zero_is_the_input_and_one_is_sampling_from_noise():
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    s = DDIMSampler(lambda x, t: 0.2 * x, SCHED)
    assert torch.equal(s.sdedit(x0, 0.0, steps=10), x0)
    g = lambda: torch.Generator().manual_seed(3)                # noqa: E731
    z = torch.randn(x0.shape, generator=g(), dtype=torch.float64)
    torch.testing.assert_close(s.sdedit(x0, 1.0, steps=10, generator=g()), s.sample(z, steps=10), atol=0, rtol=0)
    half = s.sdedit(x0, 0.5, steps=10, generator=g(), eta=1.0)
    assert half.shape == x0.shape and torch.isfinite(half).all()
    # with the exact eps of a point mass, any strength returns to that point (eq. 12 is exact there)
    target = torch.randn_like(x0)
    torch.testing.assert_close(DDIMSampler(_gaussian_model(target), SCHED).sdedit(x0, 0.4, steps=10, generator=g()),
                               target, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="strength must be"):
        s.sdedit(x0, 1.5)
    offset = s.sdedit(x0, 0.5, steps=10, steps_offset=1, generator=g())    # the offset moves the taus once
    torch.testing.assert_close(offset, s.sdedit(x0, 0.5, steps=10, skip=(s.taus(10) + 1).tolist(), generator=g()),
                               atol=0, rtol=0)


@pytest.mark.parametrize("solver, resample", [("ddim", 1), ("ddim", 3), ("dpm++2m", 1)])
def test_inpainting_keeps_the_known_pixels_exactly(solver, resample):
    x0 = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :4] = 1                                          # keep the left half
    net = Labelled()
    out = DDIMSampler(net, SCHED).inpaint(x0, mask, steps=6, solver=solver, resample=resample,
                                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[..., :4], x0[..., :4])
    assert not torch.allclose(out[..., 4:], x0[..., 4:])
    assert len(net.calls) == 6 * resample                       # RePaint: one more call per resample
    with pytest.raises(ValueError, match="resample > 1"):
        DDIMSampler(net, SCHED).inpaint(x0, mask, steps=6, solver="dpm++2m", resample=2)
    with pytest.raises(ValueError, match="mask values"):
        DDIMSampler(net, SCHED).inpaint(x0, mask * 2, steps=6)


def test_class_transfer_encodes_with_one_class_and_decodes_with_another():
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    s = DDIMSampler(Labelled(), SCHED)
    same = s.transfer(x0, 0, 0, steps=50)
    torch.testing.assert_close(same, s.sample(s.invert(x0, 50, y=0), 50, y=0), atol=0, rtol=0)
    rec_err = (same - x0).abs().mean()
    other = s.transfer(x0, 0, 1, steps=50, guidance=2.0)
    torch.testing.assert_close(other, s.sample(s.invert(x0, 50, y=0), 50, y=1, guidance=2.0), atol=0, rtol=0)
    assert (other - x0).abs().mean() > 10 * rec_err             # another class moves the image


def test_class_labels_follow_the_seed_rule_on_the_command_line(cond_ckpt, tmp_path):
    import json

    import numpy as np

    from ddim.commands import main
    common = ["sample", "--ckpt", cond_ckpt, "--steps", "3", "--quiet", "--guidance", "2"]
    assert main(common + ["--n", "6", "--class", "all", "--batch-size", "4", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "run.json").read_text())["labels"] == [0, 0, 1, 1, 2, 2]
    assert main(common + ["--n", "6", "--classes", "0", "0", "1", "1", "2", "2", "--batch-size", "6",
                          "--out", str(tmp_path / "b")]) == 0
    a, b = (np.load(tmp_path / d / "samples.npz")["arr_0"] for d in "ab")
    assert np.array_equal(a, b)                                  # same (seed, i, label): same image
    assert main(common + ["--n", "3", "--class", "0", "--out", str(tmp_path / "c")]) == 0
    c = np.load(tmp_path / "c" / "samples.npz")["arr_0"]
    assert np.array_equal(c[:2], a[:2]) and not np.array_equal(c[2], a[2])   # labels 0, 0, 0 vs 0, 0, 1
    assert main(common + ["--n", "2", "--class", "7", "--out", str(tmp_path / "d")]) == 2
    assert main(["sample", "--n", "2", "--class", "1", "--steps", "2", "--out", str(tmp_path / "e")]) == 2


@pytest.mark.parametrize("edit", [["sdedit", "--strength", "0.5"], ["inpaint", "--mask", "center", "--resample", "2"],
                                  ["transfer", "--from-class", "0", "--to-class", "2", "--guidance", "2"]])
def test_edit_commands_write_inputs_and_results(cond_ckpt, tmp_path, edit):
    import numpy as np
    from PIL import Image

    from ddim.commands import main
    from ddim.images import display_scale
    out = tmp_path / "e.png"
    assert main(["edit", *edit, "--ckpt", cond_ckpt, "--input", "digits", "--n", "3", "--steps", "3",
                 "--out", str(out)]) == 0
    z = display_scale(16)
    assert np.asarray(Image.open(out)).shape[:2] == ((2 + 2 * 18) * z, (2 + 3 * 18) * z)
    assert main(["edit", *edit, "--ckpt", cond_ckpt, "--input", "digits", "--n", "3", "--out", str(out)]) == 2
