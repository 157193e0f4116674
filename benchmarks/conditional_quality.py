"""The class-conditional embedded model against the unconditional one: how clean and how on-label are samples.

For each (model, solver, steps, guidance): `--n` samples (an equal number per class for the conditional model,
labels in blocks), from the same per-sample x_T; the digits classifier's confident share (max softmax > 0.9:
the rest are blobs, squares and noise patches), the share whose predicted class is the requested label, and the
classifier Frechet distance to the 1797 real digits (not FID). Prints a markdown table and writes a grid per row.

    python benchmarks/conditional_quality.py --cond runs/digits_cond/model.safetensors --n 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddim.config import SampleConfig
from ddim.generate import class_labels, image_shape, initial_noise, load_model, make_sampler, sample_batch, \
    sample_generators
from ddim.images import save_image_grid
from ddim.metrics.classifier import evaluate_digits, load_digits_classifier

ROWS = [  # (model, solver, steps, guidance)
    ("digits", "ddim", 50, None), ("digits", "dpm++2m", 20, None),
    ("cond", "ddim", 50, 1.0), ("cond", "dpm++2m", 20, 1.0), ("cond", "dpm++2m", 20, 2.0),
    ("cond", "dpm++2m", 20, 3.0), ("cond", "ddim", 50, 2.0), ("cond", "unipc", 10, 2.0),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cond", default="digits-cond", help="the class-conditional checkpoint")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures", default="docs/figures", help="where the grids go")
    args = p.parse_args()
    models = {"digits": load_model("digits"), "cond": load_model(args.cond)}
    clf = load_digits_classifier()
    lines = ["| model | solver | steps | guidance | confident share | on the requested label | classifier FD |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, solver, steps, w in ROWS:
        loaded = models[name]
        cfg = SampleConfig(steps=steps, solver=solver, skip="trailing" if solver != "ddim" else "uniform",
                           guidance=w or 1.0, seed=args.seed, batch_size=250)
        sampler = make_sampler(loaded, cfg)
        y = class_labels("all", args.n, loaded.config.num_classes) if loaded.config.num_classes else None
        out = []
        with torch.no_grad():
            for b in range(0, args.n, 250):
                idx = range(b, min(b + 250, args.n))
                gens = sample_generators(args.seed, idx)
                x_T = initial_noise(image_shape(loaded), gens)
                out.append(sample_batch(sampler, x_T, cfg, gens, None if y is None else y[b:b + 250]).clamp(-1, 1))
        x = torch.cat(out)
        r = evaluate_digits(x, clf)
        with torch.no_grad():
            probs = torch.softmax(clf(x), dim=1)
        on_label = float((probs.argmax(1) == y).float().mean()) if y is not None else float("nan")
        lines.append(f"| {name} | {solver} | {steps} | {w if w is not None else '-'} | {r['confident_share']:.3f} | "
                     f"{'-' if y is None else f'{on_label:.3f}'} | {r['frechet_distance_classifier']:.2f} |")
        print(lines[-1], flush=True)
        if y is not None:   # 8 per class, one row per class
            per = args.n // 10
            pick = torch.cat([torch.arange(c * per, c * per + 8) for c in range(10)])
            save_image_grid(x[pick], Path(args.figures) / f"cond_{solver}_{steps}_w{w:g}.png", nrow=8, scale="auto")
        else:
            save_image_grid(x[:80], Path(args.figures) / f"uncond_{solver}_{steps}.png", nrow=8, scale="auto")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
