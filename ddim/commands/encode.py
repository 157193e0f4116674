"""`ddim encode` and `ddim reconstruct`: images -> latents x_T with the deterministic ODE (eq. 13) -> images."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ddim.commands.common import (Formatter, add_model_args, add_output_args, add_refine_arg, add_sampler_args,
                                  check_refine, labels, load, sample_config)
from ddim.evaluation import reconstruction_mse
from ddim.generate import decode, encode, image_shape, make_sampler, resolve_batch_size
from ddim.images import load_images, save_image_grid
from ddim.io import atomic_path, write_json_atomic
from ddim.runs import claim_folder, prepare_output, remove_owned

RECONSTRUCT_OWNED = ("reconstructions.png", "mse.json")     # mse.json last: it marks a finished reconstruction
INPUT_HELP = "images: 'digits', a folder, an .npz / .npy file, or one image file"


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("encode", help="encode images into latents x_T with the deterministic ODE (eq. 13)",
                       formatter_class=Formatter, epilog="example: ddim encode --input digits --n 16 --out latents.npz")
    add_model_args(s)
    add_sampler_args(s, stochastic=False, seed=False, afs=False)
    add_refine_arg(s)
    s.add_argument("--input", required=True, help=INPUT_HELP)
    s.add_argument("--n", type=int, default=None, help="use the first n images")
    add_output_args(s, "latents.npz", "output .npz (key 'latents'; --solver bdia / edict also 'latents_y', the "
                    "coupled latent's second tensor)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=run_encode)

    s = sub.add_parser("reconstruct", help="encode then decode; report Table 2's per-dimension MSE",
                       formatter_class=Formatter, epilog="example: ddim reconstruct --input digits --n 16 "
                                                         "--steps 10 20 50 100 --out recon")
    add_model_args(s)
    add_sampler_args(s, steps="many", stochastic=False, seed=False, default_steps=(10, 20, 50, 100), afs=False)
    add_refine_arg(s)
    s.add_argument("--input", required=True, help=INPUT_HELP)
    s.add_argument("--n", type=int, default=16, help="use the first n images")
    add_output_args(s, "recon", "output folder (reconstructions.png, mse.json)")
    s.set_defaults(fn=run_reconstruct)


def run_encode(args: argparse.Namespace) -> None:
    config = sample_config(args)
    check_refine(args)
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    x0 = load_images(args.input, *image_shape(loaded)[:2], n=args.n, what="--input").to(args.device)
    sampler = make_sampler(loaded, config, args.device)
    config = config.replace(batch_size=resolve_batch_size(config, loaded, args.device, len(x0)))
    y = labels(args, loaded, len(x0))
    z = encode(sampler, x0, config, progress=not args.quiet, y=None if y is None else y.to(args.device), refine=args.refine)
    pair = {} if isinstance(z, torch.Tensor) else {"latents_y": z.y.float().cpu().numpy()}
    with atomic_path(out) as tmp, open(tmp, "wb") as f:       # a file object: numpy appends no ".npz"
        np.savez(f, latents=(z if isinstance(z, torch.Tensor) else z.x).float().cpu().numpy(), **pair,
                 steps=config.steps, skip=str(config.skip), solver=config.solver, refine=args.refine)
    print(f"wrote latents [{', '.join(map(str, z.shape))}] (level tau_S of {config.steps} {config.skip} steps) "
          f"to {out}")


def run_reconstruct(args: argparse.Namespace) -> None:
    configs = [sample_config(args, steps=S) for S in args.steps]
    check_refine(args)
    out = claim_folder(args.out, RECONSTRUCT_OWNED, "mse.json", args.overwrite, "reconstruction")
    loaded = load(args)
    sampler = make_sampler(loaded, configs[0], args.device)
    x0 = load_images(args.input, *image_shape(loaded)[:2], n=args.n, what="--input").to(args.device)
    rows, results = [x0.cpu()], {}
    y = labels(args, loaded, len(x0))
    y = None if y is None else y.to(args.device)
    bs = resolve_batch_size(configs[0], loaded, args.device, len(x0))
    for cfg in configs:
        cfg = cfg.replace(batch_size=bs)
        rec = decode(sampler, encode(sampler, x0, cfg, y=y, refine=args.refine), cfg, y=y)
        results[cfg.steps] = reconstruction_mse(x0, rec)
        rows.append(rec.cpu())
        print(f"S = {cfg.steps:5d}: per-dimension MSE {results[cfg.steps]:.6f} (pixels in [0, 1])")
    remove_owned(out, RECONSTRUCT_OWNED)
    save_image_grid(torch.cat(rows), out / "reconstructions.png", nrow=len(x0), scale="auto")
    write_json_atomic(out / "mse.json", {str(k): v for k, v in results.items()}, indent=1)
    print(f"wrote {out}/reconstructions.png (first row: inputs; then one row per S) and {out}/mse.json")
