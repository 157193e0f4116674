"""`ddim encode` and `ddim reconstruct`: images -> latents x_T with the deterministic ODE (eq. 13) -> images. On a
latent pipeline (--prompt) the same walk runs between its VAE's encoder and decoder."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ddim.checkpoint import LoadedPipeline
from ddim.commands.common import (Formatter, add_model_args, add_output_args, add_prompt_args, add_refine_arg,
                                  add_sampler_args, check_prompt_flags, check_refine, input_images, labels, load,
                                  prompt_condition, sample_config)
from ddim.evaluation import reconstruction_mse
from ddim.generate import decode, encode, images_of, latents_of, make_sampler, resolve_batch_size
from ddim.images import save_image_grid
from ddim.io import atomic_path, write_json_atomic
from ddim.runs import claim_folder, prepare_output, remove_owned

RECONSTRUCT_OWNED = ("reconstructions.png", "mse.json")     # mse.json last: it marks a finished reconstruction
INPUT_HELP = ("images: 'digits', a folder, an .npz / .npy file, or one image file (image files are resized to the "
              "model's size; a latent pipeline's VAE encodes them to its latents first)")
ENCODE_EPILOG = """examples:
  ddim encode --input digits --n 16 --out latents.npz
  ddim encode --ckpt sd-pipeline-folder --input photos/ --prompt "a photo of a cat" --guidance 1 \\
      --solver edict --steps 50 --out latents.npz          (a diffusers latent pipeline: VAE latents, inverted)"""
RECONSTRUCT_EPILOG = """examples:
  ddim reconstruct --input digits --n 16 --steps 10 20 50 100 --out recon
  ddim reconstruct --ckpt sd-pipeline-folder --input photos/ --n 4 --prompt "a photo of a cat" \\
      --guidance 3 --solver bdia --steps 10 50 --out recon      (MSE in pixels: the VAE's own error included)"""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("encode", help="encode images into latents x_T with the deterministic ODE (eq. 13)",
                       formatter_class=Formatter, epilog=ENCODE_EPILOG)
    add_model_args(s)
    add_sampler_args(s, stochastic=False, seed=False, afs=False)
    add_refine_arg(s)
    add_prompt_args(s)
    s.add_argument("--input", required=True, help=INPUT_HELP)
    s.add_argument("--n", type=int, default=None, help="use the first n images")
    add_output_args(s, "latents.npz", "output .npz (key 'latents'; --solver bdia / edict also 'latents_y', the "
                    "coupled latent's second tensor)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=run_encode)

    s = sub.add_parser("reconstruct", help="encode then decode; report Table 2's per-dimension MSE",
                       formatter_class=Formatter, epilog=RECONSTRUCT_EPILOG)
    add_model_args(s)
    add_sampler_args(s, steps="many", stochastic=False, seed=False, default_steps=(10, 20, 50, 100), afs=False)
    add_refine_arg(s)
    add_prompt_args(s)
    s.add_argument("--input", required=True, help=INPUT_HELP)
    s.add_argument("--n", type=int, default=16, help="use the first n images")
    add_output_args(s, "recon", "output folder (reconstructions.png, mse.json)")
    s.set_defaults(fn=run_reconstruct)


def run_encode(args: argparse.Namespace) -> None:
    config = sample_config(args)
    check_refine(args)
    check_prompt_flags(args)
    out = prepare_output(args.out, args.overwrite)
    loaded = load(args)
    cond, uncond, prompts = prompt_condition(args, loaded)
    x0 = input_images(args, loaded, args.n)
    sampler = make_sampler(loaded, config, args.device)
    config = config.replace(batch_size=resolve_batch_size(config, loaded, args.device, len(x0)))
    y = labels(args, loaded, len(x0))
    z = encode(sampler, latents_of(loaded, x0), config, progress=not args.quiet,
               y=None if y is None else y.to(args.device), refine=args.refine, cond=cond, uncond=uncond)
    def array(t: torch.Tensor) -> np.ndarray:                  # float64 latents (--dtype float64) stay float64
        return (t if t.dtype == torch.float64 else t.float()).cpu().numpy()
    pair = {} if isinstance(z, torch.Tensor) else {"latents_y": array(z.y)}
    if prompts:                                     # what the latents were inverted under (strings, no pickle)
        pair.update(prompts, guidance=config.guidance)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:       # a file object: numpy appends no ".npz"
        np.savez(f, latents=array(z if isinstance(z, torch.Tensor) else z.x), **pair,
                 steps=config.steps, skip=str(config.skip), solver=config.solver, refine=args.refine)
    print(f"wrote latents [{', '.join(map(str, z.shape))}] (level tau_S of {config.steps} {config.skip} steps) "
          f"to {out}")


def run_reconstruct(args: argparse.Namespace) -> None:
    configs = [sample_config(args, steps=S) for S in args.steps]
    check_refine(args)
    check_prompt_flags(args)
    out = claim_folder(args.out, RECONSTRUCT_OWNED, "mse.json", args.overwrite, "reconstruction")
    loaded = load(args)
    cond, uncond, _ = prompt_condition(args, loaded)
    sampler = make_sampler(loaded, configs[0], args.device)
    x0 = input_images(args, loaded, args.n)
    z0 = latents_of(loaded, x0)                     # a latent pipeline's VAE latents; pixel models: x0 itself
    rows, results = [x0.cpu()], {}
    y = labels(args, loaded, len(x0))
    y = None if y is None else y.to(args.device)
    bs = resolve_batch_size(configs[0], loaded, args.device, len(x0))
    latent = isinstance(loaded, LoadedPipeline)
    if latent:                                      # the floor under every S: the VAE's own round trip
        print(f"VAE alone (encode, decode): per-dimension MSE {reconstruction_mse(x0, images_of(loaded, z0)):.6f} "
              "(pixels in [0, 1])")
    for cfg in configs:
        cfg = cfg.replace(batch_size=bs)
        z_rec = decode(sampler, encode(sampler, z0, cfg, y=y, refine=args.refine, cond=cond, uncond=uncond), cfg,
                       y=y, cond=cond, uncond=uncond)
        rec = images_of(loaded, z_rec)
        results[cfg.steps] = reconstruction_mse(x0, rec)
        rows.append(rec.cpu())
        where = f"; latents: per-dimension MSE {((z_rec - z0) ** 2).mean().item():.3g}" if latent else ""
        print(f"S = {cfg.steps:5d}: per-dimension MSE {results[cfg.steps]:.6f} (pixels in [0, 1]){where}")
    remove_owned(out, RECONSTRUCT_OWNED)
    save_image_grid(torch.cat(rows), out / "reconstructions.png", nrow=len(x0), scale="auto")
    write_json_atomic(out / "mse.json", {str(k): v for k, v in results.items()}, indent=1)
    print(f"wrote {out}/reconstructions.png (first row: inputs; then one row per S) and {out}/mse.json")
