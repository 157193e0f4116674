"""The `ddim` command line: one subcommand per task of the paper. `ddim <command> --help` has a worked example.

Errors propagate (non-zero exit) with a one-line message; set DDIM_TRACEBACK=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ddim.io import write_json_atomic
from ddim.sampling import VARIANCES
from ddim.schedule import SKIPS

F = argparse.ArgumentDefaultsHelpFormatter


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- shared argument groups ------------------------------------------------------------------------------
def _batch_size(text: str) -> int | str:
    """argparse type of --batch-size: an integer >= 1 or 'auto'."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'auto', got {text!r}")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--ckpt", default=None, help="checkpoint: ddim .safetensors, official .ckpt / ckpt.pth, or a "
                   "diffusers UNet2DModel folder (default: the embedded 16x16 digits model)")
    g.add_argument("--config", default=None, help="for official checkpoints: a preset name (cifar10, celeba64, "
                   "lsun256) or the official YAML (configs/cifar10.yml)")
    g.add_argument("--raw-weights", action="store_true", help="official training container: raw weights, not EMA")
    g.add_argument("--device", default=_default_device(), help="torch device")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="network compute dtype (autocast); the sampler's arithmetic stays float32")
    g.add_argument("--channels-last", action="store_true", help="run the network in channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (slow start, faster steps)")


def _sampling_args(p: argparse.ArgumentParser, steps: bool = True) -> None:
    g = p.add_argument_group("sampling")
    if steps:
        g.add_argument("--steps", type=int, default=50, help="S, the number of sampling steps")
    g.add_argument("--eta", type=float, default=0.0, help="0 = DDIM (deterministic), 1 = DDPM")
    g.add_argument("--skip", default="uniform", choices=SKIPS, help="the sub-sequence tau of the T steps")
    g.add_argument("--variance", default="eta", choices=VARIANCES,
                   help="'eta': sigma of eq. 16 times eta; 'large': Table 1's sigma-hat sampler")
    g.add_argument("--clip-denoised", action="store_true", help="clip x0_pred to [-1, 1] at every step")
    g.add_argument("--seed", type=int, default=0, help="sample i is a pure function of (seed, i)")
    g.add_argument("--batch-size", type=_batch_size, default=64,
                   help="images per network call, or 'auto' (CUDA: what fits in free memory; CPU: 64)")


def _load(args: argparse.Namespace):
    from ddim.generate import load_model
    return load_model(args.ckpt, args.config, ema=not args.raw_weights, device=args.device)


def _sampler(args: argparse.Namespace, loaded):
    from ddim.generate import network
    from ddim.sampling import DDIMSampler
    fn = network(loaded.model, args.dtype, args.channels_last, args.compile)
    return DDIMSampler(fn, loaded.schedule, loaded.prediction)


def _resolve_batch(args: argparse.Namespace, loaded, n: int) -> int:
    """--batch-size as a number; 'auto' probes the network on the device (see ddim.generate.auto_batch_size)."""
    if args.batch_size != "auto":
        return args.batch_size
    from ddim.generate import auto_batch_size, network
    c = loaded.config
    fn = network(loaded.model, args.dtype, args.channels_last)  # eager probe: compiled code needs no more memory
    return auto_batch_size(fn, (c.in_channels, c.image_size, c.image_size), args.device, max(1, n))


def _noise(args: argparse.Namespace, loaded, indices):
    from ddim.generate import initial_noise, sample_generators
    c = loaded.config
    gens = sample_generators(args.seed, indices)
    return initial_noise((c.in_channels, c.image_size, c.image_size), gens, args.device), gens


