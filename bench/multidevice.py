"""Multi-device benchmark: 2 one-thread CPU workers vs 1 one-thread worker (and vs one two-thread
process) on the full-size random SD1.5 at 256x256, 4 steps. Writes bench/results/multidevice.json.

    OMP_NUM_THREADS=1 python bench/multidevice.py [diffmesh bench flags...]

Figures (2026-11-28, 2-core VM, 24 GiB, torch 2.13.0+cpu, fp32, euler, cfg 7, 4 steps, 256x256;
load average 0.5-2 from other work during the run; ratios within one run):
  queue, 4 prompts from 2 clients    1 worker 102.0 s, 2 workers 52.4 s      1.95x (efficiency 0.97)
  batch parallel, batch 2 sampling   1 worker  33.0 s, 2 workers 19.1 s      1.73x
  CFG parallel, time per step        1 worker  4.66 s, 2 workers 2.72 s      1.72x
  CFG parallel, whole image          1 worker  25.3 s, 2 workers 17.9 s      1.41x (VAE decode, 6.5 s,
                                                                             is one image on one worker)
  queue: 2 one-thread workers vs one two-thread process: 52.4 s vs 58.7 s     1.12x
With other helpers' tests running (load average 2.5-4.6) the same run gave 0.7-1.1x: two
one-thread workers need both cores to themselves.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from diffmesh.benchmarks.cli import add_arguments, run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
