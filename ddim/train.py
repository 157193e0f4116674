"""Training with the DDPM objective (Ho et al. 2020), which is all DDIM needs (Song et al. 2020, Sec. 3-4).

L_simple = E_{x_0, t, eps} || target - f_theta(x_t, t) ||^2, x_t = q_sample(x_0, t, eps) (eq. 4), t uniform in
[0, T). The target is eps (default), x_0, or v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 -- whichever the sampler is
told the network predicts.

`run_training(cfg)` (and `train(cfg)`, which returns just the run directory) runs five phases, each a function
below under its heading: 1. setup (objective, model, run directory), 2. resume (the latest checkpoint, checked
against the config: the whole diffusion section, data shape and architecture must match), 3. the loop (one
`_train_step` per optimizer step, logs, grids), 4. checkpoints (`write_checkpoint`), 5. finish (model.safetensors,
or how to resume). A second training loop (e.g. distillation) reuses `loss_fn`, `ema_update`, `ema_decay`,
`lr_at`, `make_optimizer`, `prepare_run_dir`, `save_checkpoint` / `list_checkpoints` / `latest_checkpoint` /
`prune_checkpoints`, `truncate_metrics`, `StopOnSignal` and `Progress`. Everything random in it (data order, t, eps, flips) comes
from seeded generators whose state is checkpointed, so a stopped-and-resumed run follows the same loss curve as
one that never stopped. Under `torchrun` every process draws the same global batch of t / eps / flips and keeps
its own slice, so N processes with batch B/N compute the same update as one process with batch B.

Run directory: config.json, metrics.jsonl (step, loss, lr, grad_norm, it_per_s, img_per_s), samples/*.png (EMA
model, fixed x_T), ckpt-{step:07d}.pt (training state, `torch.load(weights_only=True)`), and at the end
model.safetensors (the EMA weights in the package's own format, what `ddim.checkpoint.load` reads).

Stopping: Ctrl-C or SIGTERM ends the run after the current step with a checkpoint of it (under torchrun, at
the next log or checkpoint step, where the processes agree), and `--resume` continues it exactly. A
non-finite loss or gradient norm raises DDIMError naming the step before a checkpoint of that state is written.
`ddim train` then exits 130 (SIGINT) or 143 (SIGTERM), so a pre-empted run does not read as finished.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ddim.config import RUN_RECORD_KEYS, DiffusionConfig, OptimConfig, TrainConfig
from ddim.data import ImageTensorDataset, build_dataset
from ddim.distributed import Dist, setup_distributed
from ddim.errors import DDIMError, OutputExistsError, one_line
from ddim.images import make_grid, save_image_grid
from ddim.io import atomic_path, write_failed, write_json_atomic, write_text_atomic
from ddim.runs import check_output_path, check_writable
from ddim.schedule import NoiseSchedule

__all__ = ["loss_fn", "sample_t", "micro_batches", "load_training_state", "gather_rng", "training_labels",
           "ema_update", "ema_decay", "lr_at", "train", "run_training", "TrainOutcome",
           "TrainingRun", "build_unet_config", "make_optimizer", "global_batch_indices", "prepare_run_dir",
           "check_resume_compatible", "write_checkpoint", "save_checkpoint", "checkpoint_name", "list_checkpoints",
           "latest_checkpoint", "prune_checkpoints", "read_metrics_lines", "truncate_metrics", "StopOnSignal",
           "Progress", "Dist"]

CKPT_PREFIX = "ckpt-"


# --- the objective -------------------------------------------------------------------------------------------
def loss_fn(model: nn.Module, schedule: NoiseSchedule, x_0: Tensor, t: Tensor, noise: Tensor,
            prediction: str = "eps", reduction: str = "mean", y: Tensor | None = None) -> Tensor:
    """L_simple (Ho et al. eq. 14): squared error between the network output and its target, averaged over the
    batch. x_0, noise [B, C, H, W]; t LongTensor [B]; y class labels [B] (-1: the null label) for conditional
    networks. reduction: "mean" or "sum" over pixels (official: sum)."""
    x_t = schedule.q_sample(x_0, t, noise)                                    # eq. 4
    if prediction == "eps":
        target = noise
    elif prediction == "x0":
        target = x_0
    elif prediction == "v":
        # v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho 2022) is q_sample with the roles of x_0 and eps
        # swapped and x_0 negated, so the schedule stays the only place that computes the coefficients.
        target = schedule.q_sample(noise, t, -x_0)
    else:
        raise DDIMError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
    out = model(x_t, t) if y is None else model(x_t, t, y)
    err = (out.float() - target.float()).square()
    if reduction == "mean":
        per_sample = err.mean(dim=tuple(range(1, err.ndim)))
    elif reduction == "sum":
        per_sample = err.sum(dim=tuple(range(1, err.ndim)))
    else:
        raise DDIMError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return per_sample.mean()


def sample_t(batch: int, T: int, generator: torch.Generator | None = None, antithetic: bool = False,
             device: torch.device | str = "cpu") -> Tensor:
    """Timesteps uniform in [0, T) [batch]; antithetic: the official pairing (t, T - 1 - t) within the batch."""
    if not antithetic:
        return torch.randint(0, T, (batch,), generator=generator, device=device)
    half = torch.randint(0, T, (batch // 2 + 1,), generator=generator, device=device)
    return torch.cat([half, T - 1 - half])[:batch]


# --- EMA and learning rate -----------------------------------------------------------------------------------
@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * theta for every parameter; buffers are copied."""
    ema_p = list(ema_model.parameters())
    p = [q.detach() for q in model.parameters()]
    torch._foreach_lerp_(ema_p, p, 1.0 - decay)
    for b_ema, b in zip(ema_model.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay(step: int, rate: float, warmup: bool = False) -> float:
    """The EMA decay after `step` optimizer steps; warmup: min(rate, (1 + step) / (10 + step))."""
    return min(rate, (1 + step) / (10 + step)) if warmup else rate


def lr_at(step: int, lr: float, warmup: int, schedule: str = "constant", total: int = 0,
          min_lr: float = 0.0) -> float:
    """Linear warmup from lr / warmup to lr over the first `warmup` steps (step counts from 0); then constant, or
    (schedule="cosine") a half cosine from lr down to min_lr at step `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return lr
    frac = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def build_unet_config(cfg: TrainConfig):
    """The UNetConfig a TrainConfig describes: a preset (or the package defaults) with the set fields overriding."""
    from ddim.models import PRESETS, UNetConfig
    m = cfg.model
    if m.preset is not None and m.preset not in PRESETS:
        raise DDIMError(f"model.preset must be one of {', '.join(PRESETS)}, got {m.preset!r}")
    d = PRESETS[m.preset].to_dict() if m.preset is not None else UNetConfig().to_dict()
    overrides = {"in_channels": m.in_channels, "out_channels": m.out_ch, "ch": m.ch, "ch_mult": m.ch_mult,
                 "num_res_blocks": m.num_res_blocks, "attn_resolutions": m.attn_resolutions,
                 "dropout": m.dropout, "resamp_with_conv": m.resamp_with_conv, "num_classes": m.num_classes}
    d.update({k: v for k, v in overrides.items() if v is not None})
    d["image_size"] = cfg.data.image_size
    if m.in_channels is None:
        d["in_channels"] = cfg.data.channels
    if m.out_ch is None:
        d["out_channels"] = cfg.data.channels
    if d["in_channels"] != cfg.data.channels:
        raise DDIMError(f"model.in_channels ({d['in_channels']}) must equal data.channels ({cfg.data.channels})")
    try:
        return UNetConfig.from_dict(d)
    except ValueError as e:  # UNetConfig names its field; say where it came from
        raise DDIMError(f"model (preset {m.preset!r} with the model.* overrides, data.image_size "
                        f"{cfg.data.image_size}): {e}") from None


# --- data order ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def global_batch_indices(n: int, batch: int, step: int, seed: int) -> Tensor:
    """Indices [batch] of the step-th global batch: a seeded permutation per epoch, last partial batch dropped.

    A function of the step alone, so resuming at step k reads exactly the batches an unbroken run would."""
    epoch, k = divmod(step, n // batch)
    return _epoch_permutation(n, seed, epoch)[k * batch:(k + 1) * batch]


def _local_slices(batch: int, world: int, accum: int, rank: int) -> list[slice]:
    """This rank's rows of the global batch for each accumulation micro-step: [accum, world, micro] layout."""
    micro = batch // (world * accum)
    return [slice((a * world + rank) * micro, (a * world + rank + 1) * micro) for a in range(accum)]


class _StepBatches:
    """Batch sampler for a DataLoader over file-backed data: this rank's micro-batch indices, step by step."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, slices: list[slice]) -> None:
        self.n, self.batch, self.seed, self.start, self.stop, self.slices = n, batch, seed, start, stop, slices

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            idx = global_batch_indices(self.n, self.batch, step, self.seed)
            for s in self.slices:
                yield idx[s].tolist()

    def __len__(self) -> int:
        return (self.stop - self.start) * len(self.slices)


def micro_batches(dataset, cfg: TrainConfig, start: int, slices: list[slice],
                  device: torch.device) -> Iterator[list[Tensor]]:
    """Yield, for each step from `start`, this rank's micro-batches of images."""
    n, batch, seed, stop = len(dataset), cfg.training.batch_size, cfg.training.seed, cfg.training.n_iters
    if isinstance(dataset, ImageTensorDataset):      # in memory: index directly, no DataLoader
        images = dataset.images
        if device.type != "cpu" and images.numel() * 4 < 2**30:
            images = images.to(device)               # small sets live on the accelerator: no copy per step
        for step in range(start, stop):
            idx = global_batch_indices(n, batch, step, seed).to(images.device)
            yield [images[idx[s]] for s in slices]
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepBatches(n, batch, seed, start, stop, slices),
        num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=False)
    it = iter(loader)
    for _ in range(start, stop):
        yield [next(it) for _ in slices]


