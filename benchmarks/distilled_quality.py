"""Distilled students against their teacher: quality at 1, 2, 4 and 8 steps, beside the teacher's DDIM and its
best few-step solver at the same number of calls, and the teacher's DDIM-50.

Each row samples `--n` images (labels in blocks of n/10, sample i's x_T from its own seed, the same x_T in every
row) and reports the digits classifier's Frechet distance to the real digits (not FID; lower is better) and the
judgement of an SVM fitted on the digits' pixels (`digits_quality.py`): the confident share, its ratio to the
held-out real digits' share, and the share on the requested label. A student carries the teacher's guidance in
its weights, so its calls evaluate B rows; the guided teacher's calls evaluate 2B rows.

Also draws `--figure`: one row per configuration, the digits 0..9 from the same ten x_T.

    python benchmarks/distilled_quality.py --students runs/cond-distilled/steps-000{8,4,2,1}/model.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddim import DDIMSampler
from ddim.evaluation import classifier_metric
from ddim.generate import EMBEDDED, load_model, recorded_sampling
from ddim.images import save_image_grid
from digits_quality import fit_svm, judge, noise, sample_batched

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "distilled.png"


def draw(loaded, x_T: torch.Tensor, y: torch.Tensor, steps: int, skip, solver: str, guidance: float,
         batch: int = 250) -> torch.Tensor:
    sampler = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction)
    return sample_batched(sampler, x_T, y, batch, steps=steps, skip=skip, solver=solver, guidance=guidance)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="digits-cond", help="the teacher the students were distilled from")
    p.add_argument("--students", nargs="+", default=None,
                   help="student checkpoints (default: the embedded digits-cond-distilled)")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.9, help="the SVM probability that counts as confident")
    p.add_argument("--figure", default=str(FIGURE), help="the picture (a row per configuration); '' for none")
    args = p.parse_args()
    torch.set_num_threads(1)
    students = {}
    for path in args.students or [str(EMBEDDED.get("digits-cond-distilled", "digits-cond-distilled"))]:
        loaded = load_model(path)
        rec = recorded_sampling(loaded)
        if rec is None:
            raise SystemExit(f"--students: {path} is not a distilled student")
        students[rec["steps"]] = loaded, rec, loaded.metadata["distilled"]
    guidance = {float(meta.get("guidance", 1.0)) for _, _, meta in students.values()}
    if len(guidance) != 1:
        raise SystemExit(f"--students: distilled at different guidance weights {sorted(guidance)}")
    w = guidance.pop()
    teacher = load_model(args.teacher)
    metric = classifier_metric()
    svm, real, _ = fit_svm()
    real_share, _ = judge(svm, real, args.threshold)
    x_T, y = noise(args.n, args.seed), torch.arange(args.n) * 10 // args.n
    fx_T, fy = noise(10, args.seed + 1), torch.arange(10)

    rows = [("teacher", "ddim", 50, "uniform", 2)]     # (model, solver, calls, skip, rows per call)
    for k in sorted(students, reverse=True):
        rows += [(f"student {k}", "ddim", k, students[k][1]["skip"], 1), ("teacher", "ddim", k, "trailing", 2),
                 ("teacher", "unipc", k, "trailing", 2)]
    print(f"teacher {args.teacher}, guidance {w:g}; {args.n} samples per row; SVM confident share of the held-out "
          f"real digits {real_share:.3f}\n")
    print("| model | solver | calls | rows per image | classifier FD | SVM confident share | / real share | "
          "on the requested label |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    pictures = []
    for name, solver, calls, skip, per_call in rows:
        if name == "teacher" and solver == "unipc" and calls < 2:
            continue                                  # a one-step UniPC is DDIM's step
        model = teacher if name == "teacher" else students[calls][0]
        g = w if name == "teacher" else 1.0
        x = draw(model, x_T, y, calls, skip, solver, g)
        share, pred = judge(svm, x.flatten(1).numpy(), args.threshold)
        print(f"| {name} | {solver} {skip if isinstance(skip, str) else 'its own grid'} | {calls} | "
              f"{calls * per_call} | {metric.distance(x):.2f} | {share:.3f} | {share / real_share:.3f} | "
              f"{float((pred == y.numpy()).mean()):.3f} |", flush=True)
        if name != "teacher" or solver == "ddim" and calls == 50:
            pictures.append(draw(model, fx_T, fy, calls, skip, solver, g))
    if args.figure:
        save_image_grid(torch.cat(pictures), args.figure, nrow=10, scale="auto")
        print(f"\nwrote {args.figure}: rows teacher DDIM-50, then the students at "
              f"{', '.join(str(k) for k in sorted(students, reverse=True))} steps; columns the digits 0..9")


if __name__ == "__main__":
    main()
