"""Sampling throughput of this package against diffusers' DDIMPipeline, same weights, one run (`ddim bench`).

Each (path, batch) cell runs in a fresh subprocess so that its peak memory is its own and no compile cache
or allocator state leaks between cells. The network is the `cifar10` preset (35.7M parameters) with seeded
random weights, exported to a diffusers `UNet2DModel` folder so that both sides compute the same function.

Paths, in pairs with the same switches on both sides (the ratio within a pair is the headline):
- diffusers / ddim-fp32: diffusers' `DDIMPipeline` (UNet2DModel + DDIMScheduler) / this package, float32 eager.
- diffusers-fast / ddim-fast: bf16 autocast + channels_last (our sampler arithmetic stays float32). The peer
  also runs its own half-precision recipe, diffusers-bf16: weights loaded with `torch_dtype=torch.bfloat16`,
  channels_last, no autocast (its scheduler then works in bf16 too); ddim-fast is compared with the faster
  of the two.
- diffusers-compile / ddim-compile: the fast switches plus torch.compile with frozen weights (inductor
  `freezing`); compile time is reported separately and excluded from images/s (steady state).
These switches are PyTorch's, open to any diffusers user: a speed-up that appears on both sides of a pair is
PyTorch's, not this package's.

The sampler's own share of the time is measured exactly on the CPU (ops are synchronous there): the time
spent inside the network's calls is summed and subtracted from the whole loop. On a GPU (`--device cuda`) the
timed regions end with `torch.cuda.synchronize()`, peak memory is `max_memory_allocated`, the matmul peak is
the GPU's, and the sampler's share is not reported: host timers around asynchronous kernels measure launches.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ddim.errors import DDIMError

PATHS = ("diffusers", "diffusers-fast", "diffusers-bf16", "diffusers-compile", "ddim-fp32", "ddim-fast",
         "ddim-compile")
# each of our paths and the peer's paths with the same switches: the fair comparison is with the fastest of them
PEER = {"ddim-fp32": ("diffusers",), "ddim-fast": ("diffusers-fast", "diffusers-bf16"),
        "ddim-compile": ("diffusers-compile",)}
FP32_PATHS = ("diffusers", "ddim-fp32")


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU, whose ops are synchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def check_device(device: str) -> None:
    """A clear error, before any work, for a device this machine does not have."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise DDIMError(f"device must be cpu or cuda[:N], got {device!r}") from None
    if kind not in ("cpu", "cuda"):
        raise DDIMError(f"device must be cpu or cuda[:N], got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DDIMError(f"device {device!r}: CUDA is not available on this machine")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise DDIMError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best GFLOP/s of an n x n x n matmul in `dtype` on `device` (a practical peak for dense work).

    On a GPU a 2048^3 matmul lasts about as long as a launch and a sync, so there n is at least 8192 and each
    timing covers 10 matmuls between syncs. float32 is measured at torch's default matmul precision (no TF32),
    while cuDNN convolutions may use TF32: a float32 share of the peak above 100% on a GPU means that."""
    gpu = torch.device(device).type == "cuda"
    n, inner = (max(n, 8192), 10) if gpu else (n, 1)
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2 * n**3 / best / 1e9


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward at `shape`, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode
    x, t = torch.randn(shape), torch.zeros(shape[0], dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return float(counter.get_total_flops())


class _Timed:
    """Wrap the network so the loop can tell its time from the sampler's own."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, x, t):
        t0 = time.perf_counter()
        out = self.fn(x, t)
        self.seconds += time.perf_counter() - t0
        return out


def run_cell(path: str, batch: int, steps: int, weights: str, folder: str, device: str = "cpu") -> dict:
    """One measurement, meant to run in its own process; returns seconds, images/s, overhead and peak memory
    (the process's RSS on the CPU, max_memory_allocated on a GPU)."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cuda = torch.device(device).type == "cuda"
    result: dict = {"path": path, "batch": batch, "steps": steps}
    fast, compiled = path.endswith(("-fast", "-compile", "-bf16")), path.endswith("-compile")
    if compiled:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True           # weights become constants: folded and pre-packed for oneDNN
    if path.startswith("diffusers"):
        from contextlib import nullcontext

        from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
        pure_bf16 = path == "diffusers-bf16"
        unet = UNet2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16 if pure_bf16 else None)
        unet = unet.to(device).eval()
        if fast:
            unet = unet.to(memory_format=torch.channels_last)
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=False, set_alpha_to_one=True, steps_offset=0)
        pipe = DDIMPipeline(unet=unet, scheduler=sched)
        if compiled:
            pipe.unet = torch.compile(unet, dynamic=False)     # what diffusers' docs recommend
        pipe.set_progress_bar_config(disable=True)
        autocast = fast and not pure_bf16
        output = "pt"            # tensors, as ours returns: no host copy inside the timed region; numpy has no bf16
        kind = torch.device(device).type
        amp = (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if autocast else nullcontext  # noqa: E731

        def run():
            with torch.no_grad(), amp():
                return pipe(batch_size=batch, num_inference_steps=steps, eta=0.0, output_type=output,
                            generator=torch.Generator(device).manual_seed(0))

        def run_warm():
            with torch.no_grad(), amp():
                return pipe(batch_size=batch, num_inference_steps=2, eta=0.0, output_type=output)
    else:
        from ddim.checkpoint import load
        from ddim.images import to_uint8
        from ddim.generate import network
        from ddim.sampling import DDIMSampler
        loaded = load(weights, map_location=device)
        net = _Timed(network(loaded.model, "bfloat16" if fast else "float32", channels_last=fast, compile=compiled))
        sampler = DDIMSampler(net, loaded.schedule)
        x_T = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
        run = lambda: to_uint8(sampler.sample(x_T, steps=steps))  # noqa: E731
        run_warm = lambda: sampler.sample(x_T, steps=2)  # noqa: E731
    t0 = time.perf_counter()
    run_warm()                                  # first calls: allocations, oneDNN primitives, compilation
    synchronize(device)
    result["warmup_s"] = time.perf_counter() - t0
    if path.startswith("ddim"):
        net.seconds = 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run()
    synchronize(device)
    result["seconds"] = time.perf_counter() - t0
    result["images_per_s"] = batch / result["seconds"]
    if path.startswith("ddim") and not cuda:
        result["sampler_share"] = 1 - net.seconds / result["seconds"]
    result["peak_rss_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda
                             else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def _cell_in_subprocess(path: str, batch: int, steps: int, weights: str, folder: str, threads: int,
                        device: str = "cpu") -> dict:
    cmd = [sys.executable, "-m", "ddim.bench", json.dumps([path, batch, steps, weights, folder, device])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"path": path, "batch": batch, "steps": steps, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def combine(runs: list[dict]) -> dict:
    """One table row from repeated runs of a cell: the median images/s and sampler share, the largest peak
    memory, the first warm-up, and the slowest and fastest run; an error if any run failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    speeds = sorted(r["images_per_s"] for r in runs)
    row = dict(runs[0])
    row["images_per_s"] = statistics.median(speeds)
    row["seconds"] = row["batch"] / row["images_per_s"]
    row["runs"], row["spread"] = len(runs), (speeds[0], speeds[-1])
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    if "sampler_share" in row:
        row["sampler_share"] = statistics.median(r["sampler_share"] for r in runs)
    return row


def markdown(results: list[dict], peaks: dict[str, float], flops: float, machine: str, steps: int) -> str:
    """The BENCHMARKS.md section for these results."""
    lines = [
        "## Sampling throughput against diffusers (`ddim bench`)",
        "",
        f"Machine: {machine}. Network: the `cifar10` preset ({flops / 1e9:.2f} GFLOP per image per forward, "
        f"counted by torch's FlopCounterMode), seeded random weights shared with a diffusers `UNet2DModel`. "
        f"S = {steps} DDIM steps, eta = 0, one cell per fresh process (repeated cells alternate the order of "
        f"the paths; the row is their median). Peak memory: the process's RSS on a CPU, "
        f"`max_memory_allocated` on a GPU. Matmul peak of this machine "
        f"(2048^3 GEMM): float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s.",
        "",
        "The headline is **vs the peer at the same switches** (ddim-fp32 / diffusers, ddim-fast / the faster "
        "of diffusers-fast and diffusers-bf16, ddim-compile / diffusers-compile); *vs diffusers fp32* mixes "
        "our switches with the peer's defaults and mostly measures PyTorch. diffusers-bf16 is the peer's own "
        "half-precision recipe (`torch_dtype=torch.bfloat16`, channels_last, no autocast).",
        "",
        "| batch | path | images/s | vs the peer, same switches | vs diffusers fp32 | GFLOP/s (share of its "
        "dtype's peak) | sampler's own share | peak memory (MB) | warm-up (s) | runs: slowest-fastest images/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    speed = {(r["path"], r["batch"]): r["images_per_s"] for r in results if "error" not in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['path']} | failed: {' '.join(r['error'])} | | | | | | | |")
            continue
        gflops = r["images_per_s"] * flops * r["steps"] / 1e9
        peak = peaks["float32" if r["path"] in FP32_PATHS else "bfloat16"]
        peers = [speed[p, r["batch"]] for p in PEER.get(r["path"], ()) if (p, r["batch"]) in speed]
        peer = max(peers, default=None)
        fp32 = speed.get(("diffusers", r["batch"]))
        same = f"**{r['images_per_s'] / peer:.2f}x**" if peer else "-"
        vs_fp32 = f"{r['images_per_s'] / fp32:.2f}x" if fp32 else "-"
        share = f"{100 * r['sampler_share']:.2f}%" if "sampler_share" in r else "-"
        lines.append(f"| {r['batch']} | {r['path']} | {r['images_per_s']:.3f} | {same} | {vs_fp32} | "
                     f"{gflops:.0f} ({100 * gflops / peak:.0f}%) | {share} | {r['peak_rss_mb']:.0f} | "
                     f"{r['warmup_s']:.1f} | {_spread(r)} |")
    return "\n".join(lines)


def _spread(row: dict) -> str:
    if row.get("runs", 1) == 1:
        return "1"
    return f"{row['runs']}: {row['spread'][0]:.3f}-{row['spread'][1]:.3f}"


def run_bench(batches: list[int], steps: int, paths: list[str], repeats: int, threads: int, device: str = "cpu"
              ) -> tuple[list[dict], dict[str, float], float]:
    """Every (path, batch) cell `repeats` times in fresh processes; returns (rows, matmul peaks, FLOPs/forward)."""
    check_device(device)
    from ddim import NoiseSchedule
    from ddim.checkpoint import export_diffusers, save
    from ddim.models import PRESETS, UNet
    torch.manual_seed(0)
    model = UNet(PRESETS["cifar10"]).eval()
    flops = forward_flops(model, (1, 3, 32, 32))
    peaks = {"float32": matmul_peak(torch.float32, device=device),
             "bfloat16": matmul_peak(torch.bfloat16, device=device)}
    print(f"matmul peak: float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s; "
          f"{flops / 1e9:.2f} GFLOP per image per forward", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        weights, folder = os.path.join(tmp, "cifar10.safetensors"), os.path.join(tmp, "unet")
        save(weights, model, NoiseSchedule.linear())
        export_diffusers(model, folder)
        for batch in batches:
            runs: dict[str, list[dict]] = {path: [] for path in paths}
            for rep in range(repeats):
                # odd rounds run the paths in reverse, so that no path always runs first or last on a
                # machine whose speed drifts (thermal limits, noisy neighbours)
                for path in (paths if rep % 2 == 0 else paths[::-1]):
                    r = _cell_in_subprocess(path, batch, steps, weights, folder, threads, device)
                    runs[path].append(r)
                    print(json.dumps(r), flush=True)
            results += [combine(runs[path]) for path in paths]
    return results, peaks, flops


def machine(device: str = "cpu") -> str:
    """One line naming the hardware and software the numbers were taken on (the GPU's name when `device` is one)."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.device(device).type == "cuda"
    dev = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    return f"{cpu}; {os.cpu_count()} cores; {dev}; torch {torch.__version__}; Python {platform.python_version()}"


BENCHMARKS_HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def check_section_file(path: str | os.PathLike) -> str:
    """The text of the markdown file `--write` names (the header of a new one), refused by name if it is not a
    UTF-8 text file (binary, too big, a folder) or cannot be written; before any work."""
    from ddim.readers import read_text
    from ddim.runs import check_output_path, check_writable
    path = check_output_path(path, "--write")
    if path.is_dir():
        raise DDIMError(f"--write {str(path)!r} is a folder; give a markdown file")
    check_writable(path.parent)
    return read_text(path, "--write") if path.exists() else BENCHMARKS_HEADER


def write_section(path: str | os.PathLike, name: str, body: str) -> None:
    """Put `body` between the markers of section `name` in the markdown file `path` (atomically), leaving the
    other sections alone."""
    from ddim.io import write_text_atomic
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = check_section_file(path)
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(path, text)


if __name__ == "__main__":       # one cell, in its own process: `python -m ddim.bench '[path, batch, ...]'`
    print(json.dumps(run_cell(*json.loads(sys.argv[1]))))