# --- checkpoints ---------------------------------------------------------------------------------------------
def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, fsync, then os.replace: the old file survives any failure.

    Any failure of the write (a full disk is a RuntimeError from torch's zip writer) is an UnwritableError
    naming the file and the checkpoint that is still intact."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except Exception as e:
        prev = latest_checkpoint(path.parent)
        raise write_failed(path, e, f"the previous checkpoint {prev.name} is intact" if prev
                           else "no checkpoint was written") from e
    return path


def checkpoint_name(step: int) -> str:
    """ckpt-0000042.pt: zero-padded for a readable listing; past step 9,999,999 the names grow a digit."""
    return f"{CKPT_PREFIX}{step:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's ckpt-N.pt files, oldest first by their step number (not as text: ckpt-10000000.pt follows
    ckpt-9999999.pt)."""
    found = [p for p in Path(run_dir).glob(f"{CKPT_PREFIX}[0-9]*.pt")
             if p.stem[len(CKPT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[len(CKPT_PREFIX):]))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest ckpt-*.pt in run_dir, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


_STATE_KEYS = ("step", "model", "ema", "optimizer", "scaler", "rng_gen", "rng_torch", "unet")


def load_training_state(ckpt: Path, device: torch.device) -> dict[str, Any]:
    """The state dict of a ckpt-N.pt to resume from (weights_only: no pickled code runs); DDIMError naming it."""
    fix = "move it out of the run directory to resume from the checkpoint before it"
    try:
        state = torch.load(ckpt, map_location=device, weights_only=True)
    except Exception as e:
        raise DDIMError(f"{ckpt}: not a readable training checkpoint ({one_line(e)}); {fix}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise DDIMError(f"{ckpt}: not a ddim training checkpoint (no {', '.join(missing)}); {fix}")
    return state


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (by step)."""
    for p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)


