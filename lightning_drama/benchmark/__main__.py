"""`python -m lightning_drama.benchmark run ...` and `... report ...` (see the modules)."""

from __future__ import annotations

import argparse
import sys

from lightning_drama.benchmark.report import add_report_arguments, main_report
from lightning_drama.benchmark.run import add_run_arguments, main_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_drama.benchmark",
        description="Benchmarks of Drama: games x seeds on Ray, and their aggregate report.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="train every (game, seed) as one fit, on Ray; rerun to resume",
        description="Train every (game, seed) as one `fit` of the CLI, on Ray. Options other "
        "than these (--data.*, --model.*, --trainer.*) are passed to every run.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run_arguments(run)
    report = commands.add_parser(
        "report",
        help="tables, rliable aggregates and plots of one or more benchmark directories",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_report_arguments(report)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return main_run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return main_report(args)


if __name__ == "__main__":
    sys.exit(main())
