"""The inversion table (`ddim eval inversion`): Table 2's round trip for every way the sampler inverts.

Each cell encodes the first n real images with S steps of one method and decodes the latent with S steps of
the same method, and reports the per-dimension MSE with pixels in [0, 1], the network calls per image
(encode + decode, as the sampler counted them: `DDIMSampler.last_nfe`) and the seconds per image. The cells
are method x guidance x dtype x S:

- method: a deterministic solver's name (eq. 13 run with its formulas: ddim, plms, dpm++2m, ...; the exact
  ones, bdia and edict, invert algebraically), optionally "+refineK" (`ddim.sampling.refine`: each encoding
  step redone K times at the estimated next point, K extra calls per step), e.g. "ddim+refine2".
- guidance: "1" (unguided: the conditional output alone on a class-conditional model), a CFG weight w ("3"),
  or "cfg++:L" (CFG++ with lambda L). Encoding and decoding both use it, conditioned on the images' own labels.
  A guided call evaluates the network on a batch of 2B and counts as one call.
- dtype: float32, or float64 (the network and the latents in float64: the roundoff floor of the exact methods).

Refinement evaluates one eps per point, CFG++ two, so "+refineK" x "cfg++:L" cells do not exist (left out).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddim.checkpoint import LoadedModel
from ddim.config import DTYPES, SampleConfig, check_int, check_steps
from ddim.errors import DDIMError
from ddim.evaluation.plots import figure, log_axes, save_figure
from ddim.evaluation.runner import Table, run_table
from ddim.evaluation.samples import reconstruction_mse
from ddim.generate import decode, encode, image_shape, make_sampler, resolve_batch_size, weights_fingerprint
from ddim.images import digits_images, load_images
from ddim.sampling import SOLVERS, make_solver

__all__ = ["inversion_table", "invertible_solvers", "parse_method", "parse_guidance", "INVERSION_STEPS",
           "INVERSION_METHODS", "INVERSION_FIELDS"]

INVERSION_STEPS: tuple[int, ...] = (10, 20, 50, 100)
INVERSION_FIELDS = ("method", "guidance", "dtype", "steps", "n", "mse", "calls", "encode_calls", "decode_calls",
                    "seconds")
REFINE = "+refine"


def invertible_solvers() -> list[str]:
    """The solvers the sampler can invert: the deterministic ones (the stochastic ones draw noise)."""
    return [name for name in SOLVERS if make_solver(name).deterministic]


INVERSION_METHODS: tuple[str, ...] = ("ddim", "ddim+refine1", "ddim+refine2",
                                      *(s for s in invertible_solvers() if s != "ddim"))


def parse_method(spec: str) -> tuple[str, int]:
    """(solver, refine) of a method spec: "SOLVER" or "SOLVER+refineK" (K >= 1; not for bdia and edict)."""
    name, plus, k = spec.partition(REFINE)
    solvers = invertible_solvers()
    if name not in solvers or (plus and not (k.isdigit() and int(k) >= 1)):
        raise DDIMError(f"methods: {spec!r} is not an invertible solver ({', '.join(solvers)}) or SOLVER+refineK "
                        "with K >= 1 (e.g. ddim+refine2)")
    refine = int(k) if plus else 0
    if refine and getattr(make_solver(name), "exact_inverse", False):
        raise DDIMError(f"methods: {spec!r}: {name} inverts exactly; refinement is for the other solvers")
    return name, refine


def parse_guidance(spec: str | float) -> tuple[str, float]:
    """(guidance_mode, weight) of a guidance spec: a CFG weight w ("1", "3") or "cfg++:L" (CFG++, L in [0, 1])."""
    text = str(spec)
    mode, colon, value = text.rpartition(":") if text.startswith("cfg++") else ("cfg", "", text)
    try:
        w = float(value)
    except ValueError:
        w = float("nan")
    if mode not in ("cfg", "cfg++") or not w == w or (mode == "cfg++" and not 0 <= w <= 1):
        raise DDIMError(f"guidance: {text!r} is not a CFG weight (1, 3, ...) or cfg++:L with L in [0, 1]")
    return mode, w


def _guidance_label(spec: str | float) -> str:
    mode, w = parse_guidance(spec)
    return f"{w:g}" if mode == "cfg" else f"cfg++:{w:g}"


class InversionTable(Table):
    name, fields, key_fields = "inversion", INVERSION_FIELDS, ("method", "guidance", "dtype", "steps")
    types = dict(steps=int, n=int, mse=float, calls=int, encode_calls=int, decode_calls=int, seconds=float)

    def __init__(self, loaded: LoadedModel, config: SampleConfig, steps: Sequence[int], methods: Sequence[str],
                 guidance: Sequence[str | float], dtypes: Sequence[str], images: str | Tensor, labels: Tensor | None,
                 n: int, device: str | torch.device) -> None:
        self.steps = check_steps(steps, loaded.schedule.T)
        if not methods or not guidance or not dtypes:
            raise DDIMError("methods, guidance and dtypes: give at least one of each")
        self.methods = {m: parse_method(m) for m in dict.fromkeys(methods)}
        self.guidance = {_guidance_label(g): parse_guidance(g) for g in guidance}
        for d in dtypes:
            if d not in DTYPES:
                raise DDIMError(f"dtypes: {d!r} is not one of {', '.join(DTYPES)}")
        self.dtypes = list(dict.fromkeys(dtypes))
        n = check_int(n, "n")
        C, H = image_shape(loaded)[:2]
        self.x0 = load_images(images, C, H, n=n, what="images")
        if labels is None and isinstance(images, str) and images == "digits":
            labels = digits_images(H)[1]                      # the digits' true labels
        self.labels = None if labels is None else torch.as_tensor(labels)[:len(self.x0)]
        if self.labels is not None and len(self.labels) != len(self.x0):
            raise DDIMError(f"labels: {len(self.labels)} labels for {len(self.x0)} images")
        self.conditional = bool(getattr(loaded.config, "num_classes", 0))
        for g, (mode, w) in self.guidance.items():
            if (mode, w) != ("cfg", 1.0) and (not self.conditional or self.labels is None):
                raise DDIMError(f"guidance: {g!r} needs a class-conditional model and the images' labels "
                                "(images 'digits' carry theirs; else pass labels=)")
        self.config = config.replace(batch_size=resolve_batch_size(config, loaded, device, len(self.x0)))
        self.loaded, self.images, self.device = loaded, images, device

    def cells(self) -> list[tuple]:
        return [(m, g, d, S) for g, (mode, _) in self.guidance.items() for d in self.dtypes
                for m, (_, refine) in self.methods.items() for S in self.steps if not (refine and mode == "cfg++")]

    def _config(self, cell: tuple) -> SampleConfig:
        method, g, dtype, S = cell
        mode, w = self.guidance[g]
        return self.config.replace(solver=self.methods[method][0], steps=S, dtype=dtype, guidance=w,
                                   guidance_mode=mode)

    def check(self) -> None:
        self.samplers = {d: make_sampler(self.loaded, self.config.replace(dtype=d), self.device) for d in self.dtypes}
        y = None if self.labels is None or not self.conditional else self.labels[:1]
        for cell in self.cells():
            walk = self._config(cell).walk.deterministic()
            sampler = self.samplers[cell[2]]
            sampler.prepare(walk, y=y, invert=True, refine=self.methods[cell[0]][1])
            sampler.prepare(walk, y=y)

    def prepare(self) -> None:
        self.x = self.x0.to(self.device)
        self.y = None if self.labels is None or not self.conditional else self.labels.to(self.device)

    def settings(self) -> dict[str, Any]:
        return {"model": weights_fingerprint(self.loaded.model),
                "images": self.images if isinstance(self.images, str) else f"{len(self.images)} given images",
                "n": len(self.x0), "skip": self.config.manifest()["skip"],
                "labels": None if self.labels is None else self.labels.tolist()}

    def compute(self, cell: tuple) -> dict[str, Any]:
        method, g, dtype, S = cell
        cfg, sampler = self._config(cell), self.samplers[dtype]
        t0 = time.perf_counter()
        with torch.no_grad():
            z = encode(sampler, self.x, cfg, y=self.y, refine=self.methods[method][1])
            enc = sampler.last_nfe          # one batch's walk: the calls each image took
            rec = decode(sampler, z, cfg, y=self.y)
            dec = sampler.last_nfe
        seconds = (time.perf_counter() - t0) / len(self.x)
        return dict(method=method, guidance=g, dtype=dtype, steps=S, n=len(self.x), mse=reconstruction_mse(self.x, rec),
                    calls=enc + dec, encode_calls=enc, decode_calls=dec, seconds=seconds)

    def describe(self, row: dict[str, Any]) -> str:
        return (f"inversion: {row['method']:>14} w={row['guidance']:<9} {row['dtype']:<8} S={row['steps']:<4d} "
                f"MSE {row['mse']:.3g} calls {row['calls']} ({row['seconds']:.3f} s/image)")

    def markdown(self, rows: list[dict[str, Any]]) -> str:
        return inversion_markdown(rows, str(self.config.skip))

    def plot(self, rows: list[dict[str, Any]], path: Path) -> None:
        plot_inversion(rows, path)


def inversion_markdown(rows: list[dict], skip: str = "uniform") -> str:
    """Rows of the inversion table as markdown: a table per (guidance, dtype), a row per method, the MSE at each
    S, then the calls and seconds per image at each S."""
    steps = sorted({r["steps"] for r in rows})
    n = rows[0]["n"] if rows else 0
    lines = [f"Reconstruction through inversion: {n} images encoded and decoded with S steps of each method "
             f"({skip} tau); per-dimension MSE with pixels in [0, 1]; calls: network calls per image, encode + "
             "decode (a guided call on a batch of 2B counts as one); s/image: seconds per image, encode + decode.",
             ""]
    for g, d in dict.fromkeys((r["guidance"], r["dtype"]) for r in rows):
        mine = {(r["method"], r["steps"]): r for r in rows if (r["guidance"], r["dtype"]) == (g, d)}
        lines += [f"guidance {g}, {d}:", "",
                  "| method | " + " | ".join(f"S = {S}" for S in steps) + " | calls | s/image |",
                  "|---|" + "---:|" * (len(steps) + 2)]
        for m in dict.fromkeys(k[0] for k in mine):
            got = [mine.get((m, S)) for S in steps]
            lines.append(f"| {m} | " + " | ".join(f"{r['mse']:.2g}" if r else "-" for r in got) + " | "
                         + " / ".join(str(r["calls"]) if r else "-" for r in got) + " | "
                         + " / ".join(f"{r['seconds']:.3g}" if r else "-" for r in got) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_inversion(rows: list[dict], path: Path) -> None:
    """MSE vs network calls per image (log-log), a panel per (guidance, dtype), a line per method (S along it)."""
    panels = list(dict.fromkeys((r["guidance"], r["dtype"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = figure((4.6 * ncols, 3.9 * nrows), ncols=ncols, nrows=nrows)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (g, d) in zip(axes, panels):
        for i, m in enumerate(methods):
            pts = sorted((r["calls"], max(r["mse"], 1e-35)) for r in rows
                         if (r["guidance"], r["dtype"], r["method"]) == (g, d, m))
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{i % 10}", linestyle="-" if i < 10 else "--", label=m)
        log_axes(ax, [r["calls"] for r in rows if (r["guidance"], r["dtype"]) == (g, d)], True)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax.set_xlabel("network calls per image (encode + decode)", fontsize=8)
        ax.set_title(f"guidance {g}, {d}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[::ncols]:
        ax.set_ylabel("per-dimension MSE (pixels in [0, 1])")
    axes[ncols - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save_figure(fig, path)


def inversion_table(loaded: LoadedModel, config: SampleConfig = SampleConfig(batch_size=64), *,
                    steps: Sequence[int] = INVERSION_STEPS, methods: Sequence[str] = INVERSION_METHODS,
                    guidance: Sequence[str | float] = ("1",), dtypes: Sequence[str] = ("float32", "float64"),
                    images: str | Tensor = "digits", labels: Tensor | None = None, n: int = 64,
                    device: str | torch.device = "cpu", out: str | os.PathLike | None = None,
                    overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Reconstruction error through inversion for each (method, guidance, dtype, S) cell (`ddim eval
    inversion`; the module docstring has the cells). images: a tensor [N, C, H, W] in [-1, 1] or an image spec
    (`ddim.images.load_images`); labels [N]: their classes, the condition of a class-conditional model (the
    digits' own by default for images "digits"); `config` gives the skip and batch size. Returns rows
    dict(method, guidance, dtype, steps, n, mse, calls, encode_calls, decode_calls, seconds) with calls and
    seconds per image; with `out`, writes inversion.md, inversion.csv, inversion.png (MSE vs calls, a line per
    method) and inversion.json. A rerun with the same settings reuses the finished cells."""
    table = InversionTable(loaded, config, steps, methods, guidance, dtypes, images, labels, n, device)
    return run_table(table, out, overwrite, progress)
