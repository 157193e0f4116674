"""Sampling to disk: per-sample seeds, resumable runs, sharding across processes, and the embedded model.

Sample i of a run is a pure function of (seed, i): its x_T and every noise draw come from its own
generator, seeded from (seed, i). So the images do not depend on the batch size, on the number of
processes, or on whether the run was interrupted and resumed.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.checkpoint import LoadedModel, LoadedPipeline, load
from ddim.config import DTYPES, SampleConfig, check_int
from ddim.distributed import rank_world
from ddim.errors import DDIMError, MissingFileError
from ddim.images import read_image, save_image_grid, save_images
from ddim.io import atomic_path
from ddim.models.deepcache import DeepCache
from ddim.readers import open_image
from ddim.runs import check_output_path, open_run
from ddim.sampling import Coupled, DDIMSampler, WalkOptions

__all__ = ["EMBEDDED", "DEFAULT_MODEL", "EMBEDDED_NAME", "DISTILLED", "load_model", "recorded_sampling", "sample_generators", "initial_noise",
           "cast_matmul_weights", "network", "AUTOGUIDANCE", "recorded_guidance", "load_guide",
           "make_sampler", "check_dtype", "latent_dtype", "check_plan", "check_finite_weights", "check_run_size",
           "class_labels", "image_shape", "pixel_shape", "latents_of", "images_of",
           "resolve_batch_size", "sample_batch", "encode", "decode", "weights_fingerprint", "generate", "assemble"]

ASSETS = Path(__file__).resolve().parent / "assets"
# The models that ship inside the package, by the name --ckpt takes: 16x16 digits, unconditional and
# class-conditional (10 labels and a null label, for classifier-free guidance), and the class-conditional one
# distilled to one step with guidance 1.5 baked in (`ddim distill`, docs/TRAINING.md), and digits-weak, the
# small, briefly trained unconditional network that guides the default one (autoguidance, `load_guide`).
EMBEDDED = {"digits": ASSETS / "digits.safetensors", "digits-cond": ASSETS / "digits_cond.safetensors",
            "digits-cond-distilled": ASSETS / "digits_cond_distilled.safetensors",
            "digits-weak": ASSETS / "digits_weak.safetensors"}
DEFAULT_MODEL = EMBEDDED["digits"]
EMBEDDED_PREFIX = "embedded:"          # "embedded:NAME" names an embedded model even beside a file called NAME
EMBEDDED_NAME = EMBEDDED_PREFIX + "digits"      # how run manifests name the embedded model


def load_model(ckpt: str | os.PathLike | None = None, config: str | None = None, ema: bool = True,
               device: str | torch.device = "cpu", dtype: str = "float32") -> LoadedModel | LoadedPipeline:
    """`ddim.load` with one addition: no checkpoint means the embedded default model (16x16 digits), and the
    names of `EMBEDDED` ("digits", "digits-cond", "digits-cond-distilled", "digits-weak") the models that ship
    in the package (a local path of the same name wins; "embedded:NAME" is always the embedded one)."""
    name = str(ckpt).removeprefix(EMBEDDED_PREFIX) if ckpt is not None else "digits"
    if str(ckpt).startswith(EMBEDDED_PREFIX) and name not in EMBEDDED:
        raise MissingFileError(f"{ckpt}: no embedded model of that name; the embedded models are "
                               f"{', '.join(EMBEDDED)}")
    if ckpt is None or str(ckpt).startswith(EMBEDDED_PREFIX) or (name in EMBEDDED and not Path(ckpt).exists()):
        path = EMBEDDED[name]
        if not path.exists():
            raise MissingFileError(f"the embedded model {path} is missing from this install; pass a checkpoint "
                                   "with --ckpt")
        ckpt = path
    loaded = load(ckpt, config=config, ema=ema, map_location=device, dtype=dtype)
    check_finite_weights(loaded, str(ckpt))
    return loaded


def check_finite_weights(loaded: LoadedModel, name: str | None = None) -> None:
    """Refuse a model whose weights hold NaN or inf (a diverged or damaged checkpoint): it can only make
    non-finite images, so it is refused when loaded, before any output is written."""
    for k, v in loaded.model.state_dict().items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            where = name or loaded.metadata.get("source", "the model")
            raise DDIMError(f"{where}: the weights hold NaN or inf (first in {k}); a diverged or damaged "
                            "checkpoint cannot sample")


DISTILLED = "distilled"     # a distilled student's metadata record (`ddim.distill`): steps, skip (its taus), guidance


def recorded_sampling(loaded: LoadedModel) -> dict | None:
    """The sampling a distilled student was trained for, {"steps": S, "skip": (tau_1, ..., tau_S)}, or None for
    any other model. A student's guidance is baked into its weights: it samples at guidance 1."""
    rec = loaded.metadata.get(DISTILLED)
    if not isinstance(rec, dict) or "steps" not in rec or "skip" not in rec:
        return None
    return {"steps": int(rec["steps"]), "skip": tuple(int(t) for t in rec["skip"])}