def gather_rng(info: Dist, device: torch.device) -> list[Tensor]:
    """Every rank's global torch RNG state (dropout), CPU and CUDA, so resume restores all of them."""
    mine = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])
    if info.world_size == 1:
        return [torch.cat(mine)]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, torch.cat(mine))
    return out


def _set_rng(states: list[Tensor], info: Dist, device: torch.device) -> None:
    if info.rank >= len(states):
        warnings.warn("resuming with more processes than the checkpoint was written with: the new ranks' "
                      "dropout RNG starts fresh", stacklevel=2)
        return
    s = states[info.rank].cpu()
    n_cpu = torch.get_rng_state().numel()
    torch.set_rng_state(s[:n_cpu].clone())
    if device.type == "cuda" and s.numel() > n_cpu:
        torch.cuda.set_rng_state(s[n_cpu:].clone(), device)


# --- run directory -------------------------------------------------------------------------------------------
def prepare_run_dir(cfg: TrainConfig, info: Dist) -> Path:
    """Check the run directory (created later by `make_run_dir`, once the data set is known to be usable)."""
    run_dir = check_output_path(cfg.out_dir)
    if info.rank == 0:
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputExistsError(f"out_dir {str(run_dir)!r} exists and is not a directory")
        if run_dir.is_dir() and any(run_dir.iterdir()) and not (cfg.resume or cfg.overwrite):
            raise OutputExistsError(f"out_dir {str(run_dir)!r} is not empty; pass --resume to continue the run in "
                                  "it or --overwrite to train into it anyway")
        check_writable(run_dir)
    return run_dir


def make_run_dir(run_dir: Path, info: Dist) -> None:
    """Create the run directory: only after every refusal that can come before training (a refused run
    leaves no folder behind)."""
    if info.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)


def read_metrics_lines(path: str | os.PathLike) -> tuple[list[tuple[str, dict]], int | None]:
    """The records of a metrics.jsonl as (line, record) pairs, and the number of a torn last line (else None).

    A last line that does not parse was torn by a crash or a full disk mid-write: it is left out and reported.
    An unparseable line before it is damage no crash of this trainer makes: DDIMError naming the line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    records = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or isinstance(rec.get("step"), bool) or not isinstance(rec.get("step"), int):
            if i == last:
                return records, i + 1
            raise DDIMError(f"{path}, line {i + 1}: not a metrics record (a JSON object with an integer step); "
                            "repair or delete that line to resume")
        records.append((ln, rec))
    return records, None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the log lines up to the checkpoint we resume from, so the log reads as one run; rewritten atomically
    (a torn last line is dropped with a warning; see `read_metrics_lines`)."""
    if not path.exists():
        return
    records, torn = read_metrics_lines(path) if step > 0 else ([], None)
    if torn is not None:
        warnings.warn(f"{path}: dropped its last line {torn}, which was cut off mid-write (a crash or a "
                      "full disk); the run continues from the checkpoint", stacklevel=3)
    write_text_atomic(path, "".join(ln + "\n" for ln, rec in records if rec["step"] <= step))


