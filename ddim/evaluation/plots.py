"""What the tables' plots share: a matplotlib figure without pyplot (imported here only, when a plot is
drawn: tables are computed and written without matplotlib), log axes with plain labels, and atomic PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddim.errors import MissingDependencyError
from ddim.io import atomic_path

__all__ = ["figure", "log_axes", "save_figure"]


def figure(figsize: tuple[float, float] = (5.5, 3.8), ncols: int | None = None, nrows: int = 1) -> tuple[Any, Any]:
    """(figure, axes) on the Agg canvas: no pyplot, so no global backend and no display. ncols: a grid of
    nrows x ncols panels, the axes then a flat list (row by row)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError("the plots need matplotlib: pip install 'ddim[eval]'") from e
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    if ncols is None:
        return fig, fig.subplots()
    return fig, [ax for row in fig.subplots(nrows, ncols, squeeze=False) for ax in row]


def log_axes(ax: Any, steps: Sequence[int], log_y: bool) -> None:
    """Log x with the S values as plain tick labels; log y (when asked) with plain-number labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(steps)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if log_y:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 1000 else f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if ax.get_ylim()[1] / ax.get_ylim()[0] < 30 else NullFormatter())


def save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
