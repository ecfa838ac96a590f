"""Multi-device benchmark: 2 one-thread CPU workers vs 1 one-thread worker (and vs one two-thread
process) on the full-size random SD1.5 at 256x256, 4 steps. Writes bench/results/multidevice.json.

    OMP_NUM_THREADS=1 python bench/multidevice.py [diffmesh bench flags...]
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
