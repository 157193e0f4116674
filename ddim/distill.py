"""Progressive distillation (Salimans & Ho, ICLR 2022): a student that takes one DDIM step where its teacher
took two, in rounds that halve the step count (64 -> 32 -> ... -> 1), each student the next round's teacher.

One round (Algorithm 2 of the paper): draw x from the data, a student step k uniformly from its S steps and
eps ~ N(0, I); z_t = sqrt(a_t) x + sqrt(1 - a_t) eps at the student's level t = tau_{2k+1} of the teacher's grid
tau (2S levels, ascending; the walk ends at a = 1). The teacher takes two deterministic DDIM steps,
t -> t' = tau_{2k} -> t'' = tau_{2k-1} (or a = 1), and the target x~ is the x0 with which ONE DDIM step from z_t
lands where the two did (`ddim.sampling.steps.ddim_x0_of_step`). The student, initialized from the teacher's
weights and read as a v (or x0) prediction, learns x~ with the truncated-SNR weight max(SNR(t), 1)
(L = max(|x~ - x^|^2, |eps~ - eps^|^2)). Every level and step goes through the sampler's own step math.

Guidance baked in (Meng et al., CVPR 2023, first stage): with a class-conditional teacher and guidance w, the
teacher's steps use the guided output eps(-1) + w (eps(y) - eps(-1)) and the student, conditional on y alone,
learns to give the guided result in one call. A share of the labels (training.p_uncond) is dropped to the null
label, where the target is the teacher's unconditional one, so the student keeps its unconditional mode.

Each round is a run directory OUT/steps-NNNN (named by the student's step count) written as `ddim train`
writes one: ckpt-N.pt (the trainer's training state, weights_only), metrics.jsonl, config.json, samples/*.png
(the student's own S-step grid), and at the end model.safetensors. Ctrl-C / SIGTERM checkpoint the step and
`resume` continues it bit-exactly; finished rounds are skipped on resume. The last student is also
OUT/model.safetensors. Every student records its grid in its metadata (`DISTILLED`), so `ddim sample` uses
its step count and timesteps unless told otherwise.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddim import train as tr
from ddim.checkpoint import LoadedModel, load
from ddim.config import TrainConfig, check_int
from ddim.data import build_dataset
from ddim.distributed import Dist, resolve_device
from ddim.errors import DDIMError, OutputExistsError
from ddim.generate import DISTILLED, weights_fingerprint
from ddim.io import write_json_atomic
from ddim.models import UNet
from ddim.runs import check_writable
from ddim.sampling import DDIMSampler, Denoiser
from ddim.sampling.plan import resolve_taus
from ddim.sampling.steps import ddim_step, ddim_x0_of_step, predict_eps_x0
from ddim.schedule import SKIPS, NoiseSchedule

__all__ = ["DISTILLED", "DistillSpec", "distill", "distill_loss", "teacher_target", "round_grids", "recorded_grid",
           "matching_error", "check_teacher", "STUDENT_PREDICTIONS"]

STUDENT_PREDICTIONS = ("v", "x0")       # the paper's stable parameterizations at few steps (eps is not)
MANIFEST = "distill.json"
_CADENCE = ("snapshot_freq", "keep_last", "log_freq", "sample_freq", "n_samples", "tensorboard")  # change no weight
ROUND_PREFIX = "steps-"


@dataclass(frozen=True)
class DistillSpec:
    """What a distillation makes: from `steps_from` teacher steps down to `steps_to` student steps, halving.

    steps_from None: the teacher's recorded step count (a distilled teacher), else 64. guidance: the weight w
    baked into the student (class-conditional teachers only; None: conditional, w = 1). skip: the teacher's
    grid at steps_from (a name of ddim.schedule.SKIPS); the default "trailing" ends at T - 1 and nests, so each
    student's grid is the same skip at its own step count."""

    steps_from: int | None = None
    steps_to: int = 1
    guidance: float | None = None
    prediction: str = "v"
    skip: str = "trailing"


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def recorded_grid(loaded: LoadedModel) -> dict[str, Any] | None:
    """A distilled student's record (steps, skip as explicit timesteps, guidance, ...), or None."""
    rec = loaded.metadata.get(DISTILLED)
    return rec if isinstance(rec, dict) and "steps" in rec and "skip" in rec else None


