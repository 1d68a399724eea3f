"""The ``transfergrid`` command, run from the project directory: ``transfergrid predict ...``.

Each subcommand is one ``_add_<name>(commands)`` function in ``SUBCOMMANDS`` that adds its parser
and sets ``handler``: a function of the parsed arguments that returns the exit code and imports
what it needs itself (``transfergrid --help`` loads no torch). A ``TransferGridError`` (bad user
input) ends the command with ``transfergrid: <message>`` on standard error and exit code 1, no
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import TransferGridError, one_line


def _predict(args: argparse.Namespace) -> int:
    from .predict import run_predict

    # The CSV may go to standard output; the summary line then goes to standard error.
    stream = sys.stderr if args.out is None else sys.stdout
    run_predict(args.dataset, args.images, cell=args.cell, out=args.out, log=lambda line: print(line, file=stream))
    return 0


def _add_predict(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="run a trained cell on new image files",
        description=(
            "Run a trained cell on image files, with exactly the preprocessing it was trained with, and "
            "write one CSV row per image: path, predicted class, its probability, and p_<class> for every "
            "class. Without --cell, the dataset's cell with the best validation accuracy in "
            "results/summary.csv is used."
        ),
    )
    parser.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGES_OR_FOLDERS",
        help="image files, and folders searched recursively for image files",
    )
    parser.add_argument(
        "--dataset", help="the dataset the cell was trained on (a key of `datasets`); optional with --cell"
    )
    parser.add_argument(
        "--cell",
        type=Path,
        help="a cell directory (results/cells/...; its candidate chosen on validation) or one candidate "
        "directory (.../lr1.0); default: the dataset's validation-best cell",
    )
    parser.add_argument("--out", type=Path, help="the CSV file to write (default: standard output)")
    parser.set_defaults(handler=_predict)


def _recommend(args: argparse.Namespace) -> int:
    import yaml

    from .config import apply_schema, load_schema
    from .docs import SCHEMA
    from .quadrant import recommend

    # config.yaml's boundaries, the schema's defaults where it has none
    config_file = Path("config.yaml")
    configured = (yaml.safe_load(config_file.read_text()) if config_file.is_file() else None) or {}
    quadrant = (configured.get("report") or {}).get("quadrant") or {}
    thresholds = apply_schema({"report": {"quadrant": dict(quadrant)}}, load_schema(SCHEMA))["report"]["quadrant"]
    for key in thresholds:
        if getattr(args, key) is not None:
            thresholds[key] = getattr(args, key)
    for line in recommend(Path("."), args.dataset, thresholds):
        print(line)
    return 0


def _add_recommend(commands) -> None:
    parser = commands.add_parser(
        "recommend",
        help="the data-size x similarity map's advice for a dataset, before any fine-tuning",
        description=(
            "Place a dataset on the data-size x similarity map from its training-split size and the "
            "similarity measured from frozen features (results/similarity/), and print the strategy the "
            "map advises, per pretrained weight source and training fraction. Boundaries: config.yaml's "
            "report.quadrant, or the options."
        ),
    )
    parser.add_argument("--dataset", required=True, help="a key of `datasets`")
    parser.add_argument("--size-threshold", dest="size_threshold", type=float, help="images per class: large from")
    parser.add_argument(
        "--similarity-threshold", dest="similarity_threshold", type=float, help="separability: similar from"
    )
    parser.set_defaults(handler=_recommend)


# One entry per subcommand, in the order `transfergrid --help` lists them.
SUBCOMMANDS: list[Callable] = [_add_predict, _add_recommend]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transfergrid", description="Use the results of a transfergrid project; run from its directory."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script: parse ``argv`` (default: the command line), run, return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        return args.handler(args)
    except TransferGridError as error:
        print(f"transfergrid: {one_line(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `transfergrid predict ... | head`: the reader has gone, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
