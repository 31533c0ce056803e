"""``napari-treg batch INPUT -o OUTPUT``: the restore options, run over many units on a dask cluster.

Exit status: 0 when every unit is done, 1 when some failed (listed by name), 2 for bad
input, 3 when the given scheduler cannot be reached (nothing ran), 130 when interrupted
(Ctrl-C or SIGTERM; the output is resumable: rerun the same command).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
from pathlib import Path

from napari_treg.cli.options import (
    PROG,
    add_method_arguments,
    add_operator_arguments,
    add_setting,
    operator_from_args,
    restore_kwargs,
    setting_type,
)
from napari_treg.settings import check_integer, check_number, specs

#: exit status when the given scheduler cannot be reached: nothing ran
EXIT_UNREACHABLE = 3


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``restore`` (operator, text, run, method) plus the cluster's."""
    parser.add_argument(
        "input", metavar="IN", help="a folder or glob of image files, or a zarr / OME-Zarr stack (one unit per plane)"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="a folder for image files, a .zarr path for a stack; rerun to resume",
    )
    add_operator_arguments(parser)
    add_method_arguments(parser)
    add_samples_argument(parser)
    parser.add_argument(
        "--info", metavar="FILE.json", help="also write the run's report (units done, failed, time) as JSON"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status line")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--workers",
        type=setting_type("workers", int, lambda value: check_integer(value, "workers", minimum=1)),
        default=None,
        help="workers of the local cluster (default: one per GPU, else one per CPU core)",
    )
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="use the running dask scheduler at ADDRESS (tcp://host:8786) instead (not with --workers)",
    )
    from napari_treg.batch.cluster import CONNECT_TIMEOUT

    cluster.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        type=setting_type("connect-timeout", float, lambda value: check_number(value, "connect-timeout", 0.1, 600)),
        default=CONNECT_TIMEOUT,
        help="seconds to wait for --scheduler to answer; if it does not, exit status 3 (default: %(default)s)",
    )


def add_samples_argument(parser: argparse.ArgumentParser) -> None:
    """--samples N: an ensemble per unit, its mean the unit's output and its maps beside it (as restore's)."""
    from napari_treg.engine.ensemble import EnsembleSettings

    group = parser.add_argument_group(
        "uncertainty: with --samples N, each unit's output is the mean of N restorations and its std, "
        "data_share (and with a prompt text_influence) maps are written beside it (docs/scale-out.md)"
    )
    for spec in specs(EnsembleSettings):
        if spec.name in ("samples", "holdout"):
            add_setting(group, dataclasses.replace(spec, default=None), given_only=True)


def run_batch(args: argparse.Namespace, cancel: threading.Event | None = None) -> int:
    """Restore every unit of INPUT into OUTPUT; 0 if all are done, 1 if any failed, 130 when interrupted
    (Ctrl-C, SIGTERM, or ``cancel`` set: the units done so far stay and a rerun resumes)."""
    from napari_treg.batch import restore_many
    from napari_treg.batch.cluster import ClusterUnreachable
    from napari_treg.errors import Cancelled

    check_output_arguments(args)
    operator = operator_from_args(args)
    bar = UnitBar(enabled=not args.quiet)
    try:
        report = restore_many(
            args.input,
            args.output,
            operator,
            workers=args.workers,
            scheduler=args.scheduler,
            connect_timeout=args.connect_timeout,
            samples=getattr(args, "samples", None),
            holdout=getattr(args, "holdout", None),
            on_start=bar.start,
            on_unit=bar.update,
            cancel=cancel,
            **restore_kwargs(args),
        )
    except ClusterUnreachable as error:
        bar.close()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (KeyboardInterrupt, Cancelled):
        bar.close()
        kept = (
            f"{args.output} keeps the units done so far: rerun the same command to resume"
            if Path(args.output).exists()
            else "nothing was written"
        )
        print(f"{PROG}: interrupted; {kept}", file=sys.stderr)
        return 130
    bar.close()
    if args.info:
        Path(args.info).write_text(json.dumps(report_summary(report), indent=2, default=str) + "\n")
    return finish_message(args, report)


def check_output_arguments(args: argparse.Namespace) -> None:
    """``-o`` and ``--info`` checked before any work: where they go, a file can be created (InvalidInputError)."""
    from napari_treg.errors import InvalidInputError
    from napari_treg.io import outputs

    if args.workers is not None and args.scheduler is not None:
        raise InvalidInputError("--workers sets the size of the local cluster: leave it out with --scheduler")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"-o {args.output!r} exists and is not a folder or zarr store: choose another")
    outputs.probe_folder(output if output.is_dir() else output.parent, "-o")
    if args.info is not None:
        outputs.check_outputs([outputs.Output("--info", Path(args.info))], [args.input])
        if outputs.same_file(os.path.abspath(args.info), os.path.abspath(args.output)):
            raise InvalidInputError(f"--info {args.info!r} is the output -o: give it its own path")


def finish_message(args: argparse.Namespace, report) -> int:
    if report.failed:
        print(
            f"{PROG}: error: {len(report.failed)} of {report.units} units failed (details in {report.log}):",
            file=sys.stderr,
        )
        for name, error in report.failed.items():
            print(f"{PROG}:   {name}: {error}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(
            f"{PROG}: wrote {args.output}: {report.computed} units restored, {report.skipped} already done, "
            f"in {report.seconds:.1f} s"
            + (f"; {report.text_conflicts} flagged for a text conflict" if report.text_conflicts else ""),
            file=sys.stderr,
        )
        for name, line in report.holdout_verdicts.items():
            print(f"{PROG}: {name}: {line}", file=sys.stderr)
        if report.too_few_steps is not None:
            print(f"{PROG}: warning: {report.too_few_steps['note']}", file=sys.stderr)
    return 0


def report_summary(report) -> dict:
    return {
        "output": report.output,
        "units": report.units,
        "computed": report.computed,
        "skipped": report.skipped,
        "failed": report.failed,
        "seconds": report.seconds,
        "text_conflicts": report.text_conflicts,
        "workers": report.workers,
        "intensity_range": report.intensity_range,
        "log": report.log,
    }


class UnitBar:
    """A tqdm bar over units (with ETA) on stderr; the dashboard link is printed first."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None

    def start(self, report) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        print(
            f"{PROG}: {report.units} units on {report.workers} workers; dashboard: {report.dashboard}", file=sys.stderr
        )
        self._bar = tqdm(
            total=report.units, initial=report.skipped, desc="batch", unit="unit", file=sys.stderr, dynamic_ncols=True
        )

    def update(self, report, name: str, error: str | None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if error:
                self._bar.write(f"{PROG}: {name} failed: {error}", file=sys.stderr)
            if report.done + len(report.failed) >= report.units:
                self.close()  # before the cluster shuts down

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
