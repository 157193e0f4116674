"""Sampling to disk: per-sample seeds, resumable runs, sharding across processes, and the embedded model.

Sample i of a run is a pure function of (seed, i): its x_T and every noise draw come from its own
generator, seeded from (seed, i). So the images do not depend on the batch size, on the number of
processes, or on whether the run was interrupted and resumed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.checkpoint import LoadedModel, load
from ddim.images import save_image_grid, save_images
from ddim.io import atomic_path, write_json_atomic
from ddim.sampling import DDIMSampler

__all__ = ["DEFAULT_MODEL", "load_model", "sample_generators", "initial_noise", "SampleRun", "generate",
           "network", "DTYPES"]

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "digits.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(ckpt: str | os.PathLike | None = None, config: str | None = None, ema: bool = True,
               device: str | torch.device = "cpu") -> LoadedModel:
    """`ddim.load` with one addition: no checkpoint means the embedded default model (16x16 digits)."""
    if ckpt is None:
        if not DEFAULT_MODEL.exists():
            raise FileNotFoundError(f"the embedded default model {DEFAULT_MODEL} is missing from this install; "
                                    "pass a checkpoint with --ckpt")
        ckpt = DEFAULT_MODEL
    return load(ckpt, config=config, ema=ema, map_location=device)


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


def network(model: torch.nn.Module, dtype: str = "float32", channels_last: bool = False,
            compile: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """The model as the sampler calls it: optional autocast to bf16/fp16 (the sampler's own arithmetic stays
    in the dtype of x), channels_last memory format and torch.compile. Returns outputs in x's dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = torch.compile(model, dynamic=False) if compile else model
    amp = DTYPES[dtype]

    def call(x: Tensor, t: Tensor) -> Tensor:
        ctx = torch.autocast(x.device.type, dtype=amp) if amp != torch.float32 else nullcontext()
        with ctx:
            out = fn(x.contiguous(memory_format=torch.channels_last) if channels_last else x, t)
        return out.to(x.dtype)
    return call


@dataclass
class SampleRun:
    """Everything that determines a run's images; stored in run.json so a resumed run must match it."""

    ckpt: str
    n: int
    steps: int = 50
    eta: float = 0.0
    skip: str = "uniform"
    variance: str = "eta"
    seed: int = 0
    clip_denoised: bool = False
    ema: bool = True


def _check_run(out: Path, run: SampleRun, overwrite: bool) -> None:
    manifest = out / "run.json"
    if manifest.exists() and not overwrite:
        old = json.loads(manifest.read_text())
        if old != asdict(run):
            diff = {k: (old.get(k), v) for k, v in asdict(run).items() if old.get(k) != v}
            raise FileExistsError(f"{out} holds a run with other settings {diff} (old, new); "
                                  "pass --overwrite to replace it or choose another --out")
    elif out.exists() and any(out.iterdir()) and not overwrite and not manifest.exists():
        raise FileExistsError(f"{out} exists and is not a ddim sample run; pass --overwrite or another --out")
    if overwrite and out.exists():
        for p in [*(out / "images").glob("*.png"), out / "samples.npz", out / "grid.png", manifest]:
            p.unlink(missing_ok=True)


CPU_AUTO_BATCH = 64  # on a CPU, throughput stops growing well before memory runs out


def batch_from_memory(free_bytes: int, bytes_per_sample: float, limit: int, headroom: float = 0.8) -> int:
    """The largest batch whose activations fit in ``headroom`` of ``free_bytes``, at most ``limit``; multiples of 8
    above 8 (tensor-core friendly). Raises ValueError if not even one sample fits."""
    if bytes_per_sample <= 0 or limit < 1:
        raise ValueError(f"bytes_per_sample must be > 0 and limit >= 1, got {bytes_per_sample}, {limit}")
    b = int(free_bytes * headroom // bytes_per_sample)
    if b < 1:
        raise ValueError(f"not even one sample fits: {free_bytes / 2**20:.0f} MiB free, about "
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


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def generate(loaded: LoadedModel, out: str | os.PathLike, run: SampleRun, batch_size: int | str = 64,
             device: str | torch.device = "cpu", dtype: str = "float32", channels_last: bool = False,
             compile: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Sample run.n images into `out`: images/{i:06d}.png, samples.npz (uint8 NHWC, key arr_0), grid.png.

    Resumes an interrupted run with the same settings (images already on disk are kept). Under torchrun
    (an initialised process group) rank r samples the indices i = r mod world_size, and rank 0 assembles.
    ``batch_size="auto"`` picks it from free GPU memory (`auto_batch_size`); the images do not depend on it.
    """
    if run.n < 1:
        raise ValueError(f"n must be >= 1, got {run.n}")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 or 'auto', got {batch_size!r}")
    out = Path(out)
    rank, world = _dist()
    if rank == 0:
        _check_run(out, run, overwrite)
        (out / "images").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run.json", asdict(run), indent=1)
    if world > 1:
        torch.distributed.barrier()

    cfg = loaded.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    fn = network(loaded.model.to(device), dtype, channels_last, compile)
    sampler = DDIMSampler(fn, loaded.schedule, loaded.prediction)
    todo = [i for i in range(rank, run.n, world) if not (out / "images" / f"{i:06d}.png").exists()]
    if batch_size == "auto":
        batch_size = auto_batch_size(fn, shape, device, max(1, len(todo)))
        if progress and rank == 0:
            print(f"batch size {batch_size} (auto)", file=sys.stderr)
    bar = tqdm(total=len(todo), desc=f"sampling {run.n} images", unit="img", disable=not progress or rank != 0)
    for b in range(0, len(todo), batch_size):
        idx = todo[b:b + batch_size]
        gens = sample_generators(run.seed, idx)
        x_T = initial_noise(shape, gens, device)
        x_0 = sampler.sample(x_T, run.steps, run.eta, run.skip, run.variance, gens, run.clip_denoised)
        for i, img in zip(idx, x_0):     # indices may be strided (sharding): one file at a time
            save_images(img[None], out / "images", start=i)
        bar.update(len(idx))
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        assemble(out, run.n)
    return out


def assemble(out: Path, n: int) -> None:
    """Collect images/000000.png.. into samples.npz (uint8 [N, H, W, C], key arr_0) and a grid of the first 64."""
    from PIL import Image

    files = [out / "images" / f"{i:06d}.png" for i in range(n)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{out}: {len(missing)} images missing (first: {missing[:3]}); rerun to resume")
    arr = np.stack([np.asarray(Image.open(f)) for f in files])
    if arr.ndim == 3:
        arr = arr[..., None]
    with atomic_path(out / "samples.npz") as tmp, open(tmp, "wb") as f:  # file object: numpy appends no ".npz"
        np.savez(f, arr_0=arr)
    grid = torch.from_numpy(arr[:64]).permute(0, 3, 1, 2)
    save_image_grid(grid, out / "grid.png", nrow=8, scale="auto")
