"""Solvers by name: what `solver="..."` and `--solver` accept."""

from __future__ import annotations

from collections.abc import Callable

from ddim.errors import DDIMError
from ddim.sampling.multistep import PLMS, DPMSolverPP
from ddim.sampling.solvers import DDIM, SigmaHat, Solver
from ddim.sampling.unipc import UniPC

__all__ = ["SOLVERS", "VARIANCES", "make_solver"]

VARIANCES: tuple[str, ...] = ("eta", "large")


def _ddim(eta: float, variance: str) -> Solver:
    ddim = DDIM(eta)                     # validates eta, which variance="large" then ignores
    return SigmaHat() if variance == "large" else ddim


def _deterministic(name: str, make: Callable[[], Solver]) -> Callable[[float, str], Solver]:
    """A factory for a solver of the probability-flow ODE, which has no eta or variance to set."""
    def factory(eta: float, variance: str) -> Solver:
        if eta != 0:
            raise DDIMError(f"eta={eta!r}: solver {name!r} is deterministic (eta = 0); eta is an option of 'ddim'")
        if variance != "eta":
            raise DDIMError(f"variance={variance!r}: solver {name!r} has no variance option; it belongs to 'ddim'")
        return make()
    return factory


# name -> factory(eta, variance). eta and variance are options of the "ddim" family. docs/SOLVERS.md.
SOLVERS: dict[str, Callable[[float, str], Solver]] = {
    "ddim": _ddim,
    "plms": _deterministic("plms", PLMS),
    "dpm++2m": _deterministic("dpm++2m", lambda: DPMSolverPP(2)),
    "dpm++3m": _deterministic("dpm++3m", lambda: DPMSolverPP(3)),
    "dpm++3m-shipped": _deterministic("dpm++3m-shipped", lambda: DPMSolverPP(3, shipped=True)),
    "unipc": _deterministic("unipc", UniPC),
}


def make_solver(solver: str | Solver = "ddim", eta: float = 0.0, variance: str = "eta") -> Solver:
    """A Solver from its name (with the ddim family's eta and variance), or a Solver instance as given."""
    if variance not in VARIANCES:
        raise DDIMError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise DDIMError(f"solver must be one of {tuple(SOLVERS)} or a Solver instance, got {solver!r}")
        return SOLVERS[solver](eta, variance)
    if isinstance(solver, type):
        raise DDIMError(f"solver must be a Solver instance, got the class {solver.__name__}; pass "
                        f"{solver.__name__}(...)")
    if not (callable(getattr(solver, "fresh", None)) and callable(getattr(solver, "step", None))):
        raise DDIMError(f"solver must be one of {tuple(SOLVERS)} or a Solver instance (with fresh and step), "
                        f"got {solver!r}")
    if eta != 0 or variance != "eta":
        raise DDIMError("eta and variance configure the named 'ddim' solver; set them on the Solver instance "
                        f"instead (got eta={eta!r}, variance={variance!r} with {solver!r})")
    return solver
