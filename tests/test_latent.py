"""Latent text-to-image pipelines, built tiny and random here as diffusers' own pipeline tests build them (nothing
downloaded): ddim's guided sampling equals StableDiffusionPipeline's for DDIM, DPM-Solver++ and UniPC, with an eps
and a v-prediction U-Net; latent inversion follows eq. 13 (the network at the level a step starts from) where diffusers'
DDIMInverseScheduler evaluates it at the level the step goes to;
a saved pipeline folder loads through ddim.checkpoint.load with its own tokenizer and text encoder."""

import json

import numpy as np

import pytest
import torch

from ddim import DDIMSampler
from ddim.checkpoint import CheckpointError, LoadedPipeline, load, read_scheduler
from ddim.errors import DDIMError
from ddim.models.latent import LatentSpace, PromptEncoder
from tiny_pipeline import SD_SCHEDULER, components, save_pipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

def _embeddings(parts):
    enc = PromptEncoder(parts["tokenizer"], parts["text_encoder"])
    return enc(["a photo of a cat", "the red dog"]), enc(["", ""])


def _close_f32(got, want):
    """Within 1e-5 of the latents' scale (float32 on both sides; random tiny U-Nets drive them to |x| ~ 15)."""
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= 1e-5 * max(scale, 1.0), (err, scale)


