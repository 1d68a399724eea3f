"""Cold run of the shipped default grid (config.yaml): the target is under 10 minutes on 2 cores.

.venv/bin/python benchmarks/cold_run.py
"""

import pandas as pd
from common import cleanup, default_config, run_grid

TARGET_SECONDS = 600


def main() -> None:
    seconds, workdir = run_grid(default_config())
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    columns = ["backbone", "weights", "strategy", "head", "val_acc", "test_top1", "wall_seconds"]
    print(summary[columns].to_string(index=False))
    print(
        f"cold default grid: {seconds:.0f} s for {len(summary)} cells "
        f"({seconds / TARGET_SECONDS:.0%} of the {TARGET_SECONDS} s target)"
    )
    cleanup(workdir)


if __name__ == "__main__":
    main()