def _prepare_out(path: Path, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _input_images(spec: str, loaded, n: int | None) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] at the model's size: a folder, an .npz, or 'digits' (the embedded data)."""
    from ddim import data
    c = loaded.config
    if spec == "digits":
        ds = data.digits(c.image_size)
    elif Path(spec).is_dir():
        ds = data.ImageFolder(spec, c.image_size, channels=c.in_channels)
    elif Path(spec).suffix in (".npz", ".npy"):
        ds = data.npz_arrays(spec)
    elif Path(spec).is_file():
        from PIL import Image
        img = Image.open(spec).convert("L" if c.in_channels == 1 else "RGB").resize((c.image_size, c.image_size))
        return data.from_uint8(torch.from_numpy(__import__("numpy").asarray(img))).reshape(
            1, c.image_size, c.image_size, c.in_channels).permute(0, 3, 1, 2)
    else:
        raise FileNotFoundError(f"--input {spec!r}: not a folder, .npz, image file, or 'digits'")
    n = len(ds) if n is None else min(n, len(ds))
    x = torch.stack([ds[i] if not isinstance(ds[i], (tuple, list)) else ds[i][0] for i in range(n)])
    if tuple(x.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
        raise ValueError(f"--input {spec!r} holds images of shape {tuple(x.shape[1:])}; the model takes "
                         f"{(c.in_channels, c.image_size, c.image_size)}")
    return x


# --- commands --------------------------------------------------------------------------------------------
def cmd_sample(args: argparse.Namespace) -> None:
    from ddim.generate import SampleRun, generate
    loaded = _load(args)
    run = SampleRun(ckpt=str(args.ckpt or "embedded:digits"), n=args.n, steps=args.steps, eta=args.eta,
                    skip=args.skip, variance=args.variance, seed=args.seed, clip_denoised=args.clip_denoised,
                    ema=not args.raw_weights)
    distributed = _init_distributed()
    try:
        out = generate(loaded, args.out, run, args.batch_size, args.device, args.dtype, args.channels_last,
                       args.compile, args.overwrite, progress=not args.quiet)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {args.n} images to {out}/images, {out}/samples.npz and {out}/grid.png")


def _init_distributed() -> bool:
    """Join the process group when launched by torchrun; True if this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def cmd_encode(args: argparse.Namespace) -> None:
    import numpy as np
    loaded = _load(args)
    x0 = _input_images(args.input, loaded, args.n).to(args.device)
    bs = _resolve_batch(args, loaded, len(x0))
    z = torch.cat([_sampler(args, loaded).invert(x0[i:i + bs], args.steps, args.skip, progress=True)
                   for i in range(0, len(x0), bs)])
    out = _prepare_out(Path(args.out), args.overwrite)
    np.savez(out, latents=z.float().cpu().numpy(), steps=args.steps, skip=args.skip)
    print(f"wrote latents [{', '.join(map(str, z.shape))}] (level tau_S of {args.steps} {args.skip} steps) to {out}")


def reconstruction_mse(x0: torch.Tensor, x_rec: torch.Tensor) -> float:
    """Per-dimension MSE in [0, 1] pixel units, as in the paper's Table 2."""
    return (((x_rec.float().clamp(-1, 1) - x0.float()) / 2) ** 2).mean().item()


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from ddim.data import save_image_grid
    loaded = _load(args)
    sampler = _sampler(args, loaded)
    x0 = _input_images(args.input, loaded, args.n).to(args.device)
    rows, results = [x0.cpu()], {}
    for S in args.steps:
        z = sampler.invert(x0, S, args.skip)
        rec = sampler.sample(z, S, 0.0, args.skip)
        results[S] = reconstruction_mse(x0, rec)
        rows.append(rec.cpu())
        print(f"S = {S:5d}: per-dimension MSE {results[S]:.6f} (pixels in [0, 1])")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(torch.cat(rows), out / "reconstructions.png", nrow=len(x0), scale="auto")
    write_json_atomic(out / "mse.json", {str(k): v for k, v in results.items()}, indent=1)
    print(f"wrote {out}/reconstructions.png (first row: inputs; then one row per S) and {out}/mse.json")


def cmd_interpolate(args: argparse.Namespace) -> None:
    from ddim.data import save_image_grid
    from ddim.sampling import slerp
    loaded = _load(args)
    sampler = _sampler(args, loaded)
    if args.images:
        x0 = torch.cat([_input_images(p, loaded, 1) for p in args.images]).to(args.device)
        z = sampler.invert(x0, args.steps, args.skip)
        z0, z1 = z[:1], z[1:]
    else:
        z, _ = _noise(args, loaded, range(2 * args.pairs))
        z0, z1 = z[0::2], z[1::2]
    alphas = torch.linspace(0, 1, args.frames)
    frames = torch.stack([slerp(z0, z1, a.item()) for a in alphas], 1)     # [pairs, frames, C, H, W]
    flat = frames.flatten(0, 1)
    bs = _resolve_batch(args, loaded, len(flat))
    imgs = torch.cat([sampler.sample(flat[i:i + bs], args.steps, 0.0, args.skip) for i in range(0, len(flat), bs)])
    out = _prepare_out(Path(args.out), args.overwrite)
    save_image_grid(imgs.cpu(), out, nrow=args.frames, scale="auto")
    print(f"wrote {out}: {len(z0)} row(s) of {args.frames} slerp frames")


def cmd_consistency(args: argparse.Namespace) -> None:
    from ddim.data import save_image_grid
    loaded = _load(args)
    sampler = _sampler(args, loaded)
    x_T, _ = _noise(args, loaded, range(args.n))
    rows = [sampler.sample(x_T, S, 0.0, args.skip).cpu() for S in args.steps]
    out = _prepare_out(Path(args.out), args.overwrite)
    save_image_grid(torch.cat(rows), out, nrow=args.n, scale="auto")
    print(f"wrote {out}: rows are S = {args.steps}, columns share x_T")


def cmd_trajectory(args: argparse.Namespace) -> None:
    from ddim.data import save_image_grid
    loaded = _load(args)
    x_T, gens = _noise(args, loaded, range(args.n))
    steps = list(_sampler(args, loaded).iter_sample(x_T, args.steps, args.eta, args.skip, args.variance, gens,
                                                    args.clip_denoised))
    keep = sorted(set(torch.linspace(0, len(steps) - 1, min(args.columns, len(steps))).round().long().tolist()))
    cols = [x_T.cpu()] + [steps[k][2].cpu() for k in keep]            # x_T, then x0_pred along the way
    grid = torch.stack(cols, 1).flatten(0, 1)
    out = _prepare_out(Path(args.out), args.overwrite)
    save_image_grid(grid, out, nrow=len(cols), scale="auto")
    print(f"wrote {out}: each row is x_T then x0_pred at t = {[steps[k][0] for k in keep]}")


def cmd_fid(args: argparse.Namespace) -> None:
    from ddim.metrics import fid
    result = fid.compute_fid(args.images, args.reference, weights=args.inception_weights,
                             batch_size=args.batch_size, device=args.device, progress=True,
                             download=not args.no_download)
    print(json.dumps(result, indent=1))


def cmd_fid_stats(args: argparse.Namespace) -> None:
    from ddim.metrics import fid
    images = fid.load_images(args.images)
    feats = fid.inception_features(images, weights=args.inception_weights, batch_size=args.batch_size,
                                   device=args.device, progress=True, download=not args.no_download)
    mu, sigma = fid.feature_statistics(feats)
    out = _prepare_out(Path(args.out), args.overwrite)
    fid.save_statistics(out, mu, sigma)
    print(f"wrote {out} (mu [{mu.shape[0]}], sigma [{sigma.shape[0]}, {sigma.shape[1]}]) from {len(images)} images")


def cmd_train(args: argparse.Namespace) -> None:
    from ddim.config import config_from_args
    from ddim.train import train
    run_dir = train(config_from_args(args), progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {run_dir}")


# --- parser ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddim", description="Denoising Diffusion Implicit Models: train, sample, "
                                "encode, interpolate and evaluate.", formatter_class=F)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sample", help="sample images to PNGs, a grid and an .npz", formatter_class=F,
                       epilog="example: ddim sample --n 64 --steps 50 --out samples   "
                              "(resumable; on 8 GPUs: torchrun --nproc_per_node 8 -m ddim sample --num-samples 50000 ...)")
    _model_args(s)
    _sampling_args(s)
    s.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of images (spell it --num-samples under torchrun, whose parser takes --n)")
    s.add_argument("--out", default="samples", help="output folder")
    s.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("encode", help="encode images into latents x_T with the deterministic ODE (eq. 13)",
                       formatter_class=F, epilog="example: ddim encode --input digits --n 16 --out latents.npz")
    _model_args(s)
    _sampling_args(s)
    s.add_argument("--input", required=True, help="images: a folder, an .npz, an image file, or 'digits'")
    s.add_argument("--n", type=int, default=None, help="use the first n images")
    s.add_argument("--out", default="latents.npz", help="output .npz (key 'latents')")
    s.add_argument("--overwrite", action="store_true", help="replace --out")
    s.set_defaults(fn=cmd_encode)

    s = sub.add_parser("reconstruct", help="encode then decode; report Table 2's per-dimension MSE",
                       formatter_class=F, epilog="example: ddim reconstruct --input digits --n 16 "
                                                 "--steps 10 20 50 100 --out recon")
    _model_args(s)
    _sampling_args(s, steps=False)
    s.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100], help="step counts S to try")
    s.add_argument("--input", required=True, help="images: a folder, an .npz, an image file, or 'digits'")
    s.add_argument("--n", type=int, default=16, help="use the first n images")
    s.add_argument("--out", default="recon", help="output folder")
    s.set_defaults(fn=cmd_reconstruct)

    s = sub.add_parser("interpolate", help="slerp between latents -> a strip PNG (Figure 6)", formatter_class=F,
                       epilog="example: ddim interpolate --pairs 4 --frames 9 --out interp.png")
    _model_args(s)
    _sampling_args(s)
    s.add_argument("--pairs", type=int, default=4, help="rows: random latent pairs drawn from --seed")
    s.add_argument("--images", nargs=2, default=None, help="two image files to encode and interpolate instead")
    s.add_argument("--frames", type=int, default=9, help="frames per row, endpoints included")
    s.add_argument("--out", default="interpolation.png", help="output PNG")
    s.add_argument("--overwrite", action="store_true", help="replace --out")
    s.set_defaults(fn=cmd_interpolate)

    s = sub.add_parser("consistency", help="one x_T sampled at several S -> a grid (Figures 3, 5)",
                       formatter_class=F, epilog="example: ddim consistency --n 8 --steps 10 20 50 100 1000")
    _model_args(s)
    _sampling_args(s, steps=False)
    s.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000], help="step counts, one row each")
    s.add_argument("--n", type=int, default=8, help="columns: samples sharing x_T across rows")
    s.add_argument("--out", default="consistency.png", help="output PNG")
    s.add_argument("--overwrite", action="store_true", help="replace --out")
    s.set_defaults(fn=cmd_consistency)

    s = sub.add_parser("trajectory", help="x0_pred along the chain -> a grid (the official 'sequence' mode)",
                       formatter_class=F, epilog="example: ddim trajectory --n 4 --steps 20 --out trajectory.png")
    _model_args(s)
    _sampling_args(s)
    s.add_argument("--n", type=int, default=4, help="rows: samples")
    s.add_argument("--columns", type=int, default=10, help="steps shown per row (evenly spaced)")
    s.add_argument("--out", default="trajectory.png", help="output PNG")
    s.add_argument("--overwrite", action="store_true", help="replace --out")
    s.set_defaults(fn=cmd_trajectory)

    s = sub.add_parser("fid", help="FID and KID between images and a reference (images or statistics)",
                       formatter_class=F, epilog="example: ddim fid samples/samples.npz cifar10-train-stats.npz "
                                                 "--inception-weights pt_inception-2015-12-05-6726825d.pth")
    s.add_argument("images", help="generated images: a folder or an .npz")
    s.add_argument("reference", help="reference images (folder, .npz) or statistics (.npz with mu, sigma)")
    s.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth (else "
                   "$DDIM_INCEPTION_WEIGHTS, else the torch hub cache)")
    s.add_argument("--batch-size", type=int, default=50, help="images per Inception call")
    s.add_argument("--device", default=_default_device(), help="torch device")
    s.add_argument("--no-download", action="store_true", help="never fetch the weights into the torch hub cache")
    s.set_defaults(fn=cmd_fid)

    s = sub.add_parser("fid-stats", help="write Inception statistics (.npz with mu, sigma: pytorch-fid layout)",
                       formatter_class=F, epilog="example: ddim fid-stats cifar10_train.npz --out stats.npz")
    s.add_argument("images", help="images: a folder or an .npz")
    s.add_argument("--out", required=True, help="output .npz")
    s.add_argument("--overwrite", action="store_true", help="replace --out")
    s.add_argument("--inception-weights", default=None, help="the Inception weights file (see `ddim fid`)")
    s.add_argument("--batch-size", type=int, default=50, help="images per Inception call")
    s.add_argument("--device", default=_default_device(), help="torch device")
    s.add_argument("--no-download", action="store_true", help="never fetch the weights into the torch hub cache")
    s.set_defaults(fn=cmd_fid_stats)

    from ddim.evaluation import add_eval_parser
    add_eval_parser(sub, _model_args)

    sub.add_parser("bench", help="sampling throughput against diffusers on the same weights (see ddim bench --help)",
                   add_help=False, epilog="example: ddim bench --batches 1 8 64 --steps 50 --write")
    from ddim.config import add_train_arguments
    s = sub.add_parser("train", help="train a noise-prediction U-Net with the DDPM objective",
                       formatter_class=F, epilog="example: ddim train --config configs/digits.yml "
                                                 "--out runs/digits   (multi-GPU: torchrun ... -m ddim train)")
    add_train_arguments(s)
    s.set_defaults(fn=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:          # its own parser: it also runs itself in subprocesses
        from ddim import bench
        bench.main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        if os.environ.get("DDIM_TRACEBACK"):
            raise
        print(f"ddim {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
