"""The `ddim` command line: one module per command family, on top of the library (which never imports it).

Every failure a user can cause reaches `main` as a `ddim.errors.DDIMError` (or an OSError from the system)
and is printed as one line naming the input, with exit code 2; DDIM_TRACEBACK=1 shows the traceback.
Ctrl-C exits with 130 and keeps what was written (a rerun resumes).
"""

from __future__ import annotations

import argparse
import os
import sys

from ddim.commands import bench, distill, edit, encode, eval, export, fid, figures, sample, train
from ddim.commands.common import Formatter, Parser
from ddim.errors import DDIMError

__all__ = ["build_parser", "main"]

FAMILIES = (sample, encode, figures, edit, fid, eval, bench, train, distill, export)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ddim", description="Denoising Diffusion Implicit Models: train, sample, "
                                "encode, interpolate and evaluate.", formatter_class=Formatter,
                                epilog="`ddim <command> --help` documents each command with a worked example.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args.fn(args)
    except (DDIMError, OSError) as e:
        if os.environ.get("DDIM_TRACEBACK"):
            raise
        msg = str(e) if isinstance(e, DDIMError) or not e.filename else f"{e.filename}: {e.strerror or e}"
        print(f"\nddim {args.command}: error: {msg}", file=sys.stderr)   # on a fresh line, below any progress bar
        return 2
    except KeyboardInterrupt:
        if os.environ.get("DDIM_TRACEBACK"):
            raise
        print(f"\nddim {args.command}: interrupted; what was written is kept (rerun the command to resume)",
              file=sys.stderr)
        return 130
    return 0
