"""The paper's pictures: `ddim interpolate` (Figure 6), `ddim consistency` (Figures 3, 5), `ddim trajectory`."""

from __future__ import annotations

import argparse

import torch

from ddim.commands.common import (Formatter, add_model_args, add_output_args, add_sampler_args, checkpoint_defaults,
                                  labels, load, positive_int, sample_config)
from ddim.generate import (decode, encode, image_shape, initial_noise, make_sampler, resolve_batch_size,
                           sample_generators)
from ddim.images import load_images, save_image_grid
from ddim.runs import prepare_output
from ddim.sampling import slerp


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("interpolate", help="slerp between latents -> a strip PNG (Figure 6)", formatter_class=Formatter,
                       epilog="examples:\n  ddim interpolate --pairs 4 --frames 9 --out interp.png\n"
                              "  ddim interpolate --images a.png b.png --out ab.png   (encode two images first)")
    add_model_args(s)
    add_sampler_args(s, stochastic=False)
    s.add_argument("--pairs", type=positive_int, default=4, help="rows: random latent pairs drawn from --seed")
    s.add_argument("--images", nargs=2, default=None, metavar="IMAGE", help="two images to encode and interpolate "
                   "instead (image files, or any image spec whose first image is taken)")
    s.add_argument("--frames", type=positive_int, default=9, help="frames per row, endpoints included")
    add_output_args(s, "interpolation.png", "output PNG")
    s.set_defaults(fn=run_interpolate)

    s = sub.add_parser("consistency", help="one x_T sampled at several S -> a grid (Figures 3, 5)",
                       formatter_class=Formatter, epilog="example: ddim consistency --n 8 --steps 10 20 50 100 1000")
    add_model_args(s)
    add_sampler_args(s, steps="many", stochastic=False, default_steps=(10, 20, 50, 100, 1000))
    s.add_argument("--n", type=positive_int, default=8, help="columns: samples sharing x_T across rows")
    add_output_args(s, "consistency.png", "output PNG")
    s.set_defaults(fn=run_consistency)

    s = sub.add_parser("trajectory", help="x0_pred along the chain -> a grid (the official 'sequence' mode)",
                       formatter_class=Formatter,
                       epilog="example: ddim trajectory --n 4 --steps 20 --out trajectory.png")
    add_model_args(s)
    add_sampler_args(s, batch=False)         # the n rows are one batch
    s.add_argument("--n", type=positive_int, default=4, help="rows: samples")
    s.add_argument("--columns", type=positive_int, default=10, help="steps shown per row (evenly spaced), after x_T")
    add_output_args(s, "trajectory.png", "output PNG")
    s.set_defaults(fn=run_trajectory)


def _noise(loaded, seed: int, n: int, device) -> tuple[torch.Tensor, list[torch.Generator]]:
    gens = sample_generators(seed, range(n))
    return initial_noise(image_shape(loaded), gens, device), gens


def run_interpolate(args: argparse.Namespace) -> None:
    config = sample_config(args)
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    sampler = make_sampler(loaded, config, args.device)
    if args.images:
        c, size = image_shape(loaded)[:2]
        x0 = torch.cat([load_images(p, c, size, n=1, what="--images") for p in args.images]).to(args.device)
        y = labels(args, loaded, 1)
        z = encode(sampler, x0, config.replace(batch_size=2), y=None if y is None else y.repeat(2))
        z0, z1 = z[:1], z[1:]
    else:
        y = labels(args, loaded, args.pairs)
        z, _ = _noise(loaded, config.seed, 2 * args.pairs, args.device)
        z0, z1 = z[0::2], z[1::2]
    frames = torch.stack([slerp(z0, z1, a.item()) for a in torch.linspace(0, 1, args.frames)], 1)  # [pairs, F, ...]
    flat = frames.flatten(0, 1)
    y_flat = None if y is None else y.repeat_interleave(args.frames).to(args.device)     # one class per row
    imgs = decode(sampler, flat, config.replace(batch_size=resolve_batch_size(config, loaded, args.device, len(flat))),
                  y=y_flat)
    save_image_grid(imgs.cpu(), out, nrow=args.frames, scale="auto")
    print(f"wrote {out}: {len(z0)} row(s) of {args.frames} slerp frames")


def run_consistency(args: argparse.Namespace) -> None:
    configs = [sample_config(args, steps=S) for S in args.steps]
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    sampler = make_sampler(loaded, configs[0], args.device)
    x_T, _ = _noise(loaded, configs[0].seed, args.n, args.device)
    bs = resolve_batch_size(configs[0], loaded, args.device, args.n)
    y = labels(args, loaded, args.n)
    y = None if y is None else y.to(args.device)
    rows = [decode(sampler, x_T, cfg.replace(batch_size=bs), y=y).cpu() for cfg in configs]
    save_image_grid(torch.cat(rows), out, nrow=args.n, scale="auto")
    print(f"wrote {out}: rows are S = {args.steps}, columns share x_T")


def run_trajectory(args: argparse.Namespace) -> None:
    config = sample_config(args)
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    config = checkpoint_defaults(args, config, loaded)
    sampler = make_sampler(loaded, config, args.device)
    x_T, gens = _noise(loaded, config.seed, args.n, args.device)
    y = labels(args, loaded, args.n)
    steps = list(sampler.walk(x_T, config.walk, gens, None if y is None else y.to(args.device)))
    keep = sorted(set(torch.linspace(0, len(steps) - 1, min(args.columns, len(steps))).round().long().tolist()))
    cols = [x_T.cpu()] + [steps[k][2].cpu() for k in keep]            # x_T, then x0_pred along the way
    save_image_grid(torch.stack(cols, 1).flatten(0, 1), out, nrow=len(cols), scale="auto")
    print(f"wrote {out}: each row is x_T then x0_pred at t = {[steps[k][0] for k in keep]}")