AUTOGUIDANCE = "autoguidance"   # a model's recorded autoguidance (metadata): {"guide": checkpoint, "guidance": w}


def recorded_guidance(loaded: LoadedModel | LoadedPipeline, path: str | os.PathLike | None = None) -> dict | None:
    """The autoguidance a model ships with, {"guide": its guide's checkpoint, "guidance": w}, or None. `ddim
    sample` uses it unless told otherwise (--guide, --guidance). A recorded embedded name becomes
    "embedded:NAME" (not a file of that name in the working folder), and a relative path is taken from the
    folder of the model's file `path`, where the two were saved together."""
    rec = loaded.metadata.get(AUTOGUIDANCE)
    if rec is None:
        return None
    w = rec.get("guidance") if isinstance(rec, dict) else None
    guide = rec.get("guide") if isinstance(rec, dict) else None
    if not isinstance(guide, str) or not guide or isinstance(w, bool) or not isinstance(w, (int, float)):
        raise DDIMError(f"the model's autoguidance record must be {{'guide': checkpoint, 'guidance': w}}, got {rec!r}")
    if guide in EMBEDDED:
        guide = EMBEDDED_PREFIX + guide
    elif not guide.startswith(EMBEDDED_PREFIX) and not Path(guide).is_absolute() and path is not None:
        guide = str(Path(path).parent / guide)
    return {"guide": guide, "guidance": float(w)}


def load_guide(ckpt: str | os.PathLike, loaded: LoadedModel | LoadedPipeline,
               device: str | torch.device = "cpu") -> LoadedModel:
    """The guide network of autoguidance for `loaded` (a checkpoint or an embedded name), refused unless it can
    stand in for the model: one of ddim's pixel models with the same prediction type, noise schedule, image
    shape and class labels (so that guide + w (model - guide) compares like with like)."""
    what = f"guide {str(ckpt)!r}"
    if isinstance(loaded, LoadedPipeline):
        raise DDIMError(f"{what}: autoguidance is for ddim's own pixel models, not latent pipelines")
    try:
        guide = load_model(ckpt, device=device)
    except DDIMError as e:
        raise type(e)(f"{what}: {e}") from None
    if isinstance(guide, LoadedPipeline):
        raise DDIMError(f"{what}: a latent pipeline cannot guide a pixel model; give a checkpoint of the same task")
    mine = (loaded.prediction, loaded.schedule.T, image_shape(loaded), loaded.config.num_classes)
    theirs = (guide.prediction, guide.schedule.T, image_shape(guide), guide.config.num_classes)
    for name, a, b in zip(("prediction", "number of timesteps T", "image shape", "number of classes"), mine, theirs):
        if a != b:
            raise DDIMError(f"{what}: its {name} is {b}, the model's is {a}; the guide must be a network of the "
                            "same task")
    if not torch.allclose(guide.schedule.alphas_cumprod, loaded.schedule.alphas_cumprod, rtol=1e-6, atol=0):
        raise DDIMError(f"{what}: its noise schedule (alphas_cumprod) differs from the model's")
    return guide


