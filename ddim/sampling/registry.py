"""Solvers by name: what `solver="..."` and `--solver` accept."""

from __future__ import annotations

from collections.abc import Callable

from ddim.errors import DDIMError
from ddim.sampling.solvers import DDIM, SigmaHat, Solver

__all__ = ["SOLVERS", "VARIANCES", "make_solver"]

VARIANCES: tuple[str, ...] = ("eta", "large")


def _ddim(eta: float, variance: str) -> Solver:
    return SigmaHat() if variance == "large" else DDIM(eta)


# name -> factory(eta, variance). eta and variance are options of the "ddim" family.
SOLVERS: dict[str, Callable[[float, str], Solver]] = {"ddim": _ddim}


def make_solver(solver: str | Solver = "ddim", eta: float = 0.0, variance: str = "eta") -> Solver:
    """A Solver from its name (with the ddim family's eta and variance), or a Solver instance as given."""
    if variance not in VARIANCES:
        raise DDIMError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise DDIMError(f"solver must be one of {tuple(SOLVERS)} or a Solver instance, got {solver!r}")
        return SOLVERS[solver](eta, variance)
    if not (callable(getattr(solver, "fresh", None)) and callable(getattr(solver, "step", None))):
        raise DDIMError(f"solver must be one of {tuple(SOLVERS)} or a Solver instance (with fresh and step), "
                        f"got {solver!r}")
    if eta != 0 or variance != "eta":
        raise DDIMError("eta and variance configure the named 'ddim' solver; set them on the Solver instance "
                        f"instead (got eta={eta!r}, variance={variance!r} with {solver!r})")
    return solver