# --- stopping: divergence and signals ------------------------------------------------------------------------
def _raise_if_diverged(bad_step: Tensor, info: Dist, run_dir: Path) -> None:
    """DDIMError if any step so far had a non-finite loss or gradient norm (one host sync; collective)."""
    if info.world_size > 1:
        dist.all_reduce(bad_step, op=dist.ReduceOp.MAX)
    n = int(bad_step.item())
    if n:
        _diverged(n, "the loss or gradient norm is not finite", run_dir)


def _check_weights_finite(step: int, run_dir: Path, *models: nn.Module | None) -> None:
    """A finite loss at step k says nothing of the weights its update produced; check them before saving."""
    tensors = [p for m in models if m is not None for p in m.parameters()]
    if not torch.stack([torch.isfinite(p).all() for p in tensors]).all().item():
        _diverged(step, "the weights are not finite", run_dir)


def _diverged(step: int, what: str, run_dir: Path) -> None:
    prev = latest_checkpoint(run_dir)
    last = f"the last finite one, {prev}, is kept" if prev else "none was written before"
    raise DDIMError(f"training diverged at step {step}: {what}; no checkpoint was written from that state and "
                    f"{last}; resume from it with a smaller --lr or gradient clipping (--grad-clip)")


def _any_rank(flag: bool, device: torch.device) -> bool:
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class StopOnSignal:
    """While active, the first SIGINT/SIGTERM only sets `requested` (the loop stops after the step); a second
    one restores the previous handlers and stops at once (KeyboardInterrupt, or SystemExit for SIGTERM)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        # signal.signal works only in the main thread; elsewhere signals keep their usual meaning.
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None


    @property
    def name(self) -> str:
        return _signal_name(self.signum)

    def __enter__(self) -> "StopOnSignal":
        if self.enabled:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            return
        self._restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


# --- the phases of a run --------------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """What the phases of a run share: the config, this process, the run directory and the objects trained."""
    cfg: TrainConfig
    info: Dist
    device: torch.device
    run_dir: Path
    schedule: NoiseSchedule
    unet_cfg: Any                     # ddim.models.UNetConfig
    dataset: Any
    labels: Tensor | None             # [N] class labels of a conditional model's data set
    model: nn.Module
    ema: nn.Module | None
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator              # t, eps, flips, label drops: the same on every rank


@dataclass
class TrainOutcome:
    """How a run ended: finished (model.safetensors written), or stopped by a signal after a checkpoint."""
    run_dir: Path
    step: int                         # the last step done (and checkpointed)
    stopped_by: int | None = None     # the signal number (SIGINT, SIGTERM) that stopped the run early


def train(cfg: TrainConfig, progress: bool = True, handle_signals: bool = True) -> Path:
    """Train a U-Net with L_simple as cfg describes; returns the run directory (see the module docstring).

    progress: a bar on a terminal, else one line per log interval on stderr (rank 0). handle_signals: the first
    SIGINT / SIGTERM finishes the current step, writes its checkpoint, prints one line saying how to resume and
    returns (without model.safetensors; `run_training` says which signal); a second one stops at once. Only in
    the main thread; the previous handlers are restored on return. A non-finite loss or gradient norm stops the
    run with a DDIMError naming the step, before any checkpoint is written from that state."""
    return run_training(cfg, progress, handle_signals).run_dir


def run_training(cfg: TrainConfig, progress: bool = True, handle_signals: bool = True) -> TrainOutcome:
    """`train`, returning how the run ended (`ddim train` exits 128 + the signal when one stopped it)."""
    cfg.validate()
    info, device = setup_distributed(cfg.device)
    try:
        # 1. setup: the objective and the model are checked before the first file is written
        schedule, unet_cfg = _objective(cfg, info)
        run_dir = prepare_run_dir(cfg, info)
        # 2. resume: the checkpoint is read and checked against the config before any data is read
        state = _resume_state(cfg, run_dir, unet_cfg, device, info)
        run = _build(cfg, info, device, run_dir, schedule, unet_cfg)
        make_run_dir(run_dir, info)                       # only now: a refused run leaves no folder behind
        start = _restore(run, state) if state is not None else 0
        _write_run_record(run, start)
        # 3. the loop (with 4. its checkpoints, `write_checkpoint`)
        stopped = _loop(run, start, progress, handle_signals)
        # 5. finish: the exported model, or how to resume
        _finish(run, stopped)
        if info.world_size > 1:
            dist.barrier()
        if stopped is None:
            return TrainOutcome(run_dir, cfg.training.n_iters)
        # A rank whose peer got the signal stops as a pre-empted job would: SIGTERM.
        return TrainOutcome(run_dir, stopped[0], signal.SIGTERM if stopped[1] is None else stopped[1])
    finally:
        if info.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


# --- 1. setup ------------------------------------------------------------------------------------------------
def _objective(cfg: TrainConfig, info: Dist) -> tuple[NoiseSchedule, Any]:
    """The noise schedule and the U-Net config; the checks that need no file (a bad model config costs nothing)."""
    tc, dc = cfg.training, cfg.diffusion
    if tc.batch_size % (info.world_size * tc.grad_accum):
        raise DDIMError(f"training.batch_size ({tc.batch_size}) must be divisible by the number of processes "
                        f"({info.world_size}) times training.grad_accum ({tc.grad_accum})")
    schedule = NoiseSchedule.from_name(dc.beta_schedule, dc.num_diffusion_timesteps, dc.beta_start, dc.beta_end)
    if dc.zero_terminal_snr:
        schedule = schedule.rescale_zero_terminal_snr()
    return schedule, build_unet_config(cfg)


def _build(cfg: TrainConfig, info: Dist, device: torch.device, run_dir: Path, schedule: NoiseSchedule,
           unet_cfg: Any) -> TrainingRun:
    """The data set, the model (same initial weights on every rank), its EMA, the optimizer and the RNGs."""
    from ddim.models import UNet
    tc = cfg.training
    dataset = build_dataset(cfg.data)
    labels = training_labels(dataset, cfg, unet_cfg.num_classes, device)
    if len(dataset) < tc.batch_size:
        raise DDIMError(f"the dataset holds {len(dataset)} images, fewer than training.batch_size "
                        f"({tc.batch_size})")
    torch.manual_seed(tc.seed)                       # same initial weights on every rank
    model = UNet(unet_cfg).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.model.ema else None
    opt = make_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    gen = torch.Generator(device=device).manual_seed(tc.seed)   # t, eps, flips: identical on every rank
    torch.manual_seed(tc.seed + 1 + info.rank)                  # dropout: differs per rank
    return TrainingRun(cfg, info, device, run_dir, schedule, unet_cfg, dataset, labels, model, ema, opt, scaler,
                       gen)


def make_optimizer(model: nn.Module, oc: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's parameters as the optim section says (the learning rate is set per step)."""
    opt_cls = torch.optim.AdamW if oc.optimizer.lower() == "adamw" else torch.optim.Adam
    return opt_cls(model.parameters(), lr=oc.lr, betas=(oc.beta1, oc.beta2), eps=oc.eps,
                   weight_decay=oc.weight_decay, amsgrad=oc.amsgrad)


