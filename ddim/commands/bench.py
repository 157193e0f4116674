"""`ddim bench`: images/s against diffusers' DDIMPipeline on the same weights, one fresh process per cell."""

from __future__ import annotations

import argparse

import torch

from ddim import bench
from ddim.benchmarking import check_section_file, machine, write_section
from ddim.commands.common import Formatter, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("bench", help="sampling throughput against diffusers on the same weights",
                       formatter_class=Formatter, description=bench.__doc__.split("\n\n", 1)[1],
                       epilog="example: ddim bench --batches 1 8 64 --steps 50 --repeats 2 --write")
    s.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8, 64], help="batch sizes")
    s.add_argument("--steps", type=positive_int, default=50, help="sampling steps S")
    s.add_argument("--paths", nargs="+", default=list(bench.PATHS), choices=bench.PATHS, help="which paths to run")
    s.add_argument("--repeats", type=positive_int, default=1,
                   help="runs per cell, in alternating order; the table reports the median")
    # cpu by default, unlike the sampling commands: the CPU cells are the measured ones, the CUDA branch is new
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N] (GPU cells synchronize around the timed "
                   "regions and report max_memory_allocated)")
    s.add_argument("--threads", type=positive_int, default=torch.get_num_threads(), help="CPU threads per cell")
    s.add_argument("--write", nargs="?", const="BENCHMARKS.md", default=None, metavar="FILE",
                   help="update this markdown file's bench_sampling section (default file: BENCHMARKS.md)")
    s.set_defaults(fn=run)


def run(args: argparse.Namespace) -> None:
    if args.write:              # a file that cannot take the section is refused before the benchmark runs
        check_section_file(args.write)
    results, peaks, flops = bench.run_bench(args.batches, args.steps, args.paths, args.repeats, args.threads,
                                            args.device)
    text = bench.markdown(results, peaks, flops, machine(args.device), args.steps)
    print(text)
    if args.write:
        write_section(args.write, "bench_sampling", text)
        print(f"wrote the bench_sampling section of {args.write}")
