"""`ddim fid` and `ddim fid-stats`: FID / KID with the standard FID Inception network (weights file from you)."""

from __future__ import annotations

import argparse
import json

import torch

from ddim.commands.common import Formatter, device, positive_int
from ddim.errors import DDIMError
from ddim.metrics import fid
from ddim.runs import prepare_output

WEIGHTS_HELP = ("pt_inception-2015-12-05-6726825d.pth (else $DDIM_INCEPTION_WEIGHTS, else the torch hub cache)")


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--inception-weights", default=None, help=WEIGHTS_HELP)
    s.add_argument("--batch-size", type=positive_int, default=50, help="images per Inception call")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    s.add_argument("--no-download", action="store_true", help="never fetch the weights into the torch hub cache")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("fid", help="FID and KID between images and a reference (images or statistics)",
                       formatter_class=Formatter,
                       epilog="example: ddim fid samples/samples.npz cifar10-train-stats.npz "
                              "--inception-weights pt_inception-2015-12-05-6726825d.pth")
    s.add_argument("images", help="generated images: a folder or an .npz")
    s.add_argument("reference", help="reference images (folder, .npz) or statistics (.npz with mu, sigma)")
    _common(s)
    s.set_defaults(fn=run_fid)

    s = sub.add_parser("fid-stats", help="write Inception statistics (.npz with mu, sigma: pytorch-fid layout)",
                       formatter_class=Formatter, epilog="example: ddim fid-stats cifar10_train.npz --out stats.npz")
    s.add_argument("images", help="images: a folder or an .npz")
    s.add_argument("--out", required=True, help="output .npz")
    s.add_argument("--overwrite", action="store_true", help="replace --out")
    _common(s)
    s.set_defaults(fn=run_fid_stats)


def run_fid(args: argparse.Namespace) -> None:
    images = fid.load_images_uint8(args.images)           # read (and checked) before the network is loaded
    result = fid.compute_fid(images, args.reference, weights=args.inception_weights, batch_size=args.batch_size,
                             device=device(args), progress=not args.quiet, download=not args.no_download)
    print(json.dumps(result, indent=1))


def run_fid_stats(args: argparse.Namespace) -> None:
    out = prepare_output(args.out, args.overwrite)
    images = fid.load_images_uint8(args.images)
    if out.suffix != ".npz":                        # refused before any Inception feature is computed
        raise DDIMError(f"--out {str(out)!r}: statistics files end in .npz")
    feats = fid.inception_features(images, weights=args.inception_weights, batch_size=args.batch_size,
                                   device=device(args), progress=not args.quiet, download=not args.no_download)
    mu, sigma = fid.feature_statistics(feats)
    fid.save_statistics(out, mu, sigma)
    print(f"wrote {out} (mu [{mu.shape[0]}], sigma [{sigma.shape[0]}, {sigma.shape[1]}]) from {len(images)} images")
