"""`ddim edit sdedit | inpaint | transfer`: edit real images with the sampler -> a grid (inputs, then results)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddim.commands.common import (Formatter, add_model_args, add_output_args, add_refine_arg, add_sampler_args,
                                  check_refine, labels, load, positive_int, sample_config)
from ddim.errors import DDIMError
from ddim.generate import image_shape, latent_dtype, make_sampler, sample_generators
from ddim.images import array_to_nchw, load_images, read_array, save_image_grid
from ddim.runs import prepare_output
from ddim.sampling.options import DEFAULTS as WALK

EPILOG = """examples:
  ddim edit sdedit --input digits --n 8 --strength 0.5 --out sdedit.png
  ddim edit inpaint --input digits --n 8 --mask right --resample 3 --out inpaint.png
  ddim edit transfer --ckpt digits-cond --input digits --n 10 --from-class 3 --to-class 8 --guidance 2 --out t.png"""
MASKS = ("left", "right", "top", "bottom", "center")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("edit", help="edit real images: SDEdit, inpainting, class transfer", formatter_class=Formatter,
                       epilog=EPILOG)
    edits = e.add_subparsers(dest="edit", required=True, metavar="EDIT")

    def common(p: argparse.ArgumentParser, out: str) -> None:
        add_model_args(p)
        add_sampler_args(p, classes=p.prog.split()[-1] != "transfer")
        p.add_argument("--input", required=True, help="images: 'digits', a folder, an .npz / .npy file, an image")
        p.add_argument("--n", type=positive_int, default=8, help="use the first n images")
        add_output_args(p, out, "output PNG: the inputs in the first row, the results in the second")

    p = edits.add_parser("sdedit", help="noise the images part of the way and sample back (SDEdit)",
                         formatter_class=Formatter, epilog=EPILOG)
    common(p, "sdedit.png")
    p.add_argument("--strength", type=float, default=0.5, help="0: the input unchanged; 1: sampling from noise")
    p.set_defaults(fn=run)
    p = edits.add_parser("inpaint", help="fill in the masked part of the images", formatter_class=Formatter,
                         epilog=EPILOG)
    common(p, "inpaint.png")
    p.add_argument("--mask", default="right", help=f"the part to fill in: {', '.join(MASKS)}, or a PNG / .npy "
                   "file (white / 1 = keep)")
    p.add_argument("--resample", type=positive_int, default=1, help="RePaint resampling: each step this many times")
    p.set_defaults(fn=run)
    p = edits.add_parser("transfer", help="encode with one class, decode with another", formatter_class=Formatter,
                         epilog=EPILOG)
    common(p, "transfer.png")
    p.add_argument("--from-class", type=int, required=True, help="the class the images are (used to encode)")
    p.add_argument("--to-class", type=int, required=True, help="the class to decode them as")
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


def run(args: argparse.Namespace) -> None:
    config = sample_config(args)
    if args.edit == "transfer":
        check_refine(args)
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    c, size = image_shape(loaded)[:2]
    sampler = make_sampler(loaded, config, args.device)
    x0 = load_images(args.input, c, size, n=args.n, what="--input")
    x0 = x0.to(args.device, latent_dtype(config, x0))         # float64 walks for --dtype float64
    gens = sample_generators(config.seed, range(len(x0)))
    opts = {k: v for k, v in config.walk_options().items() if k != "steps"}
    if args.edit == "transfer":
        if not loaded.config.num_classes:
            raise DDIMError("transfer needs a class-conditional model (--ckpt digits-cond, or one trained with "
                            "model.num_classes)")
        for flag, k in (("--from-class", args.from_class), ("--to-class", args.to_class)):
            if not 0 <= k < loaded.config.num_classes:
                raise DDIMError(f"{flag} must be in [0, {loaded.config.num_classes}), got {k}")
        opts.pop("guidance")
        result = sampler.transfer(x0, args.from_class, args.to_class, config.steps, guidance=args.guidance,
                                  refine=args.refine, **opts)
        shown = x0
    else:
        y = labels(args, loaded, len(x0))
        opts["y"] = None if y is None else y.to(args.device)
        with torch.no_grad():
            if args.edit == "sdedit":
                result = sampler.sdedit(x0, args.strength, config.steps, generator=gens, **opts)
                shown = x0
            else:
                mask = _mask(args.mask, c, size).to(args.device)
                result = sampler.inpaint(x0, mask, config.steps, generator=gens, resample=args.resample, **opts)
                shown = x0 * mask + (mask - 1)                        # the hidden part shown black
    save_image_grid(torch.cat([shown.cpu(), result.cpu()]), out, nrow=len(x0), scale="auto")
    print(f"wrote {out}: inputs in the first row, {args.edit} results in the second")
