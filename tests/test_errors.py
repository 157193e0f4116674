"""The error contract (docs/ARCHITECTURE.md, "Errors"): every failure a user can cause is a `DDIMError` with one
line naming the input. The library's raise sites are read from the source, so a bare ValueError or TypeError
cannot come back; and the case the contract was written for runs end to end."""

import ast
import builtins
import json
from pathlib import Path

import pytest

from ddim.commands import main
from shared_fixtures import FIXTURES, needs_fixtures

PACKAGE = Path(__file__).resolve().parents[1] / "ddim"
BUILTIN_EXCEPTIONS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}

# (module file, exception) -> why raising that built-in is right there. Nothing a user types reaches these.
ALLOWED = {
    ("sampling/solvers.py", "NotImplementedError"): "Solver.step of the abstract base: a subclass must override it",
    ("checkpoint/diffusers_layout.py", "AssertionError"): "unreachable: every U-Net key has a diffusers name",
    ("config.py", "TypeError"): "a dataclass field of a type the config checker does not know: a developer's bug",
    ("train.py", "KeyboardInterrupt"): "the second Ctrl-C stops training at once, as Python's own does",
    ("train.py", "SystemExit"): "the second SIGTERM exits with 128 + the signal, as an unhandled one would",
}


def _raised_builtins(root: Path = PACKAGE) -> list[tuple[str, int, str]]:
    """(module file, line, name) of every `raise` of a built-in exception class under root (ddim/)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Raise) or node.exc is None:      # a bare `raise` re-raises: fine
                continue
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BUILTIN_EXCEPTIONS:
                found.append((path.relative_to(root).as_posix(), node.lineno, exc.id))
    return found


def test_the_library_raises_no_bare_builtin_exception():
    bad = [f"ddim/{f}:{line}: raise {name}" for f, line, name in _raised_builtins() if (f, name) not in ALLOWED]
    assert not bad, ("user-caused failures must raise DDIMError or a subclass (ddim/errors.py) with one line "
                     "naming the input:\n" + "\n".join(bad))


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scanner itself: a bare ValueError is found; a DDIMError, a re-raise and a `from` chain are not."""
    (tmp_path / "m.py").write_text("from ddim.errors import DDIMError\n"
                                   "def f(x):\n    if x:\n        raise ValueError('x')\n"
                                   "    try:\n        pass\n    except OSError as e:\n        raise\n"
                                   "    raise DDIMError('y') from None\n")
    assert _raised_builtins(tmp_path) == [("m.py", 4, "ValueError")]


@needs_fixtures
@pytest.mark.parametrize("config", ["bogus", "{d}/list.json", "{d}/broken.yml"])
def test_a_bogus_config_for_an_official_checkpoint_is_one_line_and_exit_2(tmp_path, capsys, config):
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    (tmp_path / "broken.yml").write_text("model: [unclosed\n")
    out = tmp_path / "out"
    code = main(["sample", "--ckpt", str(FIXTURES / "official_small_model.ckpt"), "--config",
                 config.format(d=tmp_path), "--n", "1", "--steps", "2", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--config" in err[0] and "Traceback" not in err[0], err
    assert not out.exists()