def check_teacher(teacher: LoadedModel, spec: DistillSpec, name: str = "--ckpt") -> tuple[int, list[int]]:
    """(steps_from, the teacher's grid tau [steps_from] ascending), or a one-line DDIMError naming the flag."""
    if spec.prediction not in STUDENT_PREDICTIONS:
        raise DDIMError(f"--prediction must be one of {', '.join(STUDENT_PREDICTIONS)} (the student's "
                        f"parameterization; eps cannot give x0 at one step), got {spec.prediction!r}")
    if spec.skip not in SKIPS:
        raise DDIMError(f"--skip must be one of {', '.join(SKIPS)}, got {spec.skip!r}")
    rec = recorded_grid(teacher)
    steps_from = spec.steps_from if spec.steps_from is not None else (int(rec["steps"]) if rec else 64)
    steps_from = check_int(steps_from, "--steps-from", 2, teacher.schedule.T)
    steps_to = check_int(spec.steps_to, "--steps-to", 1)
    for flag, n in (("--steps-from", steps_from), ("--steps-to", steps_to)):
        if not _power_of_two(n):
            raise DDIMError(f"{flag} must be a power of two (each round halves the steps: 64, 32, ..., 2, 1), "
                            f"got {n}")
    if steps_to >= steps_from:
        raise DDIMError(f"--steps-to ({steps_to}) must be smaller than --steps-from ({steps_from})")
    if spec.guidance is not None:
        g = spec.guidance
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise DDIMError(f"--guidance must be a finite number, got {g!r}")
        if not teacher.config.num_classes:
            raise DDIMError(f"--guidance {g}: the teacher ({name}) is unconditional (num_classes = 0); guidance "
                            "needs a class-conditional teacher")
        if not teacher.config.null_class:
            raise DDIMError(f"--guidance {g}: the teacher ({name}) has no null label, so it cannot be guided")
        if rec and rec.get("guidance") is not None:
            raise DDIMError(f"--guidance {g}: the teacher ({name}) is a student with guidance "
                            f"{rec['guidance']} baked in; leave --guidance out")
    if rec:
        if steps_from != int(rec["steps"]):
            raise DDIMError(f"--steps-from {steps_from}: the teacher ({name}) is a distilled student of "
                            f"{rec['steps']} steps; its grid is fixed, so --steps-from must be {rec['steps']}")
        taus = [int(t) for t in rec["skip"]]
    else:
        taus = resolve_taus(teacher.schedule.T, steps_from, spec.skip, teacher.schedule.alphas_cumprod).tolist()
    if len(taus) != steps_from or len(set(taus)) != steps_from:
        raise DDIMError(f"--skip {spec.skip}: gives {len(set(taus))} distinct timesteps at --steps-from "
                        f"{steps_from} on T = {teacher.schedule.T}; distillation needs {steps_from}")
    return steps_from, taus


def round_grids(taus: list[int], steps_to: int) -> list[tuple[list[int], list[int]]]:
    """(teacher grid, student grid) per round: each student keeps every second level, tau[1::2], so its step
    k (tau_{2k+1} -> tau_{2k-1}) spans the teacher's steps 2k + 1 and 2k, and the top level stays."""
    out = []
    while len(taus) > steps_to:
        out.append((taus, taus[1::2]))
        taus = taus[1::2]
    return out