SCHEDULERS = {"ddim": "DDIMScheduler", "dpm++2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("solver", sorted(SCHEDULERS))
def test_guided_latents_and_images_equal_stable_diffusion_pipelines(tmp_path, prediction, solver):
    parts = components(tmp_path, prediction)
    scheduler = getattr(diffusers, SCHEDULERS[solver]).from_config(parts["scheduler"].config)
    pipe = diffusers.StableDiffusionPipeline(**{**parts, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    emb, neg = _embeddings(parts)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    run = dict(prompt_embeds=emb, negative_prompt_embeds=neg, latents=latents, num_inference_steps=6,
               guidance_scale=7.5)
    want = pipe(**run, output_type="latent").images
    want_img = pipe(**run, output_type="pt").images

    settings = read_scheduler(scheduler, steps=6)
    assert settings.options["solver"] == solver
    sampler = DDIMSampler(parts["unet"], settings)
    got = sampler.sample(latents, **settings.options, cond=emb, uncond=neg, guidance=7.5)
    _close_f32(got, want)
    img = (LatentSpace(parts["vae"], slice_size=1).decode(got) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(img, want_img, atol=1e-4, rtol=0)


def test_the_sd_ddim_grid_is_uniform_with_steps_offset_1_to_alpha_0(tmp_path):
    parts = components(tmp_path)
    settings = read_scheduler(parts["scheduler"])             # no steps: the named grid
    assert settings.options == {"solver": "ddim", "final_alpha": "alpha_0", "skip": "uniform", "steps_offset": 1}
    pipe = diffusers.StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    emb, neg = _embeddings(parts)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    want = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, latents=latents, num_inference_steps=5,
                guidance_scale=7.5, output_type="latent").images
    got = DDIMSampler(parts["unet"], settings).sample(latents, 5, **settings.options, cond=emb, uncond=neg,
                                                      guidance=7.5)
    _close_f32(got, want)


def test_latent_inversion_follows_eq_13_and_diffusers_inverse_scheduler_is_one_step_off(tmp_path):
    parts = components(tmp_path)
    unet, emb = parts["unet"], _embeddings(parts)[0]
    latent = LatentSpace(parts["vae"])
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x_0 = latent.encode(images)
    assert x_0.shape == (2, 4, 16, 16)
    conf = dict(SD_SCHEDULER, set_alpha_to_one=True, steps_offset=0)
    settings = read_scheduler(diffusers.DDIMScheduler(**conf))
    sampler = DDIMSampler(unet, settings)
    steps = 10
    z = sampler.invert(x_0, steps, cond=emb)
    # eq. 13 step by step: from level a_t (x at tau_{i-1}, or clean data) to a_s, the network at the level the
    # step starts from (tau_1 for the first step: x is clean, evaluated where the network was trained)
    a = sampler.schedule.alphas_cumprod
    taus = sampler.taus(steps).tolist()
    x = x_0.double()
    levels = [(1.0, taus[0])] + [(float(a[t]), t) for t in taus[:-1]]
    with torch.no_grad():
        for (a_t, t_net), t_next in zip(levels, taus):
            eps = unet(x.float(), t_net, encoder_hidden_states=emb).sample.double()
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            a_s = float(a[t_next])
            x = a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * eps
    torch.testing.assert_close(z.double(), x, atol=1e-4, rtol=1e-4)

    def inverse_scheduler_walk(model, x_0):
        inv = diffusers.DDIMInverseScheduler(**{k: v for k, v in conf.items() if k != "set_alpha_to_one"})
        inv.set_timesteps(steps)
        assert sorted(inv.timesteps.tolist()) == taus                   # the same levels
        y = x_0.clone()
        with torch.no_grad():
            for t in inv.timesteps:
                y = inv.step(model(y, t), t, y).prev_sample
        return y

    # diffusers' loop is the same walk with the network evaluated at the level each step goes TO: one step off
    y = inverse_scheduler_walk(lambda v, t: unet(v, t, encoder_hidden_states=emb).sample, x_0)
    x = x_0.double()
    with torch.no_grad():
        for (a_t, _), t_next in zip(levels, taus):
            eps = unet(x.float(), t_next, encoder_hidden_states=emb).sample.double()
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            x = float(a[t_next]) ** 0.5 * x0 + (1 - float(a[t_next])) ** 0.5 * eps
    torch.testing.assert_close(y.double(), x, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(y, z, atol=1e-3)



def test_a_saved_pipeline_folder_loads_with_its_own_prompt_encoder(tmp_path):
    parts, folder = save_pipeline(tmp_path)
    loaded = load(folder)
    assert isinstance(loaded, LoadedPipeline) and loaded.prediction == "eps"
    assert loaded.scheduler.options["final_alpha"] == "alpha_0"
    emb = loaded.encode_prompt(["a photo of a cat", "the red dog"])
    torch.testing.assert_close(emb, _embeddings(parts)[0])
    half = load(folder, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16


def test_bad_pipelines_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model_index.json").write_text(json.dumps({"_class_name": "X", "vae": ["diffusers", "A"]}))
    with pytest.raises(CheckpointError, match="unet/") as e:
        load(tmp_path / "empty")
    assert "\n" not in str(e.value)
    with pytest.raises(DDIMError, match="slice_size"):
        LatentSpace(components(tmp_path)["vae"], slice_size=0)


def test_ddim_sample_with_a_prompt_runs_end_to_end_on_a_saved_pipeline_folder(tmp_path, capsys):
    from ddim.commands import main
    from ddim.generate import initial_noise, sample_generators
    from ddim.images import to_uint8

    parts, folder = save_pipeline(tmp_path)
    out = tmp_path / "s"
    args = ["sample", "--ckpt", str(folder), "--prompt", "a photo of a cat", "--negative-prompt", "the dog",
            "--guidance", "7.5", "--steps", "3", "--n", "2", "--seed", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    images = np.load(out / "samples.npz")["arr_0"]
    assert images.shape == (2, 32, 32, 3)
    assert json.loads((out / "run.json").read_text())["prompt"] == "a photo of a cat"

    loaded = load(folder)
    gens = sample_generators(1, range(2))
    z = DDIMSampler(loaded.model, loaded).sample(initial_noise((4, 16, 16), gens), 3, generator=gens,
                                                 cond=loaded.encode_prompt("a photo of a cat"),
                                                 uncond=loaded.encode_prompt("the dog"), guidance=7.5)
    want = to_uint8(loaded.latent.decode(z)).permute(0, 2, 3, 1).numpy()
    assert np.abs(images.astype(int) - want.astype(int)).max() <= 1        # uint8 rounding of float32 roundoff
    assert main(args) == 0                                                  # the same run resumes
    assert main(args[:4] + ["another prompt"] + args[5:]) == 2              # another prompt is another run
    assert "prompt" in capsys.readouterr().err


def test_prompt_bad_input_is_one_line(tmp_path, capsys):
    from ddim.commands import main

    assert main(["sample", "--prompt", "a cat", "--n", "1", "--steps", "2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--prompt" in err and "takes no prompt" in err and "\n" not in err
    (tmp_path / "notpipe").mkdir()
    (tmp_path / "notpipe" / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    assert main(["sample", "--ckpt", str(tmp_path / "notpipe"), "--prompt", "a", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unet/" in err and "\n" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_base_install_imports_neither_diffusers_nor_transformers_and_names_the_extra(tmp_path, monkeypatch):
    import subprocess
    import sys

    code = ("import sys, ddim, ddim.checkpoint, ddim.generate, ddim.commands; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    _, folder = save_pipeline(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)          # as if not installed
    from ddim.errors import MissingDependencyError
    with pytest.raises(MissingDependencyError, match=r"ddim\[latent\]"):
        load(folder)


def test_a_hub_listing_of_a_latent_pipeline_fetches_each_parts_weights():
    from ddim.checkpoint.hub import files_to_fetch

    listing = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "unet/diffusion_pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
               "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json", "README.md"]
    got = set(files_to_fetch(listing))
    assert got == set(listing) - {"unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin", "README.md"}
