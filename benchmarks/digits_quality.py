"""How clean and how on-label the embedded digits models' samples are, judged by a classifier that is not ours.

The judge is a support-vector machine (scikit-learn's SVC, RBF kernel, Platt-scaled probabilities) fitted on
the pixels of 80% of scikit-learn's digits, preprocessed exactly as the models' training data (16x16, [-1, 1]).
The other 20% are the reference: the SVM's confident share on them (max probability >= --threshold) is what a
perfect generator would reach. For each model and sampler the script reports

- the confident share of the samples, and its ratio to the held-out real digits' share (goal: >= 0.95);
- for the class-conditional model, the share classified as the requested label (goal: >= 97% at guidance 1,
  >= 99% at guidance 2 and 3);
- the digits classifier's Frechet distance to the real digits (not FID; lower is better), which also falls
  when a sampler loses variety, so a higher confident share bought with fewer kinds of digit shows here.

The unconditional model is judged alone and autoguided by its weak guide (`--guide`, default the model's
recorded one: digits-weak at its recorded w, `ddim sample`'s default); on the unconditional rows "guidance"
is the autoguidance weight.

    python benchmarks/digits_quality.py                       # the embedded models
    python benchmarks/digits_quality.py --uncond runs/digits/model.safetensors --cond runs/digits_cond/model.safetensors
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ddim import DDIMSampler
from ddim.evaluation import classifier_metric
from ddim.generate import load_guide, load_model, recorded_guidance
from ddim.metrics.classifier import digits_split

AUTO = "recorded"        # an unconditional row's guidance: the model's recorded autoguidance weight
ROWS = [  # (model, solver, steps, skip, guidance)
    ("uncond", "ddim", 50, "uniform", None), ("uncond", "dpm++2m", 20, "trailing", None),
    ("uncond", "ddim", 50, "uniform", AUTO), ("uncond", "dpm++2m", 20, "trailing", AUTO),
    ("cond", "ddim", 50, "uniform", 1.0), ("cond", "dpm++2m", 20, "trailing", 1.0),
    ("cond", "dpm++2m", 20, "trailing", 2.0), ("cond", "dpm++2m", 20, "trailing", 3.0),
]


def fit_svm(seed: int = 0):
    """The judge: an RBF SVM on the training split's pixels; returns (svm, held-out pixels, held-out labels)."""
    from sklearn.svm import SVC
    x_tr, y_tr, x_te, y_te = digits_split(seed=seed)
    svm = SVC(probability=True, random_state=seed).fit(x_tr.flatten(1).numpy(), y_tr.numpy())
    return svm, x_te.flatten(1).numpy(), y_te.numpy()


def judge(svm, pixels: np.ndarray, threshold: float) -> tuple[float, np.ndarray]:
    """(confident share, predicted labels) of images given as [N, 256] pixels in [-1, 1]."""
    probs = svm.predict_proba(pixels)
    return float((probs.max(1) >= threshold).mean()), svm.classes_[probs.argmax(1)]


def noise(n: int, seed: int) -> torch.Tensor:
    """x_T [n, 1, 16, 16]: sample i's noise from its own seed, so it depends only on (seed, i)."""
    return torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                        for i in range(n)])


def sample_batched(sampler: DDIMSampler, x_T: torch.Tensor, y: torch.Tensor | None = None, batch: int = 250,
                   **options) -> torch.Tensor:
    """x_0 of x_T [N, ...] (and labels y [N], sliced with it), `batch` samples a call, clamped to [-1, 1]."""
    with torch.no_grad():
        return torch.cat([sampler.sample(x_T[i:i + batch], y=None if y is None else y[i:i + batch],
                                         **options).clamp(-1, 1) for i in range(0, len(x_T), batch)])


def draw(ckpt: str, solver: str, steps: int, skip: str, guidance: float | None, n: int, seed: int,
         guide: str | None = None) -> tuple:
    """n samples from per-sample seeds (sample i's noise depends only on seed and i); a class-conditional model's
    labels in blocks of n/10; with `guide` (a checkpoint), autoguided with weight `guidance` and no labels."""
    loaded = load_model(ckpt)
    weak = None if guide is None else load_guide(guide, loaded).model
    sampler = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction, guide=weak)
    x_T = noise(n, seed)
    y = torch.arange(n) * 10 // n if guidance is not None and guide is None else None
    opts = {"guidance": guidance} if guidance is not None else {}
    return sample_batched(sampler, x_T, y, steps=steps, solver=solver, skip=skip, **opts), y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uncond", default="digits", help="the unconditional checkpoint (default: the embedded one)")
    p.add_argument("--cond", default="digits-cond", help="the class-conditional checkpoint")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.9, help="the SVM probability that counts as confident")
    p.add_argument("--guide", default=None, help="the unconditional model's autoguidance guide (default: its "
                   "recorded one)")
    p.add_argument("--autoguidance", type=float, default=None, help="its weight w (default: the recorded one)")
    args = p.parse_args()
    torch.manual_seed(0)
    rec = recorded_guidance(load_model(args.uncond)) or {}
    guide = args.guide or rec.get("guide")
    w_auto = args.autoguidance if args.autoguidance is not None else rec.get("guidance")
    metric = classifier_metric()
    svm, real, real_y = fit_svm()
    real_share, real_pred = judge(svm, real, args.threshold)
    print(f"held-out real digits: {len(real)}, SVM accuracy {float((real_pred == real_y).mean()):.3f}, "
          f"confident share {real_share:.3f}\n")
    print("| model | solver | steps | skip | guidance | confident share | / real share | on the requested label | "
          "classifier FD |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name, solver, steps, skip, w in ROWS:
        row_guide = None
        if w == AUTO:
            if guide is None or w_auto is None:
                continue                              # no guide recorded or given: the model alone only
            w, row_guide, name = w_auto, guide, f"uncond, guide {guide}"
        x, y = draw(args.uncond if name.startswith("uncond") else args.cond, solver, steps, skip, w, args.n,
                    args.seed, row_guide)
        share, pred = judge(svm, x.flatten(1).numpy(), args.threshold)
        on_label = f"{float((pred == y.numpy()).mean()):.3f}" if y is not None else "-"
        print(f"| {name} | {solver} | {steps} | {skip} | {w if w is not None else '-'} | {share:.3f} | "
              f"{share / real_share:.3f} | {on_label} | {metric.distance(x):.2f} |", flush=True)


if __name__ == "__main__":
    main()
