"""`ddim export`: a checkpoint as a complete diffusers DDIMPipeline folder (model_index.json, unet/, scheduler/)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ddim.checkpoint import CLASS_CONDITIONAL_HINT, export_pipeline
from ddim.commands.common import Formatter, add_model_args, load
from ddim.errors import OutputExistsError
from ddim.runs import check_writable

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
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"--out {str(out)!r} exists; pass --overwrite to replace it")
    check_writable(out.parent if out.parent != Path("") else Path("."))
    loaded = load(args)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    export_pipeline(loaded, out)
    print(f"wrote a diffusers DDIMPipeline folder to {out} (model_index.json, unet/, scheduler/)")
    if loaded.config.num_classes:
        print(f"note: {CLASS_CONDITIONAL_HINT}")
