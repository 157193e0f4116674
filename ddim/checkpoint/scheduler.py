"""A diffusers scheduler (the object, its config, or the config's dict) read as this package's terms: the noise
schedule, the prediction type and clipping (`diffusers_import.schedule_from_diffusers`), and the walk options that
reproduce its sampler (docs/SOLVERS.md's table). `DDIMSampler(unet, read_scheduler(s))` takes the result.

diffusers is never imported: a scheduler object is read through its `config`, and, given the number of steps, its
own `set_timesteps` on a copy gives the exact grid.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ddim.checkpoint.base import CheckpointError
from ddim.checkpoint.diffusers_import import schedule_from_diffusers
from ddim.schedule import NoiseSchedule

__all__ = ["SchedulerSettings", "read_scheduler"]

_SPACING = {"leading": "uniform", "trailing": "trailing", "linspace": "linspace"}


@dataclass
class SchedulerSettings:
    """What a diffusers scheduler means here: `schedule`, `prediction`, and `options`, keyword arguments of
    `WalkOptions` / `DDIMSampler.sample` (solver, skip, steps_offset, final_alpha, clip_denoised). A DDIMSampler
    takes it as its schedule (schedule and prediction read from it)."""

    schedule: NoiseSchedule
    prediction: str
    options: dict[str, Any] = field(default_factory=dict)


def _config(scheduler: Any, source: str) -> tuple[dict[str, Any], str]:
    """The config dict and the class name of a scheduler object, a FrozenDict config, or a plain dict."""
    config = getattr(scheduler, "config", scheduler)
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source}: a diffusers scheduler or its config (a dict) is needed, got "
                        f"{type(scheduler).__name__}")
    name = config.get("_class_name") or (type(scheduler).__name__ if config is not scheduler else "DDIMScheduler")
    return dict(config), name


def _solver(name: str, c: Mapping[str, Any], source: str) -> str:
    if name in ("DDIMScheduler", "DDIMInverseScheduler", "DDPMScheduler"):
        return "ddim"
    if name == "PNDMScheduler":
        return "plms"
    if name == "DPMSolverMultistepScheduler":
        algo, order = c.get("algorithm_type", "dpmsolver++"), int(c.get("solver_order", 2))
        if algo != "dpmsolver++" or order not in (2, 3):
            raise CheckpointError(f"{source}: DPMSolverMultistepScheduler with algorithm_type={algo!r}, solver_order={order}"
                            " has no ddim solver; supported: dpmsolver++ of order 2 or 3")
        return "dpm++2m" if order == 2 else "dpm++3m-shipped"
    if name == "UniPCMultistepScheduler":
        if c.get("solver_type", "bh2") != "bh2" or int(c.get("solver_order", 2)) != 2:
            raise CheckpointError(f"{source}: UniPCMultistepScheduler is supported with solver_type 'bh2', solver_order 2")
        return "unipc"
    raise CheckpointError(f"{source}: scheduler {name!r} has no ddim solver; supported: DDIMScheduler, PNDMScheduler, "
                    "DPMSolverMultistepScheduler, UniPCMultistepScheduler")


def read_scheduler(scheduler: Any, steps: int | None = None, source: str = "scheduler") -> SchedulerSettings:
    """The schedule, prediction and walk options of a diffusers scheduler (object or config).

    With `steps` and a scheduler object, the grid is the scheduler's own timesteps for that many steps (an explicit
    skip list); otherwise its timestep_spacing named ("leading" = "uniform" with its steps_offset).
    """
    c, name = _config(scheduler, source)
    schedule, prediction, clip = schedule_from_diffusers({"_class_name": name, **c}, source)
    if c.get("rescale_betas_zero_snr"):
        raise CheckpointError(f"{source}: rescale_betas_zero_snr is not supported")
    solver = _solver(name, c, source)
    if name == "DDIMScheduler":
        final = 1.0 if c.get("set_alpha_to_one", True) else "alpha_0"
    elif name == "PNDMScheduler":
        final = 1.0 if c.get("set_alpha_to_one", False) else "alpha_0"
    else:
        final = "alpha_0" if c.get("final_sigmas_type", "zero") == "sigma_min" else 1.0
    options: dict[str, Any] = {"solver": solver, "final_alpha": final}
    if clip:
        options["clip_denoised"] = clip
    spacing = c.get("timestep_spacing", "leading")
    if steps is not None and hasattr(scheduler, "set_timesteps"):
        peer = copy.deepcopy(scheduler)
        peer.set_timesteps(steps)
        options["skip"] = sorted(set(int(t) for t in peer.timesteps))
        options["steps"] = None
    elif solver == "ddim" and spacing in _SPACING:
        options["skip"] = _SPACING[spacing]
        options["steps_offset"] = int(c.get("steps_offset", 0)) if spacing == "leading" else 0
    else:
        raise CheckpointError(f"{source}: {name} with timestep_spacing {spacing!r} has no named ddim grid; pass steps= "
                        "with the scheduler object so that its own timesteps are used")
    return SchedulerSettings(schedule, prediction, options)