# --- 2. resume -----------------------------------------------------------------------------------------------
def _resume_state(cfg: TrainConfig, run_dir: Path, unet_cfg: Any, device: torch.device,
                  info: Dist) -> dict[str, Any] | None:
    """The state of the latest checkpoint when resuming (None: start from step 0), checked against the config."""
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and ckpt is None and info.rank == 0:
        warnings.warn(f"--resume: no checkpoint in {run_dir}, starting from step 0", stacklevel=3)
    if ckpt is None:
        return None
    state = load_training_state(ckpt, device)
    check_resume_compatible(ckpt, state, cfg, unet_cfg.to_dict())
    return state


# The objective a run trains: these keys must not change on --resume (the model architecture is checked on the
# resolved U-Net config, which also carries data.image_size and data.channels).
_OBJECTIVE_KEYS = [("diffusion", f.name) for f in fields(DiffusionConfig)] + [("data", "image_size"),
                                                                             ("data", "channels")]
# U-Net config fields that a config key other than model.<same name> sets.
_UNET_KEYS = {"out_channels": "model.out_ch", "image_size": "data.image_size", "in_channels": "model.in_channels"}


def check_resume_compatible(ckpt: Path, state: dict[str, Any], cfg: TrainConfig, unet: dict[str, Any]) -> None:
    """DDIMError naming the first config key whose value differs from the one the checkpoint was trained with:
    the whole diffusion section, the data shape and the model architecture. Resuming with another objective
    would train on and label the final model with the new one."""
    then = state.get("config") if isinstance(state.get("config"), dict) else {}
    fix = "resume with the run's value, or train into a new --out"
    for sec, name in _OBJECTIVE_KEYS:
        old, now = (then.get(sec) or {}).get(name, _MISSING), getattr(getattr(cfg, sec), name)
        if old is not _MISSING and old != now:
            raise DDIMError(f"{ckpt} was trained with {sec}.{name} = {old!r}, but the config now says {now!r}; {fix}")
    for k in sorted(set(state["unet"]) | set(unet)):
        old, now = state["unet"].get(k, _MISSING), unet.get(k, _MISSING)
        if old != now:
            key = _UNET_KEYS.get(k, f"model.{k}")
            raise DDIMError(f"{ckpt} was trained with {key} = {_shown(old)}, but the config now says {_shown(now)} "
                            f"(U-Net {k}); {fix}")


