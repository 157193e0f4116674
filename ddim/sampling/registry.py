"""Solvers by name: what `solver="..."` and `--solver` accept."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ddim.errors import DDIMError
from ddim.sampling.exact import BDIA, EDICT
from ddim.sampling.multistep import PLMS, DPMSolverPP
from ddim.sampling.solvers import DDIM, SigmaHat, Solver
from ddim.sampling.stochastic import Churn, DPMSolverPPSDE, Restart
from ddim.sampling.unipc import UniPC

__all__ = ["SOLVERS", "VARIANCES", "SOLVER_OPTIONS", "make_solver", "check_solver_options", "grid_order"]

VARIANCES: tuple[str, ...] = ("eta", "large")


def _ddim(eta: float, variance: str, **options: Any) -> Solver:
    ddim = DDIM(eta)                     # validates eta, which variance="large" then ignores
    return SigmaHat() if variance == "large" else ddim


def _deterministic(name: str, make: Callable[[], Solver], kind: str = "is deterministic (eta = 0)"
                   ) -> Callable[..., Solver]:
    """A factory for a solver with no eta or variance to set (an ODE solver, or a stochastic one whose noise
    is its own method's)."""
    def factory(eta: float, variance: str, **options: Any) -> Solver:
        if eta != 0:
            raise DDIMError(f"eta={eta!r}: solver {name!r} {kind}; eta is an option of 'ddim'")
        if variance != "eta":
            raise DDIMError(f"variance={variance!r}: solver {name!r} has no variance option; it belongs to 'ddim'")
        return make(**options)
    return factory


_OWN = "draws its own method's noise (no eta)"

# name -> factory(eta, variance). eta and variance are options of the "ddim" family. docs/SOLVERS.md.
SOLVERS: dict[str, Callable[..., Solver]] = {
    "ddim": _ddim,
    "plms": _deterministic("plms", PLMS),
    "dpm++2m": _deterministic("dpm++2m", lambda: DPMSolverPP(2)),
    "dpm++3m": _deterministic("dpm++3m", lambda: DPMSolverPP(3)),
    "dpm++3m-shipped": _deterministic("dpm++3m-shipped", lambda: DPMSolverPP(3, shipped=True)),
    "unipc": _deterministic("unipc", UniPC),
    "bdia": _deterministic("bdia", BDIA),          # gamma = 1; BDIA(gamma) for another
    "edict": _deterministic("edict", EDICT),       # p = 0.93, leapfrog; EDICT(p) for another
    # iPNDM (Zhang & Chen 2023; diff-sampler) is PLMS with the Euler warm-up, its order never lowered at the end.
    "ipndm": _deterministic("ipndm", lambda: PLMS(4, "euler", lower_order_final=False)),
    "dpm++2m-sde": _deterministic("dpm++2m-sde", DPMSolverPPSDE, _OWN),
    "churn": _deterministic("churn", Churn, _OWN),
    "restart": _deterministic("restart", Restart, _OWN),
}


# The settings of the named stochastic solvers (their constructors' keywords): solver_options= in the Python API,
# --restart / --restart-k / --restart-inner and --s-churn / --s-tmin / --s-tmax / --s-noise on the command line.
SOLVER_OPTIONS: dict[str, tuple[str, ...]] = {
    "churn": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "restart": ("restart", "k", "inner"),
}


def check_solver_options(solver: str | Solver, options: Mapping[str, Any] | None
                         ) -> tuple[tuple[str, Any], ...] | None:
    """solver_options: None, or a mapping of settings of the named solver (`SOLVER_OPTIONS`), as its constructor
    takes them; returned as sorted (name, value) pairs (hashable; lists become tuples), None when empty. The
    values are checked by the solver (`make_solver`)."""
    if options is None:
        return None
    if isinstance(options, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in options):
        options = dict(options)                      # the normalised form, as a WalkOptions copy carries it
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise DDIMError(f"solver_options must be a dict of a named solver's settings, got {options!r}")
    if not options:
        return None
    takes = SOLVER_OPTIONS.get(solver) if isinstance(solver, str) else None
    if takes is None:
        which = "; ".join(f"{name!r} takes {', '.join(keys)}" for name, keys in SOLVER_OPTIONS.items())
        raise DDIMError(f"solver_options={dict(options)!r}: solver {solver!r} has no settings by name ({which}; "
                        "a Solver instance carries its own)")
    unknown = [k for k in options if k not in takes]
    if unknown:
        raise DDIMError(f"solver_options: {unknown[0]!r} is not a setting of solver {solver!r}; it takes "
                        f"{', '.join(takes)}")
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


def make_solver(solver: str | Solver = "ddim", eta: float = 0.0, variance: str = "eta",
                solver_options: Mapping[str, Any] | tuple[tuple[str, Any], ...] | None = None) -> Solver:
    """A Solver from its name (with the ddim family's eta and variance, and a stochastic solver's settings,
    `SOLVER_OPTIONS`), or a Solver instance as given."""
    if variance not in VARIANCES:
        raise DDIMError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if isinstance(solver, str) and solver not in SOLVERS:
        raise DDIMError(f"solver must be one of {tuple(SOLVERS)} or a Solver instance, got {solver!r}")
    options = check_solver_options(solver, solver_options)
    if isinstance(solver, str):
        return SOLVERS[solver](eta, variance, **dict(options or ()))
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


def grid_order(solver: object) -> int:
    """The order the model-free optimized grid (skip="optimized") is fitted for: a solver's `grid_order` if it
    has one, else its `order` (at most 3), else 1 (the DDIM step)."""
    order = getattr(solver, "grid_order", getattr(solver, "order", 1))
    return min(order, 3) if isinstance(order, int) and not isinstance(order, bool) and order >= 1 else 1
