"""Any network, any shape, any condition: diffusers U-Nets given to DDIMSampler as they are, x of any [B, ...]
shape through every solver and editing method, and conditions (`cond=` / `uncond=`) guided in one call of 2B."""

import numpy as np
import pytest
import torch

from ddim import DDIMSampler, NoiseSchedule
from ddim.errors import DDIMError
from ddim.sampling import SOLVERS, Denoiser, slerp
from ddim.sampling.network import DiffusersUNet, as_network
from ddim.checkpoint.scheduler import read_scheduler

SCHED = NoiseSchedule.linear()
diffusers = pytest.importorskip("diffusers")


def _unet2d(num_class_embeds=None, seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                                 num_class_embeds=num_class_embeds).eval()


def _unet1d(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet1DModel(block_out_channels=(8, 16, 32), in_channels=4, out_channels=4, extra_in_channels=0,
                                 down_block_types=("DownResnetBlock1D",) * 3, up_block_types=("UpResnetBlock1D",) * 2,
                                 mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock",
                                 use_timestep_embedding=True, time_embedding_type="positional",
                                 flip_sin_to_cos=False, freq_shift=1.0, act_fn="mish", layers_per_block=1,
                                 norm_num_groups=8).eval()


# --- 1. any network ------------------------------------------------------------------------------------------
def test_a_diffusers_unet2dmodel_given_as_it_is_samples_what_ddim_sample_ckpt_samples_on_its_folder(tmp_path):
    from ddim.commands import main
    from ddim.generate import initial_noise, sample_generators
    from ddim.images import to_uint8

    from ddim.checkpoint import LoadedModel, export_pipeline
    from ddim.models import PRESETS, UNet

    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    folder = export_pipeline(LoadedModel(UNet(cfg), SCHED, "eps", cfg), tmp_path / "pipe")   # a diffusers folder
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    assert main(["sample", "--ckpt", str(folder), "--n", "3", "--steps", "5", "--eta", "0.5", "--seed", "4",
                 "--quiet", "--out", str(tmp_path / "s")]) == 0
    cli = np.load(tmp_path / "s" / "samples.npz")["arr_0"]

    sampler = DDIMSampler(unet, read_scheduler(scheduler))                 # the objects as they are
    gens = sample_generators(4, range(3))
    size = cfg.image_size
    x_0 = sampler.sample(initial_noise((cfg.in_channels, size, size), gens), 5, eta=0.5, generator=gens)
    ours = to_uint8(x_0).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(ours, cli)


def test_a_unet1dmodel_samples_b_c_l_as_diffusers_ddimscheduler_loop():
    unet = _unet1d()
    peer = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                                   set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")
    peer.set_timesteps(10)
    x_T = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    with torch.no_grad():
        for t in peer.timesteps:
            x = peer.step(unet(x, t).sample, t, x).prev_sample
    settings = read_scheduler(peer, steps=10)
    sampler = DDIMSampler(unet, settings)
    ours = sampler.sample(x_T, **settings.options)
    assert ours.shape == (3, 4, 16)
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_read_scheduler_maps_a_stable_diffusion_ddim_config():
    conf = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    s = read_scheduler(diffusers.DDIMScheduler(**conf))
    assert s.prediction == "v" and s.schedule.name == "quad"
    assert s.options == {"solver": "ddim", "final_alpha": "alpha_0", "skip": "uniform", "steps_offset": 1}
    peer = diffusers.DDIMScheduler(**conf)
    torch.testing.assert_close(s.schedule.alphas_cumprod.float(), peer.alphas_cumprod, atol=1e-6, rtol=0)
    peer.set_timesteps(20)
    taus = DDIMSampler(lambda x, t: x, s.schedule, s.prediction).taus(20, "uniform", 1)
    assert sorted(peer.timesteps.tolist()) == taus.tolist()
    dpm = read_scheduler(diffusers.DPMSolverMultistepScheduler.from_config(conf), steps=7)
    assert dpm.options["solver"] == "dpm++2m" and len(dpm.options["skip"]) == 7
    with pytest.raises(DDIMError, match="scheduler"):
        read_scheduler(object())
    with pytest.raises(DDIMError, match="no ddim solver"):
        read_scheduler(diffusers.EulerDiscreteScheduler())


def test_the_class_conditional_unet2dmodel_gets_its_null_label_mapped():
    unet = _unet2d(num_class_embeds=5)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([500, 500])
    net = as_network(unet)
    assert isinstance(net, DiffusersUNet) and as_network(net) is net
    with torch.no_grad():
        null = unet(x, t, class_labels=torch.tensor([4, 4])).sample
        cond = unet(x, t, class_labels=torch.tensor([1, 2])).sample
        d = Denoiser(net, SCHED, "eps", y=torch.tensor([1, 2]), guidance=3.0)
        torch.testing.assert_close(d.network(x, 500), null + 3 * (cond - null), atol=1e-5, rtol=1e-5)
    with pytest.raises(DDIMError, match="unconditional"):
        DDIMSampler(_unet2d(), SCHED).sample(torch.randn(1, 3, 8, 8), 2, y=1)


# --- 2. any shape --------------------------------------------------------------------------------------------
class Smooth(torch.nn.Module):
    """The exact eps of Gaussian data N(mu, s^2) (any shape), mu one per channel and shifted by a condition:
    eps = sqrt(1 - a) (x - sqrt(a) mu) / (a s^2 + 1 - a), a smooth flow that inversion can walk back."""

    def __init__(self, channels, s=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w, self.s = torch.randn(channels, channels, generator=g, dtype=torch.float64) * 0.1, s

    def forward(self, x, t, emb=None):
        a = SCHED.alphas_cumprod[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        mu = self.w.sum(1).to(x.dtype).reshape(1, -1, *[1] * (x.ndim - 2)).expand_as(x)
        if emb is not None:
            mu = mu + emb.to(x.dtype).flatten(1).mean(1).reshape(-1, *[1] * (x.ndim - 1))
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * self.s ** 2 + 1 - a)


SHAPES = [(3, 4, 16), (2, 3, 2, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_solver_samples_any_shape_and_per_sample_noise_ignores_the_batch(shape, solver):
    sampler = DDIMSampler(Smooth(shape[1]), SCHED)
    eta = 0.5 if solver == "ddim" else 0.0
    x_T = torch.randn(shape, dtype=torch.float64)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(shape[0])]    # noqa: E731
    out = sampler.sample(x_T, 6, eta=eta, solver=solver, generator=gens())
    assert out.shape == shape and torch.isfinite(out).all()
    one = sampler.sample(x_T[1:2], 6, eta=eta, solver=solver, generator=gens()[1:2])
    torch.testing.assert_close(one, out[1:2], atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_inversion_slerp_sdedit_and_inpainting_on_any_shape(shape):
    sampler = DDIMSampler(Smooth(shape[1]), SCHED)
    x_0 = torch.rand(shape, dtype=torch.float64) * 2 - 1
    z = sampler.invert(x_0, 200)
    assert z.shape == shape
    torch.testing.assert_close(sampler.sample(z, 200), x_0, atol=5e-2, rtol=0)      # eq. 13 is first order
    flat = sampler.invert(x_0.reshape(shape[0], shape[1], -1), 200)                   # the same walk as [B, C, L]
    torch.testing.assert_close(flat.reshape(shape), z, atol=1e-12, rtol=0)
    mid = slerp(z, torch.randn(shape, dtype=torch.float64), 0.3)
    assert mid.shape == shape
    g = torch.Generator().manual_seed(0)
    edited = sampler.sdedit(x_0, 0.5, 10, generator=g)
    assert edited.shape == shape and not torch.equal(edited, x_0)
    mask = (torch.rand(shape) > 0.5).to(torch.float64)                      # shaped like x
    filled = sampler.inpaint(x_0, mask, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(filled[mask == 1], x_0[mask == 1])
    with pytest.raises(DDIMError, match="mask"):
        sampler.inpaint(x_0, mask[..., :1, :1].squeeze(-1), 10)


# --- 3. any condition ----------------------------------------------------------------------------------------
def test_cond_and_uncond_are_guided_in_one_call_of_2b_for_a_tensor_and_for_keywords():
    net, calls = Smooth(4), []

    def model(x, t, emb=None):
        calls.append(len(x))
        return net(x, t, emb)

    x, e_c, e_u = torch.randn(3, 4, 16, dtype=torch.float64), torch.randn(3, 5, 7), torch.zeros(1, 5, 7)
    t = torch.full((3,), 400)
    want = net(x, t, e_u.expand(3, 5, 7)) + 7.5 * (net(x, t, e_c) - net(x, t, e_u.expand(3, 5, 7)))
    for cond, uncond in ((e_c, e_u), ({"emb": e_c}, {"emb": e_u})):
        calls.clear()
        got = Denoiser(model, SCHED, cond=cond, uncond=uncond, guidance=7.5).network(x, 400)
        torch.testing.assert_close(got, want)
        assert calls == [6]
    assert torch.equal(Denoiser(model, SCHED, cond=e_c, uncond=e_u, guidance=0).network(x, 400),
                       net(x, t, e_u.expand(3, 5, 7)))


def test_every_solver_invert_sdedit_inpaint_and_transfer_take_cond():
    """Each method under cond= equals the same method on a network with the condition baked in."""
    shape = (2, 4, 16)
    net = Smooth(4)
    sampler = DDIMSampler(net, SCHED)
    x_0 = torch.rand(shape, dtype=torch.float64) * 2 - 1
    a, b, null = torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.zeros(1, 3, 5)

    def baked(emb, w=1.0):
        return DDIMSampler(lambda x, t: net(x, t, null.expand_as(emb)) + w * (net(x, t, emb) - net(x, t, null.expand_as(emb))),
                           SCHED)

    def close(u, v):
        pairs = [(u.x, v.x), (u.y, v.y)] if hasattr(u, "y") else [(u, v)]      # a Coupled latent (bdia, edict)
        for p, q in pairs:
            torch.testing.assert_close(p, q, atol=1e-12, rtol=0)

    x_T = torch.randn(shape, dtype=torch.float64)
    gen = lambda: torch.Generator().manual_seed(1)                            # noqa: E731
    for solver in sorted(SOLVERS):
        close(sampler.sample(x_T, 5, solver=solver, cond=a, uncond=null, guidance=3.0, generator=gen()),
              baked(a, 3.0).sample(x_T, 5, solver=solver, generator=gen()))
        if SOLVERS[solver](0.0, "eta").deterministic:
            close(sampler.invert(x_0, 5, solver=solver, cond=a), baked(a).invert(x_0, 5, solver=solver))
    kw = dict(cond=a, uncond=null, guidance=2.0)
    close(sampler.sdedit(x_0, 0.5, 8, generator=torch.Generator().manual_seed(0), **kw),
          baked(a, 2.0).sdedit(x_0, 0.5, 8, generator=torch.Generator().manual_seed(0)))
    mask = (torch.rand(shape) > 0.5).double()
    close(sampler.inpaint(x_0, mask, 8, generator=torch.Generator().manual_seed(0), **kw),
          baked(a, 2.0).inpaint(x_0, mask, 8, generator=torch.Generator().manual_seed(0)))
    moved = sampler.transfer(x_0, steps=20, guidance=2.0, cond=a, target_cond=b, uncond=null)
    close(moved, baked(b, 2.0).sample(baked(a).invert(x_0, 20), 20))
    with pytest.raises(DDIMError, match="target_cond"):
        sampler.transfer(x_0, steps=20, cond=a)


def test_bad_conditions_are_one_line_errors_before_any_call():
    calls = []

    def model(x, t, emb=None):
        calls.append(1)
        return x

    sampler = DDIMSampler(model, SCHED)
    x = torch.randn(2, 4, 8)
    bad = [
        (dict(cond={"text": torch.zeros(2, 3)}), "text"),                      # unknown keyword
        (dict(cond=torch.zeros(3, 5)), "batch of 2"),                          # wrong batch
        (dict(cond=torch.zeros(2, 5), guidance=3.0), "uncond"),               # guidance without the null condition
        (dict(uncond=torch.zeros(2, 5)), "without cond"),
        (dict(y=1, cond=torch.zeros(2, 5)), "not both"),
        (dict(cond="a cat"), "cond must be a tensor"),
        (dict(cond={"emb": torch.zeros(2, 5)}, uncond=torch.zeros(2, 5), guidance=2.0), "same form"),
    ]
    for kw, words in bad:
        with pytest.raises(DDIMError, match=words) as e:
            sampler.sample(x, 3, **kw)
        assert "\n" not in str(e.value)
    assert calls == []


def test_a_unet2dconditionmodel_takes_text_embeddings_of_its_width_only():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                                          in_channels=4, out_channels=4, norm_num_groups=8, cross_attention_dim=12,
                                          attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    sampler = DDIMSampler(unet, SCHED)
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 12)
    out = sampler.sample(x, 2, cond=emb, uncond=torch.zeros(1, 5, 12), guidance=4.0)
    assert out.shape == x.shape
    with pytest.raises(DDIMError, match="cross_attention_dim 12"):
        sampler.sample(x, 2, cond=torch.randn(2, 5, 10))
    with pytest.raises(DDIMError, match="no keyword 'prompt'"):
        sampler.sample(x, 2, cond={"prompt": emb})