_MISSING = object()


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "a signal to another process"


def _shown(value: Any) -> str:
    return "(not set)" if value is _MISSING else repr(value)


def _restore(run: TrainingRun, state: dict[str, Any]) -> int:
    """Load a checkpoint's state into the run's objects and RNGs; returns the step it was written at."""
    run.model.load_state_dict(state["model"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.gen.set_state(state["rng_gen"].cpu())
    _set_rng(state["rng_torch"], run.info, run.device)
    return int(state["step"])


def _write_run_record(run: TrainingRun, start: int) -> None:
    """metrics.jsonl cut back to the step resumed from (first: a damaged log changes no file), then config.json."""
    if run.info.rank == 0:
        truncate_metrics(run.run_dir / "metrics.jsonl", start)
        record = dict(zip(RUN_RECORD_KEYS, (run.unet_cfg.to_dict(), run.info.world_size, str(run.device))))
        write_json_atomic(run.run_dir / "config.json", {**run.cfg.to_dict(), **record})


# --- 3. the loop ---------------------------------------------------------------------------------------------
def _loop(run: TrainingRun, start: int, progress: bool, handle_signals: bool) -> tuple[int, int | None] | None:
    """Steps `start`..n_iters with logs, checkpoints and grids; returns (step, signal) when a signal stopped it."""
    cfg, info, device, model, ema = run.cfg, run.info, run.device, run.model, run.ema
    tc, dc = cfg.training, cfg.diffusion
    ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if info.world_size > 1 else model)
    slices = _local_slices(tc.batch_size, info.world_size, tc.grad_accum, info.rank)
    C, H, W = run.unet_cfg.in_channels, run.unet_cfg.image_size, run.unet_cfg.image_size
    x_T = torch.randn(tc.n_samples, C, H, W, generator=torch.Generator().manual_seed(tc.seed + 12345))

    model.train()
    meter = _Meter(device)
    # The first step whose loss (or, without fp16's grad scaler, gradient norm) was not finite; 0 while none.
    # Kept on the device and read only where the host syncs anyway (logs, checkpoints, grids, the end).
    bad_step = torch.zeros((), dtype=torch.long, device=device)
    check_grad = not run.scaler.is_enabled()     # fp16: inf/nan gradients are the scaler's skipped steps
    stopped = None

    log = open(run.run_dir / "metrics.jsonl", "a") if info.rank == 0 else None
    board = _tensorboard(run.run_dir) if tc.tensorboard and info.rank == 0 else None
    report = Progress(tc.n_iters, start, progress and info.rank == 0)
    batches = micro_batches(run.dataset, cfg, start, slices, device)
    try:
        with StopOnSignal(handle_signals) as stop:
            for step, micros in zip(range(start, tc.n_iters), batches):
                lr = lr_at(step, cfg.optim.lr, cfg.optim.warmup, cfg.optim.lr_schedule, tc.n_iters, cfg.optim.min_lr)
                step_loss, grad_norm = _train_step(run, ddp, step, micros, slices, lr)
                done = step + 1
                finite = torch.isfinite(step_loss)
                if check_grad:
                    finite &= torch.isfinite(grad_norm)
                bad_step = torch.where(finite | (bad_step > 0), bad_step, done)   # no host sync
                meter.add(step_loss, grad_norm)

                is_log = done % tc.log_freq == 0 or done == tc.n_iters
                is_ckpt = done % tc.snapshot_freq == 0 or done == tc.n_iters
                is_grid = bool(tc.sample_freq and done % tc.sample_freq == 0) or done == tc.n_iters
                # Ranks agree on stopping where they sync anyway, so all stop at the same step.
                stopping = done < tc.n_iters and (
                    stop.requested if info.world_size == 1
                    else (is_log or is_ckpt) and _any_rank(stop.requested, device))
                if is_log or is_ckpt or is_grid or stopping:
                    _raise_if_diverged(bad_step, info, run.run_dir)
                if is_log:
                    rec = meter.record(done, lr, tc.batch_size, info)
                    if log is not None:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    if board is not None:       # metrics.jsonl stays the source of truth
                        for key in ("loss", "lr", "grad_norm", "img_per_s"):
                            board.add_scalar(f"train/{key}", rec[key], done)
                    report.log(rec)
                report.update()
                if is_ckpt or stopping:
                    write_checkpoint(run, done)
                if stopping:
                    stopped = (done, stop.signum)    # None on a rank whose peer got the signal
                    break
                if info.rank == 0 and is_grid:
                    grid = sample_grid(ema if ema is not None else model, run.schedule, dc.prediction, x_T,
                                        tc.sample_steps, run.run_dir / "samples" / f"step-{done:07d}.png",
                                        run.unet_cfg.num_classes)
                    if board is not None:
                        board.add_image("samples/ema", grid, done, dataformats="HWC")
                        board.flush()
                    meter.restart_clock()          # keep sampling time out of it/s
    finally:
        batches.close()
        report.close()
        if log is not None:
            log.close()
        if board is not None:
            board.close()
    return stopped


def _train_step(run: TrainingRun, ddp: nn.Module, step: int, micros: list[Tensor], slices: list[slice],
                lr: float) -> tuple[Tensor, Tensor]:
    """One optimizer step on this rank's micro-batches; returns the step's loss and gradient norm (on device)."""
    cfg, device, opt, scaler = run.cfg, run.device, run.opt, run.scaler
    tc, dc, B = cfg.training, cfg.diffusion, cfg.training.batch_size
    C, H, W = run.unet_cfg.in_channels, run.unet_cfg.image_size, run.unet_cfg.image_size
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.precision)
    for g in opt.param_groups:
        g["lr"] = lr
    # One global batch of randomness, the same on every rank; each rank keeps its rows.
    t_all = sample_t(B, run.schedule.T, run.gen, dc.antithetic, device)
    noise_all = torch.randn(B, C, H, W, generator=run.gen, device=device)
    flip_all = torch.rand(B, generator=run.gen, device=device) < 0.5 if cfg.data.random_flip else None
    y_all = None
    if run.labels is not None:    # conditional: this step's labels, p_uncond of them dropped to null
        y_all = run.labels[global_batch_indices(len(run.dataset), B, step, tc.seed).to(run.labels.device)]
        drop = torch.rand(B, generator=run.gen, device=device) < tc.p_uncond
        y_all = torch.where(drop, torch.full_like(y_all, -1), y_all)
    step_loss = torch.zeros((), device=device)
    for a, (x_0, s) in enumerate(zip(micros, slices)):
        x_0 = x_0.to(device, non_blocking=True)
        if flip_all is not None:
            x_0 = torch.where(flip_all[s].view(-1, 1, 1, 1), x_0.flip(-1), x_0)
        sync = a == len(slices) - 1
        with (contextlib.nullcontext() if sync or ddp is run.model else ddp.no_sync()):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(ddp, run.schedule, x_0, t_all[s], noise_all[s], dc.prediction,
                               dc.loss_reduction, None if y_all is None else y_all[s])
            scaler.scale(loss / len(slices)).backward()
        step_loss += loss.detach() / len(slices)
    scaler.unscale_(opt)
    params = [p for p in run.model.parameters() if p.requires_grad]
    grad_clip = cfg.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    if run.ema is not None:
        ema_update(run.ema, run.model, ema_decay(step, cfg.model.ema_rate, cfg.model.ema_warmup))
    return step_loss, grad_norm