# --- the objective ---------------------------------------------------------------------------------------------
def _levels(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """alpha_t [B] float64 for timesteps t [B]; t = -1 is the end of the walk, alpha = 1."""
    return schedule.alpha(t.cpu()).to(t.device)


@torch.no_grad()
def teacher_target(teacher: Denoiser, prediction: str, schedule: NoiseSchedule, z_t: Tensor, t: Tensor,
                   t_mid: Tensor, t_end: Tensor) -> Tensor:
    """x~ [B, ...]: the x0 with which one DDIM step from z_t at t reaches where the teacher's two DDIM steps
    t -> t_mid -> t_end (t_end = -1: alpha = 1) take it. `teacher` is a Denoiser (guidance, labels inside);
    timesteps per sample [B]."""
    a_t, a_mid, a_end = _levels(schedule, t), _levels(schedule, t_mid), _levels(schedule, t_end)
    eps, x0 = predict_eps_x0(teacher.network(z_t, t), z_t, a_t, prediction)
    z_mid = ddim_step(x0, eps, a_mid)
    eps, x0 = predict_eps_x0(teacher.network(z_mid, t_mid), z_mid, a_mid, prediction)
    z_end = ddim_step(x0, eps, a_end)
    return ddim_x0_of_step(z_t, z_end, a_t, a_end)


def distill_loss(student: nn.Module, prediction: str, schedule: NoiseSchedule, z_t: Tensor, t: Tensor,
                 target: Tensor, y: Tensor | None = None) -> Tensor:
    """Truncated-SNR weighted error of the student's x0 at z_t against the target x~: the batch mean of
    max(SNR(t), 1) * mean over pixels of (x~ - x^)^2 (Salimans & Ho 2022, Sec. 4)."""
    a_t = _levels(schedule, t)
    out = student(z_t, t) if y is None else student(z_t, t, y)
    x0 = predict_eps_x0(out.float(), z_t, a_t, prediction)[1]
    weight = torch.clamp(a_t / (1 - a_t), min=1.0).to(x0.dtype)
    return (weight * (target - x0).square().mean(dim=tuple(range(1, x0.ndim)))).mean()


@torch.no_grad()
def matching_error(student: nn.Module, student_prediction: str, teacher: nn.Module, teacher_prediction: str,
                   schedule: NoiseSchedule, teacher_taus: list[int], x_T: Tensor, y: Tensor | None = None,
                   guidance: float = 1.0) -> float:
    """Mean squared difference between the student's S-step DDIM samples (grid teacher_taus[1::2]) and the
    teacher's 2S-step ones (guided at `guidance`) from the same x_T: what a round makes small."""
    S = len(teacher_taus) // 2
    was = student.training
    student.eval()
    xs = DDIMSampler(student, schedule, student_prediction).sample(x_T, steps=S, skip=teacher_taus[1::2], y=y)
    student.train(was)
    xt = DDIMSampler(teacher, schedule, teacher_prediction).sample(x_T, steps=2 * S, skip=teacher_taus, y=y,
                                                                   guidance=guidance if y is not None else 1.0)
    return (xs - xt).square().mean().item()


# --- the rounds ------------------------------------------------------------------------------------------------
def _student_config(teacher: LoadedModel):
    """The student's U-Net: the teacher's, without dropout (the paper's students have none: the target is a
    deterministic function of z_t)."""
    return type(teacher.config).from_dict({**teacher.config.to_dict(), "dropout": 0.0})


def _record(spec: DistillSpec, guidance: float | None, student_taus: list[int], teacher_steps: int,
            source: str, round_no: int, iters: int) -> dict[str, Any]:
    return {"steps": len(student_taus), "skip": student_taus, "guidance": guidance, "teacher": source,
            "teacher_steps": teacher_steps, "round": round_no, "iters": iters, "weighting": "truncated-snr"}


def distill(teacher: LoadedModel, spec: DistillSpec, cfg: TrainConfig, source: str = "",
            progress: bool = True, handle_signals: bool = True) -> Path | None:
    """Distill `teacher` into students of spec.steps_from / 2, ..., spec.steps_to steps under cfg.out_dir (see
    the module docstring); returns the path of the last student (None: a signal stopped a round, whose
    checkpoint was written). From cfg: data (the data set the teacher was
    trained on), training (batch_size, n_iters = iterations per round, seed, log/checkpoint/sample cadence,
    p_uncond), optim (lr, Adam's betas, grad_clip, warmup, lr_schedule: cosine decays to min_lr within each
    round), model.ema / ema_rate / ema_warmup, resume, overwrite, device. Everything is checked before a
    file is written."""
    steps_from, taus = check_teacher(teacher, spec)
    cfg.data.image_size, cfg.data.channels = teacher.config.image_size, teacher.config.in_channels
    cfg.validate()
    device = resolve_device(cfg.device)
    tc = cfg.training
    if not teacher.config.num_classes or not teacher.config.null_class:
        tc.p_uncond = 0.0                              # no null label to drop to
    rec = recorded_grid(teacher)
    guidance = spec.guidance if spec.guidance is not None else (rec.get("guidance") if rec else None)
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
    try:
        dataset = build_dataset(cfg.data)
    except DDIMError as e:
        raise type(e)(f"{e} (the teacher makes {teacher.config.in_channels}-channel {teacher.config.image_size}x"
                      f"{teacher.config.image_size} images: give the data set it was trained on with --dataset and "
                      "--data-root, or --config)") from None
    labels = tr.training_labels(dataset, cfg, teacher.config.num_classes, device)
    if len(dataset) < tc.batch_size:
        raise DDIMError(f"the dataset holds {len(dataset)} images, fewer than --batch-size ({tc.batch_size})")
    student_cfg = _student_config(teacher)
    settings = {"teacher": weights_fingerprint(teacher.model), "teacher_prediction": teacher.prediction,
                "student": student_cfg.to_dict(), "grid": taus, **{k: v for k, v in asdict(spec).items()
                                                                     if k not in ("steps_to", "steps_from")},
                "guidance": guidance, "data": asdict(cfg.data), "optim": asdict(cfg.optim),
                "training": {k: v for k, v in asdict(tc).items() if k not in _CADENCE},
                "ema": [cfg.model.ema, cfg.model.ema_rate, cfg.model.ema_warmup]}
    _open_distill_run(out, settings, cfg)
    rounds = round_grids(taus, spec.steps_to)
    schedule = teacher.schedule
    t_model, t_pred, t_guidance = teacher.model.to(device).eval(), teacher.prediction, spec.guidance
    last = None
    for i, (grid_t, grid_s) in enumerate(rounds, start=1):
        run_dir = out / f"{ROUND_PREFIX}{len(grid_s):04d}"
        record = _record(spec, guidance, grid_s, len(grid_t), source, i, tc.n_iters)
        final = run_dir / "model.safetensors"
        if cfg.resume and final.exists():
            student = load(final, map_location=device).model
        else:
            if progress:
                print(f"distill: round {i} of {len(rounds)}: {len(grid_t)} -> {len(grid_s)} steps, {tc.n_iters} "
                      f"iterations, into {run_dir}", file=sys.stderr, flush=True)
            student = _run_round(i, t_model, t_pred, t_guidance, grid_t, student_cfg, spec.prediction, schedule,
                                 cfg, run_dir, dataset, labels, device, record, progress, handle_signals)
            if student is None:                          # stopped by a signal: its checkpoint is written
                return None
        t_model, t_pred, t_guidance = student.eval(), spec.prediction, None   # the student teaches next
        last = final
    from ddim import checkpoint
    final_out = out / "model.safetensors"
    loaded = load(last, map_location="cpu")
    checkpoint.save(final_out, loaded.model, loaded.schedule, prediction=loaded.prediction, metadata=loaded.metadata)
    return final_out


def _open_distill_run(out: Path, settings: dict[str, Any], cfg: TrainConfig) -> None:
    """The output folder for this distillation: a rerun with --resume and the same settings continues it; other
    settings (another teacher, a student of another shape, other data or training settings) are refused."""
    manifest = out / MANIFEST
    settings = json.loads(json.dumps(settings))
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
    if manifest.exists() and not cfg.overwrite:
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError) as e:
            raise DDIMError(f"{manifest} is not readable JSON ({e}); pass --overwrite to start again") from None
        if old.get("student") != settings["student"]:
            raise DDIMError(f"--out {out} holds a student of another shape ({old.get('student')}) than the "
                            f"teacher's ({settings['student']}); choose another --out")
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise OutputExistsError(f"--out {out} holds a distillation with other settings {diff} (old, new); "
                                    "pass --overwrite to replace it, or choose another --out")
        if not cfg.resume:
            raise OutputExistsError(f"--out {out} holds this distillation; pass --resume to continue it or "
                                    "--overwrite to start again")
    elif out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise OutputExistsError(f"--out {out} exists and does not hold a ddim distillation; pass --overwrite or "
                                "choose another --out")
    check_writable(out)
    write_json_atomic(manifest, settings, indent=1)


