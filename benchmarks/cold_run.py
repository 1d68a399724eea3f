"""Cold run of the shipped default grid (config.yaml): the target is under 10 minutes on 2 cores.

.venv/bin/python benchmarks/cold_run.py [--no-fork-server]

--no-fork-server runs every job as a fresh process (resources.fork_server: false), to measure what
the fork server saves.
"""

import argparse

import pandas as pd
from common import cleanup, default_config, run_grid

TARGET_SECONDS = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-fork-server", action="store_true", help="every job a fresh process")
    args = parser.parse_args()
    config = default_config()
    if args.no_fork_server:
        config["resources"] = {**config.get("resources", {}), "fork_server": False}
    seconds, workdir = run_grid(config)
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    columns = ["backbone", "weights", "strategy", "head", "val_acc", "test_top1", "wall_seconds"]
    print(summary[columns].to_string(index=False))
    variant = " without the fork server" if args.no_fork_server else ""
    print(
        f"cold default grid{variant}: {seconds:.0f} s for {len(summary)} cells "
        f"({seconds / TARGET_SECONDS:.0%} of the {TARGET_SECONDS} s target)"
    )
    cleanup(workdir)


if __name__ == "__main__":
    main()
