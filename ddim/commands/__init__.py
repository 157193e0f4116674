"""The `ddim` command line: one module per command family, on top of the library (which never imports it).

Every failure a user can cause reaches `main` as a `ddim.errors.DDIMError` (or an OSError from the system)
and is printed as one line naming the input, with exit code 2; DDIM_TRACEBACK=1 shows the traceback.
Ctrl-C exits with 130 and keeps what was written; the message says how to resume only for the commands that
can (sample, eval, train: their `resume_hint`).
"""

from __future__ import annotations

import argparse
import os
import sys

from ddim.commands import bench, distill, edit, encode, eval, export, fid, figures, sample, schedule, train
from ddim.commands.common import Formatter, Parser
from ddim import __version__
from ddim.errors import DDIMError
from ddim.runs import check_output_path

__all__ = ["build_parser", "main"]

FAMILIES = (sample, encode, figures, edit, fid, eval, bench, train, distill, export, schedule)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ddim", description="Denoising Diffusion Implicit Models: train, sample, "
                                "encode, interpolate and evaluate.", formatter_class=Formatter,
                                epilog="`ddim <command> --help` documents each command with a worked example.")
    p.add_argument("--version", action="version", version=f"ddim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        for dest in ("out", "out_dir"):          # the one output-path check (train's --out is out_dir)
            if getattr(args, dest, None) is not None:
                check_output_path(getattr(args, dest))
        code = args.fn(args)        # None, or an exit code of its own (`train` stopped by a signal: 130 / 143)
    except (DDIMError, OSError) as e:
        if os.environ.get("DDIM_TRACEBACK"):
            raise
        msg = str(e) if isinstance(e, DDIMError) or not e.filename else f"{e.filename}: {e.strerror or e}"
        msg = " ".join(msg.split()) or type(e).__name__                         # one line, whatever the text
        print(f"\nddim {args.command}: error: {msg}", file=sys.stderr)   # on a fresh line, below any progress bar
        return 2
    except KeyboardInterrupt:
        if os.environ.get("DDIM_TRACEBACK"):
            raise
        hint = getattr(args, "resume_hint", None)
        print(f"\nddim {args.command}: interrupted; " + (f"what was written is kept ({hint})" if hint else
              "this command does not resume: rerun it from the start"), file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0