def _run_round(round_no: int, teacher: nn.Module, teacher_pred: str, guidance: float | None, grid_t: list[int],
               student_cfg: Any, prediction: str, schedule: NoiseSchedule, cfg: TrainConfig, run_dir: Path,
               dataset: Any, labels: Tensor | None, device: torch.device, record: dict[str, Any], progress: bool,
               handle_signals: bool) -> nn.Module | None:
    """One round: a student initialized from `teacher` learns its two DDIM steps per step; returns the student
    (its EMA weights when EMA is on), or None if a signal stopped the round after writing its checkpoint."""
    tc, oc = cfg.training, cfg.optim
    info = Dist()
    resume = cfg.resume
    if run_dir.is_dir() and any(run_dir.iterdir()) and not resume:
        for p in tr.list_checkpoints(run_dir):          # --overwrite: the round starts again
            p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    seed = tc.seed + round_no                            # each round its own data order and noise
    S = len(grid_t) // 2
    student_taus = torch.tensor(grid_t[1::2], device=device)
    mids = torch.tensor(grid_t[0::2], device=device)
    ends = torch.tensor([-1] + grid_t[1::2][:-1], device=device)

    student = UNet(student_cfg).to(device)
    student.load_state_dict(teacher.state_dict())
    ema = copy.deepcopy(student).eval().requires_grad_(False) if cfg.model.ema else None
    opt_cls = torch.optim.AdamW if oc.optimizer.lower() == "adamw" else torch.optim.Adam
    opt = opt_cls(student.parameters(), lr=oc.lr, betas=(oc.beta1, oc.beta2), eps=oc.eps,
                  weight_decay=oc.weight_decay, amsgrad=oc.amsgrad)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed + 1)
    start = 0
    ckpt = tr.latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = tr.load_training_state(ckpt, device)
        if state["unet"] != student_cfg.to_dict():
            raise DDIMError(f"{ckpt} holds a student of another shape ({state['unet']}) than the teacher's "
                            f"({student_cfg.to_dict()}); choose another --out")
        student.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng_gen"].cpu())
        tr._set_rng(state["rng_torch"], info, device)
        start = int(state["step"])
    tr.truncate_metrics(run_dir / "metrics.jsonl", start)
    write_json_atomic(run_dir / "config.json", {**cfg.to_dict(), DISTILLED: record, "unet": student_cfg.to_dict(),
                                                 "resolved_device": str(device)})

    B, (C, H, W) = tc.batch_size, (student_cfg.in_channels, student_cfg.image_size, student_cfg.image_size)
    round_cfg = copy.deepcopy(cfg)
    round_cfg.training.seed = seed
    x_T = torch.randn(tc.n_samples, C, H, W, generator=torch.Generator().manual_seed(seed + 12345))
    params = [p for p in student.parameters() if p.requires_grad]
    student.train()
    loss_sum, gn_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    bad_step = torch.zeros((), dtype=torch.long, device=device)
    t_last, n_last, stopped = time.perf_counter(), 0, None

    def write_checkpoint(done: int) -> None:
        tr._check_weights_finite(done, run_dir, student, ema)
        state = {"step": done, "model": student.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                 "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng_gen": gen.get_state(),
                 "rng_torch": tr.gather_rng(info, device), "unet": student_cfg.to_dict(),
                 "schedule": schedule.to_dict(), "prediction": prediction, "config": cfg.to_dict(),
                 "world_size": 1, DISTILLED: record}
        tr.save_checkpoint(state, run_dir / f"{tr.CKPT_PREFIX}{done:07d}.pt")
        tr.prune_checkpoints(run_dir, tc.keep_last)

    log = open(run_dir / "metrics.jsonl", "a")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=tc.n_iters, initial=start, desc=f"distill {2 * S}->{S}", dynamic_ncols=True,
                   mininterval=1.0)
    batches = tr.micro_batches(dataset, round_cfg, start, [slice(0, B)], device)
    try:
        with tr.StopOnSignal(handle_signals) as stop:
            for step, (x_0,) in zip(range(start, tc.n_iters), batches):
                lr = tr.lr_at(step, oc.lr, oc.warmup, oc.lr_schedule, tc.n_iters, oc.min_lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                k = torch.randint(0, S, (B,), generator=gen, device=device)
                noise = torch.randn(B, C, H, W, generator=gen, device=device)
                x_0 = x_0.to(device)
                if cfg.data.random_flip:
                    flip = torch.rand(B, generator=gen, device=device) < 0.5
                    x_0 = torch.where(flip.view(-1, 1, 1, 1), x_0.flip(-1), x_0)
                y = None
                if labels is not None:
                    y = labels[tr.global_batch_indices(len(dataset), B, step, seed).to(labels.device)]
                    drop = torch.rand(B, generator=gen, device=device) < tc.p_uncond
                    y = torch.where(drop, torch.full_like(y, -1), y)
                t = student_taus[k]
                z_t = schedule.q_sample(x_0, t, noise)
                # the teacher's denoiser for this batch's labels: the condition is fixed when it is built
                den = Denoiser(teacher, schedule, teacher_pred, y=y,
                               guidance=guidance if guidance is not None and y is not None else 1.0)
                target = teacher_target(den, teacher_pred, schedule, z_t, t, mids[k], ends[k])
                loss = distill_loss(student, prediction, schedule, z_t, t, target, y)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, oc.grad_clip if oc.grad_clip > 0 else math.inf)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    tr.ema_update(ema, student, tr.ema_decay(step, cfg.model.ema_rate, cfg.model.ema_warmup))
                done = step + 1
                finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
                bad_step = torch.where(finite | (bad_step > 0), bad_step, done)
                loss_sum += loss.detach()
                gn_sum += grad_norm.detach().float()
                n_last += 1
                is_log = done % tc.log_freq == 0 or done == tc.n_iters
                is_ckpt = done % tc.snapshot_freq == 0 or done == tc.n_iters
                is_grid = bool(tc.sample_freq and done % tc.sample_freq == 0) or done == tc.n_iters
                stopping = done < tc.n_iters and stop.requested
                if is_log or is_ckpt or is_grid or stopping:
                    tr._raise_if_diverged(bad_step, info, run_dir)
                if is_log:
                    rate = n_last / max(time.perf_counter() - t_last, 1e-9)
                    rec = {"step": done, "loss": (loss_sum / n_last).item(), "lr": lr,
                           "grad_norm": (gn_sum / n_last).item(), "it_per_s": rate, "img_per_s": rate * B}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", it_s=f"{rate:.2f}")
                    loss_sum.zero_(), gn_sum.zero_()
                    t_last, n_last = time.perf_counter(), 0
                if bar is not None:
                    bar.update(1)
                if is_ckpt or stopping:
                    write_checkpoint(done)
                if stopping:
                    stopped = (done, stop.name)
                    break
                if is_grid:
                    taus = grid_t[1::2]                 # the student's own grid
                    tr.sample_grid(ema if ema is not None else student, schedule, prediction, x_T, len(taus),
                                   run_dir / "samples" / f"step-{done:07d}.png", student_cfg.num_classes, taus)
                    t_last = time.perf_counter()
    finally:
        batches.close()
        if bar is not None:
            bar.close()
        log.close()
    if stopped is not None:
        print(f"distill: stopped by {stopped[1]} at step {stopped[0]} of {tc.n_iters} of round {round_no}; wrote "
              f"{run_dir / f'{tr.CKPT_PREFIX}{stopped[0]:07d}.pt'}; continue with --resume (same flags, --out "
              f"{run_dir.parent})", file=sys.stderr, flush=True)
        return None
    from ddim import checkpoint
    final = ema if ema is not None else student
    checkpoint.save(run_dir / "model.safetensors", final, schedule, prediction=prediction,
                    metadata={DISTILLED: record, "weights": "ema" if ema is not None else "raw"})
    return final