class _Meter:
    """Loss and gradient norm summed on the device between log steps (no host sync), and the step rate."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.gn_sum = torch.zeros((), device=device)
        self.t_last, self.n_last = time.perf_counter(), 0

    def restart_clock(self) -> None:
        self.t_last = time.perf_counter()

    def add(self, step_loss: Tensor, grad_norm: Tensor) -> None:
        self.loss_sum += step_loss
        self.gn_sum += grad_norm.detach().float()
        self.n_last += 1

    def record(self, done: int, lr: float, batch: int, info: Dist) -> dict[str, Any]:
        """The metrics.jsonl record of the steps since the last one (averaged over ranks); resets the sums."""
        stats = torch.stack([self.loss_sum, self.gn_sum]) / self.n_last
        if info.world_size > 1:
            dist.all_reduce(stats)
            stats /= info.world_size
        rate = self.n_last / max(time.perf_counter() - self.t_last, 1e-9)
        self.loss_sum.zero_(), self.gn_sum.zero_()
        self.t_last, self.n_last = time.perf_counter(), 0
        return {"step": done, "loss": stats[0].item(), "lr": lr, "grad_norm": stats[1].item(),
                "it_per_s": rate, "img_per_s": rate * batch}


class Progress:
    """Training progress on stderr: a bar on a terminal, else one line per log record (a log file or a job
    scheduler's output then shows the run moving). Disabled: silent."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str = "train") -> None:
        self.total, self.desc, self.bar, self.lines = total, desc, None, False
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=1.0)
        else:
            self.lines = enabled

    def log(self, rec: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", it_s=f"{rec['it_per_s']:.2f}")
        elif self.lines:
            print(f"{self.desc}: step {rec['step']}/{self.total} loss {rec['loss']:.4g} lr {rec['lr']:.3g} "
                  f"grad_norm {rec['grad_norm']:.3g} {rec['it_per_s']:.2f} it/s", file=sys.stderr, flush=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- 4. checkpoints ------------------------------------------------------------------------------------------
def write_checkpoint(run: TrainingRun, done: int) -> None:
    """ckpt-{done}.pt with everything resume needs (weights, optimizer, scaler, every RNG; collective), then the
    oldest beyond training.keep_last are pruned: only after a finite checkpoint was written."""
    _check_weights_finite(done, run.run_dir, run.model, run.ema)
    rng = gather_rng(run.info, run.device)
    if run.info.rank == 0:
        state = {"step": done, "model": run.model.state_dict(),
                 "ema": run.ema.state_dict() if run.ema is not None else None,
                 "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
                 "rng_gen": run.gen.get_state(), "rng_torch": rng, "unet": run.unet_cfg.to_dict(),
                 "schedule": run.schedule.to_dict(), "prediction": run.cfg.diffusion.prediction,
                 "config": run.cfg.to_dict(), "world_size": run.info.world_size}
        save_checkpoint(state, run.run_dir / checkpoint_name(done))
        prune_checkpoints(run.run_dir, run.cfg.training.keep_last)


# --- 5. finish -----------------------------------------------------------------------------------------------
def _finish(run: TrainingRun, stopped: tuple[int, int | None] | None) -> None:
    """A finished run exports the EMA weights as model.safetensors; a stopped one says how to resume."""
    if run.info.rank != 0:
        return
    if stopped is not None:
        # No model.safetensors: it marks a finished run, and the checkpoint itself loads for sampling
        # (ddim.checkpoint.load reads ckpt-N.pt with its EMA weights).
        step, signum = stopped
        print(f"train: stopped by {_signal_name(signum)} at step {step} of {run.cfg.training.n_iters}; "
              f"wrote {run.run_dir / checkpoint_name(step)}; continue with --resume (same config, --out "
              f"{run.run_dir})", file=sys.stderr, flush=True)
        return
    from ddim import checkpoint
    final = run.ema if run.ema is not None else run.model
    cfg = run.cfg
    checkpoint.save(run.run_dir / "model.safetensors", final, run.schedule, prediction=cfg.diffusion.prediction,
                    metadata={"steps": str(cfg.training.n_iters), "dataset": str(cfg.data.dataset),
                              "weights": "ema" if run.ema is not None else "raw"})


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer into RUN_DIR/tensorboard (the optional dependency was checked by validate())."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir / "tensorboard"))


def training_labels(dataset: Any, cfg: TrainConfig, num_classes: int, device: torch.device) -> Tensor | None:
    """The data set's labels [N] on the device for a conditional model (None for an unconditional one)."""
    if not num_classes:
        return None
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise DDIMError(f"model.num_classes = {num_classes}, but data set {cfg.data.dataset!r} has no labels "
                        "(digits, CIFAR-10, an .npz with a 'labels' array, or an image folder with one subfolder "
                        "per class have them)")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.numel() != len(dataset) or labels.min() < 0 or labels.max() >= num_classes:
        raise DDIMError(f"model.num_classes = {num_classes}: the data set's labels lie in [{labels.min().item()}, "
                        f"{labels.max().item()}] (for {labels.numel()} of {len(dataset)} images); they must lie "
                        f"in [0, {num_classes})")
    return labels.to(device)


@torch.no_grad()
def sample_grid(model: nn.Module, schedule: NoiseSchedule, prediction: str, x_T: Tensor, steps: int,
                path: Path, num_classes: int = 0, skip: str | list[int] = "uniform") -> np.ndarray:
    """A DDIM (eta = 0) grid from a fixed x_T, so successive grids show the same samples improving; returns the
    grid as uint8 [H, W, C]. A conditional model gets one row per class (conditional, guidance 1). skip: the
    named sub-sequence, or explicit timesteps (then steps is their count: a distilled student's own grid)."""
    from ddim.sampling import DDIMSampler
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    y, nrow = None, max(1, int(math.ceil(math.sqrt(x_T.shape[0]))))
    if num_classes:
        nrow = max(1, x_T.shape[0] // num_classes)
        x_T = x_T[:nrow * num_classes] if x_T.shape[0] >= num_classes else x_T.repeat(num_classes, 1, 1, 1)[
            :num_classes]
        y = torch.arange(num_classes, device=device).repeat_interleave(len(x_T) // num_classes)
    x = DDIMSampler(model, schedule, prediction=prediction).sample(x_T.to(device), steps=min(steps, schedule.T),
                                                                    skip=skip, y=y)
    model.train(was_training)
    save_image_grid(x.float().clamp(-1, 1), path, nrow=nrow, scale="auto")
    return make_grid(x.float().clamp(-1, 1), nrow=nrow)
