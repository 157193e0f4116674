"""Training throughput: `ddim.train.train` against a minimal hand-written PyTorch loop with the same model.

Both run the same U-Net preset, batch and optimizer (Adam) on the same device. The hand loop is the least a
DDPM trainer can do: q_sample, forward, MSE, backward, Adam step. The trainer adds gradient clipping, EMA,
the seeded per-step randomness, metrics and the progress bar; its checkpoint write is timed separately and
amortised over `--snapshot-freq` steps. Rounds alternate (hand, trainer, hand, ...) and the best round of each
is kept, so a noisy shared CPU biases neither side.

    python benchmarks/bench_train.py                       # digits + cifar10 presets, batch 32, CPU
    python benchmarks/bench_train.py --presets digits --steps 20 --no-write

Writes its section of BENCHMARKS.md (between the bench_train markers), leaving other sections intact.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddim.benchmarking import machine, write_report
from ddim.config import config_from_dict
from ddim.models import PRESETS, UNet
from ddim.schedule import NoiseSchedule
from ddim.train import save_checkpoint, train



def _cfg(preset: str, npz: Path, out: Path, batch: int, steps: int, device: str):
    p = PRESETS[preset]
    return config_from_dict({
        "data": {"dataset": "npz", "root": str(npz), "image_size": p.image_size, "channels": p.in_channels},
        "model": {"preset": preset},
        "training": {"batch_size": batch, "n_iters": 2 * steps, "snapshot_freq": 10**9, "log_freq": steps,
                     "sample_freq": 0, "sample_steps": 1, "n_samples": 1},
        "out_dir": str(out), "device": device})


def hand_loop(preset: str, data: torch.Tensor, batch: int, steps: int, device: str) -> float:
    """Images/s of the plainest DDPM loop, timed over the second half of 2 * steps steps."""
    torch.manual_seed(0)
    model = UNet(PRESETS[preset]).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    sched = NoiseSchedule.linear(1000)
    n = data.shape[0]
    t0 = 0.0
    for step in range(2 * steps):
        if step == steps:
            _sync(device)
            t0 = time.perf_counter()
        idx = torch.randint(0, n, (batch,))
        x0 = data[idx].to(device)
        t = torch.randint(0, 1000, (batch,), device=device)
        eps = torch.randn_like(x0)
        loss = (model(sched.q_sample(x0, t, eps), t) - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def trainer(preset: str, npz: Path, tmp: Path, batch: int, steps: int, device: str, r: int) -> tuple[float, float]:
    """Images/s of train() over its second log interval, and the seconds one checkpoint write takes."""
    run = train(_cfg(preset, npz, tmp / f"run-{preset}-{r}", batch, steps, device), progress=True)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    ckpt = next(run.glob("ckpt-*.pt"))
    state = torch.load(ckpt, weights_only=True)
    t0 = time.perf_counter()
    save_checkpoint(state, run / "bench.pt")
    return rows[-1]["img_per_s"], time.perf_counter() - t0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["digits", "cifar10"], help="U-Net presets to time")
    ap.add_argument("--batch", type=int, default=32, help="batch size")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="timed steps per preset (default: 20 for small presets, 4 for cifar10)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side is kept")
    ap.add_argument("--snapshot-freq", type=int, default=1000, help="checkpoint interval to amortise over")
    ap.add_argument("--device", default="cpu", help="device")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    steps = args.steps or [4 if PRESETS[p].ch >= 128 else 20 for p in args.presets]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for preset, n_steps in zip(args.presets, steps):
            p = PRESETS[preset]
            arr = np.random.default_rng(0).integers(0, 256, (max(256, 2 * args.batch), p.in_channels,
                                                             p.image_size, p.image_size), dtype=np.uint8)
            npz = tmp / f"{preset}.npz"
            np.savez(npz, images=arr)
            data = torch.from_numpy(arr).float() / 127.5 - 1
            hand, ours, ckpt_s = [], [], []
            for r in range(args.rounds):
                hand.append(hand_loop(preset, data, args.batch, n_steps, args.device))
                a, c = trainer(preset, npz, tmp, args.batch, n_steps, args.device, r)
                ours.append(a)
                ckpt_s.append(c)
                print(f"{preset} round {r}: hand {hand[-1]:.1f} img/s, trainer {a:.1f} img/s, ckpt {c:.2f} s",
                      file=sys.stderr)
            h, o, c = max(hand), max(ours), min(ckpt_s)
            step_s = args.batch / o
            amortised = args.batch / (step_s + c / args.snapshot_freq)
            rows.append((preset, sum(q.numel() for q in UNet(p).parameters()), h, o, amortised,
                         100 * (1 - amortised / h), c, n_steps))
    lines = ["## Training throughput (`benchmarks/bench_train.py`)", "",
             f"Machine: {machine()}.", "",
             f"`python benchmarks/bench_train.py --batch {args.batch} --rounds {args.rounds}` on {args.device}. "
             f"Images/s over the timed steps after warm-up; best of {args.rounds} "
             "alternating rounds. \"Trainer, amortised\" adds one checkpoint write per "
             f"{args.snapshot_freq} steps. Overhead = 1 - amortised / hand loop.", "",
             "| preset | params | timed steps | hand loop img/s | trainer img/s | trainer, amortised img/s | "
             "overhead | checkpoint write |", "|---|---|---|---|---|---|---|---|"]
    for preset, n, h, o, am, ov, c, s in rows:
        lines.append(f"| {preset} | {n / 1e6:.2f}M | {s} | {h:.1f} | {o:.1f} | {am:.1f} | {ov:+.1f}% | {c:.2f} s |")
    lines += ["", "The hand loop: q_sample, forward, MSE, backward, Adam. The trainer also clips the gradient "
              "norm, updates the EMA, draws its randomness from a checkpointed generator, logs and shows "
              "a progress bar. A shared CPU makes single runs noisy (rounds of the same loop differ by up to 20% "
              "here), hence alternating rounds and the best of each."]
    section = "\n".join(lines)
    print(section)
    if args.no_write:
        return
    write_report(__file__, "bench_train", section)


if __name__ == "__main__":
    main()
