"""`ddim edit sdedit | inpaint | transfer`: edit real images with the sampler -> a grid (inputs, then results). On a
latent pipeline (--prompt) the edit runs on the VAE's latents of the images and the results are decoded."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from ddim.checkpoint import LoadedPipeline
from ddim.commands.common import (Formatter, add_model_args, add_output_args, add_prompt_args, add_refine_arg,
                                  add_sampler_args, check_prompt_flags, check_refine, input_images, labels, load,
                                  positive_int, prompt_condition, sample_config)
from ddim.errors import DDIMError
from ddim.generate import image_shape, images_of, latent_dtype, latents_of, make_sampler, pixel_shape, sample_generators
from ddim.images import array_to_nchw, load_images, read_array, save_image_grid
from ddim.runs import prepare_output
from ddim.sampling.options import DEFAULTS as WALK

EPILOG = """examples:
  ddim edit sdedit --input digits --n 8 --strength 0.5 --out sdedit.png
  ddim edit inpaint --input digits --n 8 --mask right --resample 3 --out inpaint.png
  ddim edit transfer --ckpt digits-cond --input digits --n 10 --from-class 3 --to-class 8 --guidance 2 --out t.png
  a diffusers latent pipeline (Stable Diffusion's layout):
  ddim edit sdedit --ckpt sd-folder --input photos/ --prompt "a watercolor of a cat" --guidance 7.5 --out s.png
  ddim edit inpaint --ckpt sd-folder --input photos/ --mask center --prompt "a red ball" --guidance 7.5 --out i.png
  ddim edit transfer --ckpt sd-folder --input photos/ --prompt "a photo of a cat" --target-prompt \\
      "a photo of a dog" --guidance 3 --solver edict --steps 50 --out t.png"""
MASKS = ("left", "right", "top", "bottom", "center")
MASK_HELP = (f"the part to fill in: {', '.join(MASKS)}, or a PNG / .npy file (white / 1 = keep; image files are "
             "resized to the images' size, arrays must have it). A latent pipeline inpaints its latents: the mask, "
             "made at the images' size, is reduced to the latents' h x w = H/f x W/f by the minimum over each f x f "
             "block (a latent cell is kept only where all its pixels are), and the grid shows it so")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("edit", help="edit real images: SDEdit, inpainting, class or prompt transfer",
                       formatter_class=Formatter, epilog=EPILOG)
    edits = e.add_subparsers(dest="edit", required=True, metavar="EDIT")

    def common(p: argparse.ArgumentParser, out: str) -> None:
        add_model_args(p)
        add_sampler_args(p, classes=p.prog.split()[-1] != "transfer",
                         afs=p.prog.split()[-1] != "transfer")   # transfer starts by inverting: no AFS
        p.add_argument("--input", required=True, help="images: 'digits', a folder, an .npz / .npy file, an image "
                       "(image files are resized to the model's size; a latent pipeline's VAE encodes them)")
        p.add_argument("--n", type=positive_int, default=8, help="use the first n images")
        add_output_args(p, out, "output PNG: the inputs in the first row, the results in the second")
        add_prompt_args(p, target=p.prog.split()[-1] == "transfer")

    p = edits.add_parser("sdedit", help="noise the images part of the way and sample back (SDEdit)",
                         formatter_class=Formatter, epilog=EPILOG)
    common(p, "sdedit.png")
    p.add_argument("--strength", type=float, default=0.5, help="0: the input unchanged; 1: sampling from noise")
    p.set_defaults(fn=run)
    p = edits.add_parser("inpaint", help="fill in the masked part of the images", formatter_class=Formatter,
                         epilog=EPILOG)
    common(p, "inpaint.png")
    p.add_argument("--mask", default="right", help=MASK_HELP)
    p.add_argument("--resample", type=positive_int, default=1, help="RePaint resampling: each step this many times")
    p.set_defaults(fn=run)
    p = edits.add_parser("transfer", help="encode with one class or prompt, decode with another",
                         formatter_class=Formatter, epilog=EPILOG)
    common(p, "transfer.png")
    p.add_argument("--from-class", type=int, default=None, help="class-conditional models: the class the images "
                   "are (used to encode)")
    p.add_argument("--to-class", type=int, default=None, help="class-conditional models: the class to decode them as")
    p.add_argument("--guidance", type=float, default=WALK.guidance, help="guidance weight of the decoding")
    add_refine_arg(p)
    p.set_defaults(fn=run)


def _mask(spec: str, c: int, size: int) -> torch.Tensor:
    m = torch.ones(1, 1, size, size)
    half = size // 2
    named = {"left": (slice(None), slice(0, half)), "right": (slice(None), slice(half, None)),
             "top": (slice(0, half), slice(None)), "bottom": (slice(half, None), slice(None)),
             "center": (slice(size // 4, size - size // 4), slice(size // 4, size - size // 4))}
    if spec in named:
        m[0, 0][named[spec]] = 0
        return m
    if Path(spec).suffix in (".npy", ".npz") and Path(spec).is_file():
        arr = read_array(spec, key_name=None)[0]
        if arr.ndim == 2:                                                   # one [H, W] mask
            arr = arr[None]
        if arr.dtype == bool:
            arr = arr.astype("float32")
        return (load_images(array_to_nchw(arr, f"--mask {spec!r}"), 1, size, n=1, what=f"--mask {spec!r}") + 1) / 2
    return (load_images(spec, 1, size, n=1, what="--mask") + 1) / 2        # white (1) = keep


def _model_mask(spec: str, loaded) -> tuple[torch.Tensor, torch.Tensor]:
    """(the mask the sampler uses, the mask in pixels shown in the grid) [1, 1, ...] from --mask: the same for a
    pixel model; a latent pipeline's is the pixel mask's minimum over each f x f block, shown upsampled back."""
    c, size = image_shape(loaded)[:2]
    if not isinstance(loaded, LoadedPipeline):
        m = _mask(spec, c, size)
        return m, m
    pixels = _mask(spec, 1, pixel_shape(loaded)[1])
    f = pixels.shape[-1] // size
    m = -F.max_pool2d(-pixels, f)                                   # min over each f x f block: keep only whole cells
    return m, m.repeat_interleave(f, -2).repeat_interleave(f, -1)


def _check_transfer(args: argparse.Namespace) -> None:
    """transfer's condition flags: prompts (both) or classes (both)."""
    if args.prompt is not None and args.target_prompt is None:
        raise DDIMError("--target-prompt: transfer with --prompt needs the text to decode the images under")
    if args.prompt is None and (args.from_class is None or args.to_class is None):
        raise DDIMError("--from-class and --to-class: transfer needs both on a class-conditional model (or "
                        "--prompt and --target-prompt on a latent text-to-image pipeline)")


def run(args: argparse.Namespace) -> None:
    config = sample_config(args)
    check_prompt_flags(args)
    if args.edit == "transfer":
        check_refine(args)
        _check_transfer(args)
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    cond, uncond, _ = prompt_condition(args, loaded)
    x0 = input_images(args, loaded, args.n)
    if args.edit == "inpaint":
        mask, shown_mask = (m.to(args.device) for m in _model_mask(args.mask, loaded))
    sampler = make_sampler(loaded, config, args.device)
    gens = sample_generators(config.seed, range(len(x0)))
    opts = {k: v for k, v in config.walk_options().items() if k != "steps"}
    z0 = latents_of(loaded, x0)             # a latent pipeline's VAE latents; pixel models: x0 itself
    z0 = z0.to(latent_dtype(config, z0))    # float64 walks for --dtype float64
    if args.edit == "transfer":
        opts.pop("guidance")
        if cond is not None:                # prompts: encode under --prompt, decode under --target-prompt
            target = loaded.encode_prompt([args.target_prompt])
            result = sampler.transfer(z0, steps=config.steps, guidance=args.guidance, refine=args.refine,
                                      cond=cond, target_cond=target, uncond=uncond, **opts)
        else:
            if not getattr(loaded.config, "num_classes", 0):     # a latent pipeline has no config of ours
                raise DDIMError("transfer needs a class-conditional model (--ckpt digits-cond, or one trained with "
                                "model.num_classes)")
            for flag, k in (("--from-class", args.from_class), ("--to-class", args.to_class)):
                if not 0 <= k < loaded.config.num_classes:
                    raise DDIMError(f"{flag} must be in [0, {loaded.config.num_classes}), got {k}")
            result = sampler.transfer(z0, args.from_class, args.to_class, config.steps, guidance=args.guidance,
                                      refine=args.refine, **opts)
        shown = x0
    else:
        y = labels(args, loaded, len(x0))
        opts["y"] = None if y is None else y.to(args.device)
        opts.update(cond=cond, uncond=uncond)
        with torch.no_grad():
            if args.edit == "sdedit":
                result = sampler.sdedit(z0, args.strength, config.steps, generator=gens, **opts)
                shown = x0
            else:
                result = sampler.inpaint(z0, mask, config.steps, generator=gens, resample=args.resample, **opts)
                shown = x0 * shown_mask + (shown_mask - 1)             # the hidden part shown black
    result = images_of(loaded, result)
    save_image_grid(torch.cat([shown.cpu(), result.cpu()]), out, nrow=len(x0), scale="auto")
    print(f"wrote {out}: inputs in the first row, {args.edit} results in the second")
