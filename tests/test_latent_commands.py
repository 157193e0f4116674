"""`ddim encode / reconstruct / edit` with --prompt on a latent pipeline folder (the tiny random Stable Diffusion
pipeline of tests/tiny_pipeline.py, nothing downloaded): each command equals the library's walk between the VAE's
encoder and decoder under the prompt's embeddings; latent inversion with BDIA and EDICT is exact in float64 with and
without guidance, and DDIM's follows eq. 13 step by step; bad prompt, transfer and mask input is one line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddim import DDIMSampler
from ddim.checkpoint import load
from ddim.commands import main
from ddim.config import SampleConfig
from ddim.evaluation import reconstruction_mse
from ddim.generate import decode, encode, latents_of, sample_generators
from ddim.images import load_images, save_image_grid

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

PROMPT, TARGET, NEGATIVE = "a photo of a cat", "the red dog", "blue"


@pytest.fixture(scope="module")
def pipe(sd_pipeline, one_thread):
    """(folder, loaded pipeline, the input images [2, 3, 32, 32] the commands read from --input digits)."""
    folder = sd_pipeline[1]
    return folder, load(folder), load_images("digits", 3, 32, n=2)


def _embed(loaded, *texts):
    return [loaded.encode_prompt([t]) for t in texts]


def _grid_equals(path, tmp_path, images):
    """The PNG the command wrote equals the grid of `images` [N, C, H, W] (uint8 rounding of roundoff aside)."""
    want = save_image_grid(images, tmp_path / "want.png", nrow=len(images) // 2, scale="auto")
    got, want = (np.asarray(Image.open(p)).astype(int) for p in (path, want))
    assert got.shape == want.shape and np.abs(got - want).max() <= 1


# --- each command's prompt path, end to end ----------------------------------------------------------------------
@pytest.mark.parametrize("flags, solver, refine", [([], "ddim", 0), (["--refine", "2"], "ddim", 2),
                                                    (["--solver", "edict"], "edict", 0)])
def test_encode_with_a_prompt_inverts_the_vae_latents_under_it(pipe, tmp_path, flags, solver, refine):
    folder, loaded, x0 = pipe
    out = tmp_path / "z.npz"
    assert main(["encode", "--ckpt", str(folder), "--input", "digits", "--n", "2", "--steps", "4", "--prompt", PROMPT,
                 "--negative-prompt", NEGATIVE, "--guidance", "3", "--quiet", "--out", str(out), *flags]) == 0
    z = np.load(out)
    assert str(z["prompt"]) == PROMPT and str(z["negative_prompt"]) == NEGATIVE and float(z["guidance"]) == 3
    cond, uncond = _embed(loaded, PROMPT, NEGATIVE)
    want = DDIMSampler(loaded.model, loaded).invert(loaded.latent.encode(x0), 4, solver=solver, refine=refine,
                                                     cond=cond, uncond=uncond, guidance=3)
    got = torch.from_numpy(z["latents"])
    assert got.shape == (2, 4, 16, 16)
    torch.testing.assert_close(got, want if solver == "ddim" else want.x, atol=1e-5, rtol=1e-5)
    if solver == "edict":
        torch.testing.assert_close(torch.from_numpy(z["latents_y"]), want.y, atol=1e-5, rtol=1e-5)
    unguided = DDIMSampler(loaded.model, loaded).invert(loaded.latent.encode(x0), 4, solver=solver, refine=refine,
                                                         cond=cond)
    assert not torch.allclose(got, unguided if solver == "ddim" else unguided.x, atol=1e-3)    # w = 3 was used


def test_reconstruct_with_a_prompt_reports_pixel_mse_and_exact_solvers_reach_the_vae_floor(pipe, tmp_path, capsys):
    folder, loaded, x0 = pipe
    base = ["reconstruct", "--ckpt", str(folder), "--input", "digits", "--n", "2", "--steps", "3", "5",
            "--prompt", PROMPT, "--guidance", "3"]
    assert main(base + ["--out", str(tmp_path / "ddim")]) == 0
    assert main(base + ["--solver", "bdia", "--out", str(tmp_path / "bdia")]) == 0
    floor = reconstruction_mse(x0, loaded.latent.decode(loaded.latent.encode(x0)))     # the VAE's own round trip
    assert f"VAE alone (encode, decode): per-dimension MSE {floor:.6f}" in capsys.readouterr().out
    ddim, bdia = (json.loads((tmp_path / d / "mse.json").read_text()) for d in ("ddim", "bdia"))
    assert set(ddim) == set(bdia) == {"3", "5"}
    for S in (3, 5):        # exact in latent space (to float32's roundoff): what is left is the VAE's own error
        assert abs(bdia[str(S)] - floor) < 1e-4 * floor, (bdia, floor, ddim)
        assert abs(ddim[str(S)] - floor) > 10 * abs(bdia[str(S)] - floor), (bdia, floor, ddim)
    cond, uncond = _embed(loaded, PROMPT, "")
    s = DDIMSampler(loaded.model, loaded)
    z0 = loaded.latent.encode(x0)
    rec = s.sample(s.invert(z0, 5, cond=cond, uncond=uncond, guidance=3), 5, cond=cond, uncond=uncond, guidance=3)
    assert ddim["5"] == pytest.approx(reconstruction_mse(x0, loaded.latent.decode(rec)), abs=1e-7)
    assert Image.open(tmp_path / "ddim" / "reconstructions.png").size[0] > 2 * 32


@pytest.mark.parametrize("edit", ["sdedit", "inpaint", "transfer"])
def test_edit_with_prompts_equals_the_library_edit_of_the_vae_latents(pipe, tmp_path, edit):
    folder, loaded, x0 = pipe
    flags = {"sdedit": ["--strength", "0.6"], "inpaint": ["--mask", "center", "--resample", "2"],
             "transfer": ["--target-prompt", TARGET, "--solver", "bdia"]}[edit]
    out = tmp_path / "e.png"
    assert main(["edit", edit, "--ckpt", str(folder), "--input", "digits", "--n", "2", "--steps", "4", "--prompt",
                 PROMPT, "--negative-prompt", NEGATIVE, "--guidance", "3", "--seed", "5", *flags,
                 "--out", str(out)]) == 0
    s = DDIMSampler(loaded.model, loaded)
    cond, uncond, target = _embed(loaded, PROMPT, NEGATIVE, TARGET)
    z0, gens = loaded.latent.encode(x0), sample_generators(5, range(2))
    shown = x0
    if edit == "sdedit":
        z = s.sdedit(z0, 0.6, 4, generator=gens, cond=cond, uncond=uncond, guidance=3)
    elif edit == "inpaint":
        mask = torch.ones(1, 1, 16, 16)
        mask[..., 4:12, 4:12] = 0                                 # 'center' at the latents' 16 x 16
        z = s.inpaint(z0, mask, 4, generator=gens, resample=2, cond=cond, uncond=uncond, guidance=3)
        torch.testing.assert_close(z * mask, z0 * mask, atol=0, rtol=0)      # kept latents end exactly as z0
        big = mask.repeat_interleave(2, -2).repeat_interleave(2, -1)
        shown = x0 * big + (big - 1)
    else:
        z = s.transfer(z0, steps=4, guidance=3, solver="bdia", cond=cond, target_cond=target, uncond=uncond)
    _grid_equals(out, tmp_path, torch.cat([shown, loaded.latent.decode(z)]))


def test_the_inpaint_mask_is_reduced_to_the_latents_by_the_minimum_over_each_block(pipe, tmp_path):
    from ddim.commands.edit import _mask, _model_mask
    _, loaded, _ = pipe
    m, shown = _model_mask("center", loaded)
    assert m.shape == (1, 1, 16, 16) and shown.shape == (1, 1, 32, 32)
    torch.testing.assert_close(m, _mask("center", 1, 16), atol=0, rtol=0)   # named masks: the same part
    pixels = np.full((32, 32), 255, np.uint8)
    pixels[5, 9] = 0                                                  # one hidden pixel: its 2 x 2 cell is hidden
    pixels[20, 20] = 128                                              # a grey pixel: its cell half kept
    Image.fromarray(pixels).save(tmp_path / "m.png")
    m, shown = _model_mask(str(tmp_path / "m.png"), loaded)
    want = torch.ones(16, 16)
    want[2, 4], want[10, 10] = 0, 128 / 255
    torch.testing.assert_close(m[0, 0], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(shown[0, 0, 4:6, 8:10], torch.zeros(2, 2), atol=0, rtol=0)


# --- exactness in latent space (issue #21) -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe64(pipe):
    """The pipeline in float64: its U-Net, VAE and the prompts' embeddings; the input's latents z0."""
    folder, _, x0 = pipe
    loaded = load(folder)
    loaded.model.double()
    loaded.latent.vae.double()
    cond, uncond = (e.double() for e in _embed(loaded, PROMPT, NEGATIVE))
    return loaded, latents_of(loaded, x0.double()), cond, uncond


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("solver", ["bdia", "edict"])
@pytest.mark.parametrize("w", [1.0, 3.0])
def test_latent_round_trip_of_the_exact_solvers_is_exact_in_float64(pipe64, solver, w):
    loaded, z0, cond, uncond = pipe64
    assert z0.dtype == torch.float64 and z0.shape == (2, 4, 16, 16)
    s = DDIMSampler(loaded.model, loaded)
    cfg = SampleConfig(steps=10, solver=solver, guidance=w)
    z = encode(s, z0, cfg, cond=cond, uncond=uncond)                   # what `ddim encode` / `reconstruct` call
    assert _rel(decode(s, z, cfg, cond=cond, uncond=uncond), z0) < 1e-9
    ddim = SampleConfig(steps=10, guidance=w)                             # DDIM on the same latents: not exact
    assert _rel(decode(s, encode(s, z0, ddim, cond=cond, uncond=uncond), ddim, cond=cond, uncond=uncond), z0) > 1e-6


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_latent_ddim_round_trip_follows_eq_13_then_eq_12(pipe64, w):
    """Encoding walks eq. 13 (alpha = 1 -> tau_1 -> ... -> tau_S, the network at the level each step starts from,
    tau_1 for clean data), decoding eq. 12 back to alpha = 1; eps guided as eps(neg) + w (eps(prompt) - eps(neg))."""
    loaded, z0, cond, uncond = pipe64
    s = DDIMSampler(loaded.model, loaded)
    cfg = SampleConfig(steps=10, guidance=w)
    a = s.schedule.alphas_cumprod
    taus = s.taus(10).tolist()

    def eps(x, t):
        with torch.no_grad():
            e_c, e_u = (loaded.model(x, t, encoder_hidden_states=c.expand(len(x), -1, -1)).sample
                        for c in (cond, uncond))
        return e_u + w * (e_c - e_u)

    def step(x, a_t, a_s, e):
        return a_s ** 0.5 * (x - (1 - a_t) ** 0.5 * e) / a_t ** 0.5 + (1 - a_s) ** 0.5 * e

    x = z0.clone()
    for (a_t, t_net), t_next in zip([(1.0, taus[0])] + [(float(a[t]), t) for t in taus[:-1]], taus):
        x = step(x, a_t, float(a[t_next]), eps(x, t_net))
    z = encode(s, z0, cfg, cond=cond, uncond=uncond)
    assert _rel(z, x) < 1e-10
    for t, t_to in zip(taus[::-1], taus[-2::-1] + [None]):
        x = step(x, float(a[t]), 1.0 if t_to is None else float(a[t_to]), eps(x, t))
    assert _rel(decode(s, z, cfg, cond=cond, uncond=uncond), x) < 1e-10


# --- bad input: one line, nothing written ------------------------------------------------------------------------
def _refused(capsys, argv, words):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], err


def test_prompt_transfer_and_mask_bad_input_is_one_line(pipe, ckpt, cond_ckpt, tmp_path, capsys):
    folder = pipe[0]
    out = tmp_path / "o.png"
    for argv in (["encode", "--ckpt", ckpt, "--input", "digits", "--prompt", "a", "--out", tmp_path / "z.npz"],
                 ["reconstruct", "--ckpt", ckpt, "--input", "digits", "--prompt", "a", "--out", tmp_path / "r"],
                 ["edit", "sdedit", "--ckpt", ckpt, "--input", "digits", "--prompt", "a", "--out", out],
                 ["edit", "inpaint", "--input", "digits", "--prompt", "a", "--out", out],
                 ["edit", "transfer", "--ckpt", cond_ckpt, "--input", "digits", "--prompt", "a",
                  "--target-prompt", "b", "--out", out]):
        _refused(capsys, argv, ["--prompt", "takes no prompt"])          # unconditional and class models
    _refused(capsys, ["edit", "transfer", "--ckpt", folder, "--input", "digits", "--target-prompt", "a",
                      "--out", out], ["--target-prompt", "with --prompt"])
    _refused(capsys, ["edit", "transfer", "--ckpt", folder, "--input", "digits", "--prompt", "a", "--out", out],
             ["--target-prompt"])
    _refused(capsys, ["edit", "transfer", "--ckpt", folder, "--input", "digits", "--prompt", "a", "--from-class",
                      "1", "--target-prompt", "b", "--out", out], ["--prompt", "--from-class"])
    _refused(capsys, ["edit", "transfer", "--ckpt", cond_ckpt, "--input", "digits", "--to-class", "1",
                      "--out", out], ["--from-class"])
    _refused(capsys, ["edit", "sdedit", "--ckpt", folder, "--input", "digits", "--out", out], ["--prompt"])
    np.save(tmp_path / "bad.npy", np.ones((5, 5), np.float32))
    _refused(capsys, ["edit", "inpaint", "--ckpt", folder, "--input", "digits", "--prompt", "a", "--mask",
                      tmp_path / "bad.npy", "--out", out], ["--mask", "bad.npy", "5x5", "32x32"])
    for argv in (["encode", "--ckpt", folder, "--input", "digits", "--prompt", "a", "--dtype", "float64", "--out",
                  tmp_path / "z.npz"],
                 ["edit", "sdedit", "--ckpt", folder, "--input", "digits", "--prompt", "a", "--dtype", "float64",
                  "--out", out]):
        _refused(capsys, argv, ["--dtype float64", "latent pipeline"])   # named before the pipeline loads
    assert not out.exists() and not (tmp_path / "z.npz").exists() and not (tmp_path / "r").exists()
