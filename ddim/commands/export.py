"""`ddim export`: a checkpoint as a complete diffusers DDIMPipeline folder (model_index.json, unet/, scheduler/)."""

from __future__ import annotations

import argparse

from ddim.checkpoint import CLASS_CONDITIONAL_HINT, export_pipeline
from ddim.commands.common import Formatter, add_model_args, load
from ddim.runs import claim_folder, remove_owned

EPILOG = """examples:
  ddim export --out digits-pipeline                       (the embedded model)
  ddim export --ckpt runs/digits/model.safetensors --out my-pipeline
then, in Python: diffusers.DDIMPipeline.from_pretrained("my-pipeline")(num_inference_steps=50, eta=0.0)
(a class-conditional model: its unet with class_labels, as the README shows)"""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("export", help="write a checkpoint as a diffusers DDIMPipeline folder",
                       formatter_class=Formatter, epilog=EPILOG)
    add_model_args(s, fast=False)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (only its own "
                   "files; other files in the folder are kept)")
    s.set_defaults(fn=run)


# The files an export writes (model_index.json last: it marks a finished export). Only these are ever removed.
OWNED = ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
         "scheduler/scheduler_config.json")


def run(args: argparse.Namespace) -> None:
    out = claim_folder(args.out, OWNED, "model_index.json", args.overwrite, "diffusers export")
    loaded = load(args)
    remove_owned(out, OWNED)
    export_pipeline(loaded, out)
    print(f"wrote a diffusers DDIMPipeline folder to {out} (model_index.json, unet/, scheduler/)")
    if loaded.config.num_classes:
        print(f"note: {CLASS_CONDITIONAL_HINT}")