def _seed_of(seed: int, i: int) -> int:
    # SeedSequence mixes (seed, i) so that neighbouring samples get unrelated streams.
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, np.uint64)[0] >> 1)


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded from (seed, index)."""
    return [torch.Generator().manual_seed(_seed_of(seed, i)) for i in indices]


def initial_noise(shape: Sequence[int], generators: Sequence[torch.Generator], device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T [len(generators), *shape], sample i drawn from generator i (on the CPU, then moved)."""
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators]).to(device=device, dtype=dtype)


def cast_matmul_weights(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of the model whose convolution and linear weights and biases are stored in `dtype`; the caller's
    model is left as it is.

    Autocast casts these parameters to its low dtype again at every call: on the cifar10 network that is a
    quarter of a batch-1 bf16 forward on the CPU, spent copying 36M weights. Cast once, the casts are no-ops.
    The result is bit-identical under eager autocast. Those ops take all their inputs in the low dtype, and the
    rounding is the same. Norm and embedding parameters stay float32, as autocast would use them. (Compiled,
    the graph differs, and so do the roundings: as close as compiled and eager autocast are.)"""
    # The cast parameters go into deepcopy's memo, so their float32 originals are never copied.
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
            for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
            for p in m.parameters(recurse=False)}
    return copy.deepcopy(model, memo)


def network(model: torch.nn.Module, dtype: str = "float32", channels_last: bool = False,
            compile: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """The model as the sampler calls it: optional autocast to bf16/fp16 (the sampler's own arithmetic stays
    in the dtype of x), channels_last memory format and torch.compile. Returns outputs in x's dtype."""
    if dtype not in DTYPES:
        raise DDIMError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    amp = getattr(torch, dtype)                 # DTYPES are torch's own names
    if amp == torch.float64:                    # no autocast to float64: a float64 copy, fed float64 inputs
        model = copy.deepcopy(model).to(torch.float64)
    elif amp != torch.float32:
        model = cast_matmul_weights(model, amp)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = torch.compile(model, dynamic=False) if compile else model

    def call(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        ctx = torch.autocast(x.device.type, dtype=amp) if amp in (torch.bfloat16, torch.float16) else nullcontext()
        with ctx:
            x_in = x.to(torch.float64) if amp == torch.float64 else x
            x_in = x_in.contiguous(memory_format=torch.channels_last) if channels_last else x_in
            out = fn(x_in, t) if y is None else fn(x_in, t, y)
        return out.to(x.dtype)
    if hasattr(model, "reset_cache"):
        call.reset_cache = model.reset_cache          # the sampler resets a feature cache at each walk
    return call


def check_dtype(config: SampleConfig, loaded: LoadedModel | LoadedPipeline, device: str | torch.device) -> None:
    """dtype float64 where it cannot run: a latent pipeline (its VAE and text encoder run in the dtype they were
    loaded in) and Apple's mps device (no float64)."""
    if config.dtype != "float64":
        return
    if isinstance(loaded, LoadedPipeline):
        raise DDIMError("dtype float64 is for ddim's own pixel models; a latent pipeline runs in "
                        "float32, bfloat16 or float16")
    if torch.device(device).type == "mps":
        raise DDIMError("dtype float64: the mps device has no float64; use --device cpu")


def latent_dtype(config: SampleConfig, x: Tensor | Coupled) -> torch.dtype:
    """The dtype the sampler's walk runs in: float64 for dtype float64 (its latents too), else x's own."""
    return torch.float64 if config.dtype == "float64" else x.dtype


def make_sampler(loaded: LoadedModel, config: SampleConfig, device: str | torch.device = "cpu") -> DDIMSampler:
    """The sampler for a loaded model with the config's network switches (dtype, channels_last, compile) and
    its feature cache (cache_interval > 1: DeepCache). A latent pipeline's U-Net is sampled as it is (its weights
    were loaded in the dtype asked for). dtype float64 runs a float64 copy of the network (the walk is float64
    when its x is: `encode`, `decode` and `sample_batch` make it so). With config.guide, the guide is loaded
    (`load_guide`), run with the same switches, and its weights' fingerprint kept as `guide_fingerprint` for
    the run manifest."""
    check_dtype(config, loaded, device)
    if isinstance(loaded, LoadedPipeline):
        if config.guide is not None:
            load_guide(config.guide, loaded, device)                   # refuses, naming the guide
        return DDIMSampler(loaded.model.to(device), loaded.schedule, loaded.prediction)
    model = loaded.model.to(device)
    if config.cache_interval > 1:       # the cache compiles the U-Net's two passes itself, under its bookkeeping
        model = DeepCache(model, config.cache_interval, config.cache_branch, compile=config.compile)
    fn = network(model, config.dtype, config.channels_last, config.compile and config.cache_interval == 1)
    if config.guide is None:
        return DDIMSampler(fn, loaded.schedule, loaded.prediction)
    weak = load_guide(config.guide, loaded, device).model.to(device)    # the guide runs with the same switches
    sampler = DDIMSampler(fn, loaded.schedule, loaded.prediction,
                          guide=network(weak, config.dtype, config.channels_last, config.compile))
    sampler.guide_fingerprint = weights_fingerprint(weak)               # for the run manifest
    return sampler


def check_plan(sampler: DDIMSampler, config: SampleConfig, conditional: bool = False, cond: Any = None,
               uncond: Any = None) -> None:
    """Everything about the config that needs the model (steps <= T, an eta too large for the plan, guidance
    without class labels or a condition), checked by `DDIMSampler.prepare` with no network call, so a bad run
    fails before any file is written."""
    sampler.prepare(config.walk, y=0 if conditional else None, cond=cond, uncond=uncond)


def _batch(config: SampleConfig, sampler: DDIMSampler, x: Tensor) -> int:
    """The config's batch size for the batch-wise walks of x [N, ...]; "auto" as `resolve_batch_size` has it,
    probing the network the sampler calls."""
    if config.batch_size != "auto":
        return int(config.batch_size)
    return auto_batch_size(sampler.model, x.shape[1:], x.device, max(len(x), 1))


def sample_batch(sampler: DDIMSampler, x_T: Tensor, config: SampleConfig,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 y: Tensor | None = None, cond: Any = None, uncond: Any = None) -> Tensor:
    """x_0 [B, ...] from x_T [B, ...] with the config's walk options (steps, skip, solver, ...); y: class labels
    [B] (-1: none) of a class-conditional model, guided by config.guidance. The network calls this walk made
    are then `sampler.last_nfe`."""
    return sampler.run(x_T.to(latent_dtype(config, x_T)), config.walk, generator, y, cond=cond, uncond=uncond)


def encode(sampler: DDIMSampler, x_0: Tensor, config: SampleConfig, progress: bool = False,
           y: Tensor | None = None, refine: int = 0, cond: Any = None, uncond: Any = None) -> Tensor | Coupled:
    """Latents x_T [B, ...] of data x_0 [B, ...] with the deterministic ODE (eq. 13), the config's steps,
    skip and solver (and labels y or a condition cond / uncond, guided by config.guidance; `refine` as in
    `DDIMSampler.invert`), in batches of config.batch_size. `sampler.last_nfe` is the calls of one batch's walk.
    The solvers "bdia" and "edict" give a `Coupled` latent, which `decode` takes."""
    opts, bs = _ode(config, y, cond), _batch(config, sampler, x_0)
    x_0 = x_0.to(latent_dtype(config, x_0))
    parts = [sampler.run(x_0[i:i + bs], opts, y=None if y is None else y[i:i + bs], progress=progress,
                         invert=True, refine=refine, cond=cond, uncond=uncond) for i in range(0, len(x_0), bs)]
    return Coupled.cat(parts) if isinstance(parts[0], Coupled) else torch.cat(parts)


def decode(sampler: DDIMSampler, z: Tensor | Coupled, config: SampleConfig, y: Tensor | None = None,
           cond: Any = None, uncond: Any = None) -> Tensor:
    """x_0 [B, ...] from latents z with the deterministic sampler (eta = 0): the inverse of `encode` (the same
    labels or condition)."""
    opts, bs = _ode(config, y, cond), _batch(config, sampler, z)
    z = z.to(latent_dtype(config, z))
    return torch.cat([sampler.run(z[i:i + bs], opts, y=None if y is None else y[i:i + bs], cond=cond,
                                  uncond=uncond) for i in range(0, len(z), bs)])


def _ode(config: SampleConfig, y: Tensor | None, cond: Any = None) -> WalkOptions:
    """The walk options of encoding and decoding: the config's, deterministic, guided only with labels or a
    condition (a prompt's)."""
    ode = config.walk.deterministic()
    return ode if y is not None or cond is not None else ode.replace(guidance=WalkOptions.guidance)


def class_labels(spec: str | int | Sequence[int] | None, n: int, num_classes: int) -> Tensor | None:
    """Per-sample labels [n] from a user's spec: None (unconditional, or the null label of a conditional
    model), an int K (all K), "all" (contiguous blocks, one per class: sample i gets i * num_classes // n, so
    a grid of n = K * columns has one row per class), or a list cycled over the samples. -1 is the null label."""
    if spec is None:
        return None
    if not num_classes:
        raise DDIMError("--class: this model is unconditional (num_classes = 0); it takes no class labels")
    if spec == "all":
        labels = [i * num_classes // n for i in range(n)]
    else:
        if isinstance(spec, str):
            try:
                spec = [int(v) for v in spec.replace(",", " ").split()]
            except ValueError:
                raise DDIMError(f"--class must be an integer in [0, {num_classes}), -1, or 'all'; got {spec!r}") from None
        values = [spec] if isinstance(spec, int) else list(spec)
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or not -1 <= v < num_classes
                             for v in values):
            raise DDIMError(f"--class / --classes: labels must be integers in [0, {num_classes}) or -1 (none); "
                            f"got {values}")
        labels = [values[i % len(values)] for i in range(n)]
    return torch.tensor(labels, dtype=torch.long)


def image_shape(loaded: LoadedModel | LoadedPipeline) -> tuple[int, ...]:
    """(C, H, W) of the images the model makes (a latent pipeline: of its latents, which the VAE decodes)."""
    if isinstance(loaded, LoadedPipeline):
        size = loaded.model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return (loaded.model.config.in_channels, h, w)
    c = loaded.config
    return (c.in_channels, c.image_size, c.image_size)


def pixel_shape(loaded: LoadedModel | LoadedPipeline) -> tuple[int, ...]:
    """(C, H, W) of the images the model takes and makes: `image_shape`, or for a latent pipeline the size its
    VAE decodes its latents to."""
    shape = image_shape(loaded)
    return loaded.latent.image_shape(shape) if isinstance(loaded, LoadedPipeline) else shape


def latents_of(loaded: LoadedModel | LoadedPipeline, images: Tensor) -> Tensor:
    """What the sampler walks for images [B, C, H, W] in [-1, 1]: a latent pipeline's VAE latents (the
    posterior's mode, scaled and shifted: `LatentSpace.encode`), else the images themselves."""
    return loaded.latent.encode(images) if isinstance(loaded, LoadedPipeline) else images


def images_of(loaded: LoadedModel | LoadedPipeline, x: Tensor) -> Tensor:
    """Images [B, C, H, W] (about [-1, 1]) of what the sampler made: decoded by a latent pipeline's VAE, else x."""
    return loaded.latent.decode(x) if isinstance(loaded, LoadedPipeline) else x


CPU_AUTO_BATCH = 64  # on a CPU, throughput stops growing well before memory runs out


def batch_from_memory(free_bytes: int, bytes_per_sample: float, limit: int, headroom: float = 0.8) -> int:
    """The largest batch whose activations fit in ``headroom`` of ``free_bytes``, at most ``limit``; multiples of 8
    above 8 (tensor-core friendly). Raises ValueError if not even one sample fits."""
    if bytes_per_sample <= 0 or limit < 1:
        raise DDIMError(f"bytes_per_sample must be > 0 and limit >= 1, got {bytes_per_sample}, {limit}")
    b = int(free_bytes * headroom // bytes_per_sample)
    if b < 1:
        raise DDIMError(f"not even one sample fits: {free_bytes / 2**20:.0f} MiB free, about "
                         f"{bytes_per_sample / 2**20:.0f} MiB needed per sample; pass a --batch-size")
    b = min(b, limit)
    return b - b % 8 if b >= 16 else b


def auto_batch_size(fn: Callable[[Tensor, Tensor], Tensor], shape: Sequence[int], device: str | torch.device,
                    limit: int, probe: int = 4) -> int:
    """A batch size for sampling with ``fn`` on ``device``, at most ``limit`` (the number of images to make).

    CUDA: one probe call of ``probe`` samples measures the peak memory per sample; the batch is what fits in 80%
    of the free memory after it. CPU and other devices: ``min(limit, CPU_AUTO_BATCH)``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return min(limit, CPU_AUTO_BATCH)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        fn(torch.randn((probe, *shape), device=device), torch.full((probe,), 500, device=device, dtype=torch.long))
    torch.cuda.synchronize(device)
    per_sample = (torch.cuda.max_memory_allocated(device) - base) / probe
    free, _ = torch.cuda.mem_get_info(device)
    # memory the caching allocator holds but is not using counts as free for our own next allocations
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return batch_from_memory(free, max(per_sample, 1.0), limit)


def resolve_batch_size(config: SampleConfig, loaded: LoadedModel, device: str | torch.device, n: int) -> int:
    """The config's batch size as a number, for making n images. The one meaning of "auto": the largest batch
    that fits (CUDA: one probe of the eager network, see `auto_batch_size`; other devices: 64), at most n."""
    if config.batch_size != "auto":
        return int(config.batch_size)
    if isinstance(loaded, LoadedPipeline):          # its U-Net needs its condition to be probed: the CPU's rule
        return max(1, min(CPU_AUTO_BATCH, n))
    fn = network(loaded.model.to(device), config.dtype, config.channels_last)  # compiled code needs no more memory
    return auto_batch_size(fn, image_shape(loaded), device, max(1, n))


MAX_SAMPLES = 10**8      # one run's index list and its samples.npz index; a bigger n is a typo


def check_run_size(n: int, shape: Sequence[int], out: str | os.PathLike) -> None:
    """Refuse a sample run that cannot finish: more than MAX_SAMPLES images, or more image bytes (what
    samples.npz alone holds, uncompressed uint8) than the free space where `out` goes."""
    if n > MAX_SAMPLES:
        raise DDIMError(f"--n {n}: at most {MAX_SAMPLES} images per run (split a larger set over several --out "
                        "folders with different --seed)")
    need = n * int(np.prod(shape))
    folder = Path(out)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        raise DDIMError(f"--n {n}: the images need at least {need / 2**30:.1f} GiB (samples.npz alone) and "
                        f"{str(folder)!r} has {free / 2**30:.1f} GiB free")


def generate(loaded: LoadedModel, out: str | os.PathLike, n: int, config: SampleConfig = SampleConfig(),
             device: str | torch.device = "cpu", source: str | None = None, overwrite: bool = False,
             progress: bool = True, labels: Tensor | None = None, grid_nrow: int = 8, grid_count: int = 64,
             cond: Any = None, uncond: Any = None, cond_settings: dict | None = None) -> Path:
    """Sample n images into `out`: images/{i:06d}.png, samples.npz (uint8 NHWC, key arr_0), grid.png.

    Resumes an interrupted run with the same settings (images already on disk are kept); `out/run.json`
    records them (`config.manifest()`, n, the checkpoint's name `source` and its weights' fingerprint) and is
    written only after everything has been validated. Under torchrun (an initialised process group) rank r
    samples the indices i = r mod world_size, and rank 0 assembles. The images do not depend on the batch size.
    labels: the class of each sample [n] (`class_labels`) for a class-conditional model; sample i then depends
    on (seed, i, labels[i]) only. cond, uncond: a condition for every sample (one row, e.g. a prompt's embeddings)
    and its null form (a negative prompt's), recorded in run.json as `cond_settings` (the prompts). A latent
    pipeline samples latents and decodes them with its VAE.
    """
    n = check_int(n, "n")
    out = check_output_path(out)
    rank, world = rank_world()
    shape = image_shape(loaded)
    pixels = pixel_shape(loaded)                                                      # what is saved
    check_run_size(n, pixels, out)
    check_finite_weights(loaded)
    sampler = make_sampler(loaded, config, device)
    if labels is not None and len(labels) != n:
        raise DDIMError(f"labels: {len(labels)} labels for n = {n} samples")
    check_plan(sampler, config, conditional=labels is not None, cond=cond, uncond=uncond)
    settings = {"ckpt": source or str(loaded.metadata.get("source", "")), "n": n,
                "model": weights_fingerprint(loaded.model), **config.manifest(), **(cond_settings or {})}
    if config.guide is not None:                   # the guide's weights, not only its name, as the model's
        settings["guide_model"] = sampler.guide_fingerprint
    if labels is not None:
        settings["labels"] = labels.tolist() if n <= 1000 else hashlib.sha256(
            labels.numpy().tobytes()).hexdigest()[:16]
    if rank == 0:
        resumed = open_run(out, "run.json", settings, overwrite, "sample run",
                           owned=("images/*.png", "samples.npz", "grid.png"))
        if resumed:
            check_resumed_images(out / "images", n, pixels)
        (out / "images").mkdir(parents=True, exist_ok=True)
    if world > 1:
        torch.distributed.barrier()

    todo = [i for i in range(rank, n, world) if not (out / "images" / f"{i:06d}.png").exists()]
    batch_size = resolve_batch_size(config, loaded, device, len(todo))
    if config.batch_size == "auto" and progress and rank == 0:
        print(f"batch size {batch_size} (auto)", file=sys.stderr)
    bar = tqdm(total=len(todo), desc=f"sampling {n} images", unit="img", disable=not progress or rank != 0)
    for b in range(0, len(todo), batch_size):
        idx = todo[b:b + batch_size]
        gens = sample_generators(config.seed, idx)
        y = None if labels is None else labels[idx].to(device)
        x_0 = sample_batch(sampler, initial_noise(shape, gens, device), config, gens, y, cond, uncond)
        save_images(images_of(loaded, x_0), out / "images", start=idx)     # indices may be strided (sharding)
        bar.update(len(idx))
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        assemble(out, n, grid_nrow, grid_count, pixels)
    return out


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's weights, so results made with other weights are not mixed up."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def check_resumed_images(folder: Path, n: int, shape: Sequence[int]) -> None:
    """Before a run resumes: every PNG already in images/ must be one this run could have written, an 8-bit
    image of the model's size and channels (C, H, W) (headers only are read). One of another size, an RGB
    image in a grey run or a 16-bit one is named, and the run refused before any work."""
    if not folder.is_dir():
        return
    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    for f in sorted(folder.glob("*.png")):
        if not (f.stem.isdigit() and int(f.stem) < n):
            continue                                   # not one of this run's images: never read or touched
        with open_image(f) as img:
            if img.size != (w, h) or img.mode != mode:
                raise DDIMError(f"{f}: a {img.size[0]}x{img.size[1]} {img.mode} image, but this run makes "
                                f"{w}x{h} {mode} images; it was not written by this run: remove it, or pass "
                                "--overwrite to start again")


def assemble(out: Path, n: int, nrow: int = 8, count: int = 64, shape: Sequence[int] | None = None) -> None:
    """Collect images/000000.png.. into samples.npz (uint8 [N, H, W, C], key arr_0) and a grid of the first 64.
    shape: the run's (C, H, W); every image is checked against it (default: the first image's)."""
    files = [out / "images" / f"{i:06d}.png" for i in range(n)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise MissingFileError(f"{out}: {len(missing)} images missing (first: {missing[:3]}); rerun to resume")
    if shape is None:
        with open_image(files[0]) as img:
            shape = (1 if img.mode == "L" else 3, img.size[1], img.size[0])
    check_resumed_images(out / "images", n, shape)
    arr = np.stack([read_image(f, shape[0]) for f in files])
    with atomic_path(out / "samples.npz") as tmp, open(tmp, "wb") as f:  # file object: numpy appends no ".npz"
        np.savez(f, arr_0=arr)
    grid = torch.from_numpy(arr[:count]).permute(0, 3, 1, 2)
    save_image_grid(grid, out / "grid.png", nrow=nrow, scale="auto")
