"""`ddim sample`: N images from a checkpoint to PNGs, a grid and an .npz; resumable; sharded under torchrun."""

from __future__ import annotations

import argparse
import os

from ddim.commands.common import (Formatter, Unset, add_model_args, add_output_args, add_prompt_args, add_sampler_args,
                                  checkpoint_defaults, labels, load, positive_int, prompt_condition, sample_config)
from ddim.config import SampleConfig
from ddim.distributed import setup_distributed, teardown
from ddim.errors import DDIMError
from ddim.generate import check_run_size, generate, image_shape, recorded_guidance, recorded_sampling

EPILOG = """examples:
  ddim sample --n 64 --steps 50 --out samples            (the embedded digits model, autoguided by digits-weak)
  ddim sample --guide none --out plain                   (the same model without its guide)
  ddim sample --ckpt runs/digits/model.safetensors --guide runs/digits_weak/model.safetensors --guidance 2 --out ag
  ddim sample --ckpt runs/digits/model.safetensors --eta 1 --steps 100 --out ddpm
  ddim sample --ckpt digits-cond --class all --n 80 --guidance 2 --solver dpm++2m --steps 10 --out classes
  ddim sample --ckpt digits-cond-distilled --class all --n 80 --out one-step   (1 call, guidance 1.5 built in)
  ddim sample --ckpt sd-pipeline-folder --prompt "a photo of a cat" --negative-prompt "blurry" --guidance 7.5 \
      --solver dpm++2m --steps 20 --dtype float16 --device cuda --n 4 --out cats   (a diffusers latent pipeline)
  torchrun --nproc_per_node 8 -m ddim sample --num-samples 50000 --ckpt cifar10.ckpt --config cifar10 --out s
A rerun with the same settings resumes; sample i depends only on (seed, i)."""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="sample images to PNGs, a grid and an .npz", formatter_class=Formatter,
                       epilog=EPILOG)
    add_model_args(s)
    add_sampler_args(s)
    add_prompt_args(s)
    for action in s._actions:          # a distilled student's own step count and grid are its defaults
        if action.dest in ("steps", "skip"):
            action.help += "; a distilled student's own unless given"
            action.default = Unset(action.default)
        if action.dest == "guidance":      # and an autoguided model's own w
            action.help += "; with a guide (--guide), the autoguidance weight (default: the model's recorded one)"
            action.default = Unset(action.default)
    s.add_argument_group("autoguidance").add_argument(
        "--guide", default=None, metavar="CKPT", help="autoguidance (Karras et al. 2024): a weaker network of the same "
        "task (a checkpoint, or an embedded name such as digits-weak) that --guidance w steers away from, "
        "guide + w (model - guide); 'none': off (default: the model's recorded guide; the embedded digits model's "
        "is digits-weak at w = 1.75)")
    s.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=64,
                   help="number of images (spell it --num-samples under torchrun, whose parser takes --n)")
    add_output_args(s, "samples", "output folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=run, resume_hint="rerun the command to resume")


def _given(value: object) -> bool:
    return not isinstance(value, Unset)


def run(args: argparse.Namespace) -> None:
    steps_given, skip_given, guidance_given = _given(args.steps), _given(args.skip), _given(args.guidance)
    args.steps, args.skip, args.guidance = (v if _given(v) else v.value for v in (args.steps, args.skip,
                                                                                   args.guidance))
    guide_off = args.guide is not None and args.guide.strip().lower() == "none"
    config = sample_config(args, guide=None if guide_off else args.guide)   # every flag validated before the
    # model loads or a file is written
    info, device = setup_distributed(args.device)
    try:
        args.device = str(device)
        loaded = load(args)
        check_run_size(args.n, image_shape(loaded), args.out)      # before the labels of n samples are made
        config = checkpoint_defaults(args, config, loaded)     # e.g. a diffusers scheduler's clip_sample
        recorded = recorded_sampling(loaded)                   # a distilled student's steps and grid
        if recorded is not None and not steps_given:
            config = config.replace(steps=recorded["steps"], skip=args.skip if skip_given else recorded["skip"])
        path = args.ckpt if args.ckpt and os.path.exists(args.ckpt) else None
        config = _autoguidance(config, recorded_guidance(loaded, path), args.guide is not None, guidance_given)
        y = labels(args, loaded, args.n)
        cond, uncond, prompts = prompt_condition(args, loaded)
        per_class = args.class_ == "all" and args.n % loaded.config.num_classes == 0
        out = generate(loaded, args.out, args.n, config, device, source=loaded.metadata["source"],
                       overwrite=args.overwrite, progress=not args.quiet, labels=y,
                       grid_nrow=args.n // loaded.config.num_classes if per_class else 8,
                       grid_count=min(args.n, 400) if per_class else 64,      # every class in the grid
                       cond=cond, uncond=uncond, cond_settings=prompts)
    finally:
        teardown(info)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {args.n} images to {out}/images, {out}/samples.npz and {out}/grid.png")


def _autoguidance(config: SampleConfig, recorded: dict | None, guide_given: bool, guidance_given: bool
                 ) -> SampleConfig:
    """The model's recorded autoguidance where the command line leaves it open: its guide unless --guide is
    given (--guide none: off), at its recorded w unless --guidance is given; at w = 1 the guide is not loaded."""
    if recorded is not None and not guide_given:
        if config.guidance_mode != "cfg":
            raise DDIMError(f"--guidance-mode {config.guidance_mode}: this model samples with its recorded guide "
                            f"({recorded['guide']}), and autoguidance is plain guidance; add --guide none")
        config = config.replace(guide=recorded["guide"])
    if config.guide is not None and not guidance_given:
        if recorded is None:
            raise DDIMError(f"--guide {config.guide}: give its weight with --guidance w (1 is the model alone)")
        config = config.replace(guidance=recorded["guidance"])
    if config.guide is not None and config.guidance == 1:
        config = config.replace(guide=None)           # the model alone: the same images, no guide to load
    return config
