"""Short jobs: the 4-cell grid of tests/test_slurm.py run locally and cold, with the fork server and
without it (every compute job a fresh process, as in a run whose jobs may use a GPU). The grid's
jobs take a second or two of work each, so what else a job costs shows.

    .venv/bin/python benchmarks/small_grid.py [--repeats 2]

Figures only, no assertions; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import copy
import sys

from common import ROOT, cleanup, run_grid

sys.path.insert(0, str(ROOT / "tests"))
from test_slurm import CONFIG  # the grid that the SLURM test also runs locally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternating")
    args = parser.parse_args()
    for _ in range(args.repeats):
        for fork_server in (True, False):
            config = copy.deepcopy(CONFIG)
            config["resources"] = {**config["resources"], "fork_server": fork_server}
            seconds, workdir = run_grid(config, cores="2")
            cleanup(workdir)
            variant = "with the fork server" if fork_server else "every compute job a fresh process"
            print(f"4-cell grid, {variant}: {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
