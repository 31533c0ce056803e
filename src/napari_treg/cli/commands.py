"""The ``napari-treg`` command line: ``degrade``, ``restore`` and ``demo``.

Each subcommand is one entry in :data:`SUBCOMMANDS`: a function that adds its
arguments and a function that runs it and returns the exit status. Errors end
as one line on stderr, ``napari-treg: error: <message>``, never a traceback:

- exit 2: bad usage or bad input (unknown option, missing file, invalid value);
- exit 1: any other failure (missing model weights, divergence, I/O, memory,
  a missing dependency);
- exit 130: interrupted (Ctrl-C, or SIGTERM from ``kill``, ``timeout`` or a batch system's
  time limit, which is handled the same way); no partial output file is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from napari_treg.cli.options import (
    PROG,
    UsageError,
    add_io_arguments,
    add_method_arguments,
    add_operator_arguments,
    add_rgb_argument,
    add_setting,
    operator_from_args,
    restore_kwargs,
    restore_settings,
    setting_type,
)
from napari_treg.engine.maps import ENSEMBLE_MAPS, ensemble_maps
from napari_treg.errors import TRegError
from napari_treg.failures import EXIT_INTERRUPTED, describe_failure
from napari_treg.io import files as io
from napari_treg.settings import check_integer, check_number, specs

if TYPE_CHECKING:  # torch is imported inside main(), where Ctrl-C during the import is caught
    from napari_treg.engine.restorer import Progress, Restoration
    from napari_treg.engine.run_info import NoiseModelInfo, RunInfo
    from napari_treg.solver.conflict import TextConflict


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _say(args: argparse.Namespace, message: Callable[[], str]) -> None:
    """A status line on stderr, unless --quiet (``message`` is only built when shown)."""
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {message()}", file=sys.stderr)


def _describe(path: str) -> str:
    """Shape and dtype of the file as written (PNG/JPEG hold integers, not the float result)."""
    written = io.read_image(path)
    return f"{'x'.join(map(str, written.shape))} {written.dtype}"


# --------------------------------------------------------------------------- degrade


def add_degrade_arguments(parser: argparse.ArgumentParser) -> None:
    from napari_treg.api import DEGRADE_DEFAULTS
    from napari_treg.engine.restorer import MAX_SEED

    add_io_arguments(parser, "clean image")
    add_operator_arguments(parser)
    group = parser.add_argument_group("noise")
    group.add_argument(
        "--noise",
        type=setting_type("noise", float, lambda v: check_number(v, "noise", minimum=0.0)),
        default=DEGRADE_DEFAULTS["noise"],
        help="Gaussian noise sigma; the image's 0.1-99.9 percentile range "
        "counts as 2, so 0.01 is 0.5%% of it (default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        type=setting_type("seed", int, lambda v: check_integer(v, "seed", 0, MAX_SEED)),
        default=DEGRADE_DEFAULTS["seed"],
        help="noise seed (default: %(default)s)",
    )
    add_photon_noise_arguments(group)
    add_rgb_argument(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no status line")


def add_photon_noise_arguments(group: Any) -> None:
    """--noise-model, --gain, --read-sd and --offset of ``degrade`` (the run options' specs)."""
    from napari_treg.engine.restorer import PHOTON_PARAMETERS, RunSettings

    for spec in specs(RunSettings):
        if spec.name in ("noise_model", *PHOTON_PARAMETERS):
            add_setting(group, spec)


def photon_noise_from_args(args: argparse.Namespace) -> Any:
    """The PoissonGaussian of ``degrade --noise-model poisson-gaussian --gain G --read-sd R [--offset O]``, or None."""
    from napari_treg.engine.restorer import RunSettings

    options = RunSettings(noise_model=args.noise_model, gain=args.gain, read_sd=args.read_sd, offset=args.offset)
    model = options.photon_noise()
    if options.noise_model == "poisson-gaussian" and model is None:
        raise UsageError(
            "degrade --noise-model poisson-gaussian needs --gain and --read-sd (a simulation has nothing to "
            "estimate them from)"
        )
    return model


def run_degrade(args: argparse.Namespace) -> int:
    """Simulate a measurement: apply the operator to IN and add noise."""
    from napari_treg.api import degrade
    from napari_treg.io import outputs

    image = io.read_image(args.input)
    operator = operator_from_args(args)
    shape = outputs.result_shape(image, args.rgb, operator.measurement_hw)
    outputs.check_outputs([outputs.Output("-o", Path(args.output), shape)], [args.input, args.mask, args.kernel])
    model = photon_noise_from_args(args)
    result = degrade(image, operator, noise=args.noise, seed=args.seed, rgb=args.rgb, noise_model=model)
    outputs.write_together({args.output: lambda path: io.write_image(path, result, like=image)}, cancel=_interrupted)
    _say(args, lambda: f"wrote {args.output} ({_describe(args.output)}) with {operator!r}")
    return 0


# --------------------------------------------------------------------------- restore


class ProgressBar:
    """A tqdm bar on stderr fed by :class:`~napari_treg.engine.restorer.Progress` events."""

    def __init__(self, enabled: bool = True, desc: str = "restore"):
        self.enabled = enabled
        self.desc = desc
        self._bar: Any = None
        self._phase: str | None = None

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        if self._bar is not None and event.phase != self._phase:  # a new phase: a bar of its own
            self._bar.close()
            self._bar = None
        if self._bar is None:
            from tqdm import tqdm

            first = self._phase is None  # the sampler's steps; a later phase (an ensemble's data share) is named
            self._phase = event.phase
            self._bar = tqdm(
                total=event.total,
                desc=self.desc if first else f"{self.desc}: {event.phase}",
                unit="step" if first else "solve",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )
        if event.planes > 1 or event.tiles > 1:
            self._bar.set_postfix_str(self._where(event), refresh=False)
        self._bar.update(max(0, event.step - self._bar.n))

    @staticmethod
    def _where(event: Progress) -> str:
        parts = [f"plane {event.plane}/{event.planes}"] if event.planes > 1 else []
        return ", ".join(parts + ([f"tile {event.tile}/{event.tiles}"] if event.tiles > 1 else []))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._phase = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    add_io_arguments(parser, "degraded measurement")
    add_operator_arguments(parser)
    add_method_arguments(parser)
    add_ensemble_arguments(parser)
    parser.add_argument(
        "--info", metavar="FILE.json", help="also write the run's parameters, residual and versions as JSON"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status line")


def _write_info(path: str | Path, info: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(info, indent=2, default=str) + "\n")


def recorded_noise_defaults(args: argparse.Namespace) -> Any:
    """The camera gain and offset the input file records (OME metadata), with ``--noise-model poisson-gaussian``
    (the defaults of --gain and --offset: :func:`napari_treg.io.files.read_noise_defaults`), else None."""
    if getattr(args, "noise_model", None) != "poisson-gaussian":
        return None
    return io.read_noise_defaults(args.input)


def _noise_model_note(noise_model: NoiseModelInfo | None) -> str:
    """The result line's note of a noise model taken from the file's metadata ("" otherwise)."""
    if noise_model is None or "OME metadata" not in noise_model.source:
        return ""
    source = noise_model.source
    model = ", ".join(f"{name} {value:.4g}" for name, value in noise_model.input_units.as_dict().items())
    doubt = source[source.index("DOUBTFUL") :] if "DOUBTFUL" in source else ""
    return f"; noise model {model} ({source.split(';')[0]})" + (f"; {doubt}" if doubt else "")


def _restore_summary(output: str, run_info: RunInfo) -> str:
    summary = f"wrote {output} ({_describe(output)}) in {run_info.seconds:.1f} s"
    summary += f"; relative residual {run_info.residual:.3g}"
    if run_info.residual_over_noise is not None:
        summary += f" ({run_info.residual_over_noise:.2g} x the noise level)"
    return summary + _noise_model_note(run_info.noise_model) + _conflict_note(run_info.text_conflict)


def _conflict_note(conflict: TextConflict | None) -> str:
    """The result line's text-conflict note: the flag, or why the check was not made ("" otherwise)."""
    from napari_treg.solver.conflict import unchecked_message

    if conflict is None:
        return ""
    if conflict.flag:
        return f"; TEXT CONFLICT: the prompt contradicts the measurement ({conflict.deficit_nats:.0f} nats)"
    unchecked = unchecked_message(conflict)
    return "" if unchecked is None else "; " + unchecked[0].lower() + unchecked[1:].rstrip(".")


def run_restore(args: argparse.Namespace) -> int:
    """Restore IN with TReg and write the result to OUT."""
    from napari_treg.api import restore
    from napari_treg.io import outputs

    if "samples" in args:
        return run_ensemble(args)
    if args.keep_samples or any(name in args for name in ("prior_sd", "holdout", "plane_exchange")):
        raise UsageError("--keep-samples, --prior-sd, --[no-]plane-exchange, --holdout need --samples N (an ensemble)")
    image = io.read_image(args.input)
    operator = operator_from_args(args)
    planned = [outputs.Output("-o", Path(args.output), outputs.result_shape(image, args.rgb, operator.image_hw))]
    if args.info is not None:
        planned.append(outputs.Output("--info", Path(args.info)))
    outputs.check_outputs(planned, [args.input, args.mask, args.kernel])
    with ProgressBar(enabled=not args.quiet) as bar:
        restoration = cast(
            "Restoration",
            restore(
                image,
                operator,
                **restore_kwargs(args),
                noise_defaults=recorded_noise_defaults(args),
                progress=bar,
                cancel=_interrupted,
                return_info=True,
            ),
        )
    writers: dict[str | os.PathLike, Callable[[Path], object]] = {
        args.output: lambda path: io.write_image(path, restoration.image, like=image)
    }
    if args.info is not None:
        writers[args.info] = lambda path: _write_info(path, restoration.info)
    outputs.write_together(writers, cancel=_interrupted)
    _say(args, lambda: _restore_summary(args.output, restoration.run_info))
    return 0


# --------------------------------------------------------------------------- restore --samples


def add_ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    """--samples (an ensemble instead of one restoration), --prior-sd and --keep-samples."""
    from napari_treg.engine.ensemble import EnsembleSettings

    group = parser.add_argument_group(
        "uncertainty: with --samples N, OUT is the mean of N restorations and the maps "
        f"{', '.join(m.name for m in ENSEMBLE_MAPS)} are written next to it as <stem>.<map><suffix> "
        "(docs/uncertainty.md)"
    )
    for spec in specs(EnsembleSettings):
        if spec.name != "keep_samples":  # no --samples: one restoration, so no default is shown
            add_setting(group, dataclasses.replace(spec, default=None), given_only=True)
    group.add_argument(
        "--keep-samples", action="store_true", help="with --samples: also write the samples as <stem>.samples<suffix>"
    )


def run_ensemble(args: argparse.Namespace) -> int:
    """``restore --samples N``: the mean to OUT, the maps (and with --keep-samples the samples) next to it."""
    from napari_treg.api import ensemble
    from napari_treg.io import outputs

    image = io.read_image(args.input)
    operator = operator_from_args(args)
    shape = outputs.result_shape(image, args.rgb, operator.image_hw)
    uses_text = restore_settings(args).uses_text  # checks the settings before any work
    maps = ensemble_maps(uses_text, "holdout" in args)
    names = tuple(m.name for m in maps)
    planned = [outputs.Output("-o", Path(args.output), shape)]
    for kind in maps:
        option = "--holdout" if kind.needs_holdout else f"--samples ({kind.name})"
        planned.append(outputs.Output(option, io.companion(args.output, kind.name), shape))
    if args.keep_samples:
        planned.append(outputs.Output("--keep-samples", io.companion(args.output, "samples"), (args.samples, *shape)))
    if args.info is not None:
        planned.append(outputs.Output("--info", Path(args.info)))
    outputs.check_outputs(planned, [args.input, args.mask, args.kernel])
    options = {
        name: getattr(args, name) for name in ("samples", "prior_sd", "holdout", "plane_exchange") if name in args
    }
    with ProgressBar(enabled=not args.quiet, desc=f"restore x{args.samples}") as bar:
        result = ensemble(
            image,
            operator,
            keep_samples=args.keep_samples,
            **options,
            **restore_kwargs(args),
            noise_defaults=recorded_noise_defaults(args),
            progress=bar,
            cancel=_interrupted,
        )
    arrays = {args.output: result.mean}
    arrays |= {io.companion(args.output, name): getattr(result, name) for name in names}
    if args.keep_samples and result.samples is not None:
        arrays[io.companion(args.output, "samples")] = result.samples
    writers: dict[str | os.PathLike, Callable[[Path], object]] = {
        path: functools.partial(io.write_image, array=array, like=None if array is result.data_share else image)
        for path, array in arrays.items()
    }
    if args.info is not None:
        writers[args.info] = lambda path: _write_info(path, result.info)
    outputs.write_together(writers, cancel=_interrupted)
    _say(
        args,
        lambda: (
            f"wrote the mean of {args.samples} restorations to {args.output} and {', '.join(names)} next to it"
            + _noise_model_note(result.run_info.noise_model)
            + _conflict_note(result.run_info.text_conflict)
        ),
    )
    held_out = result.run_info.holdout
    if held_out:
        _say(args, lambda: held_out["verdict"])
    few_steps = result.info["calibration"]["note"]
    if few_steps is not None:
        _say(args, lambda: f"warning: {few_steps}")
    return 0


def _write_map(path: Path, *, array: Any, like: Any) -> None:
    io.write_image(path, array, like=like)


# --------------------------------------------------------------------------- demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from napari_treg.plugin.demo import add_arguments
    except ImportError:  # reported by run_demo
        parser.add_argument("demo_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    add_arguments(parser)


def run_demo(args: argparse.Namespace) -> int:
    """Open napari with a sample image and the TReg widgets."""
    try:
        from napari_treg.plugin.demo import run
    except ImportError as exc:
        raise TRegError(f"the demo is not available ({exc})") from None
    return int(run(args) or 0)


# --------------------------------------------------------------------------- batch


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    from napari_treg.cli.batch import add_batch_arguments as add

    add(parser)


def run_batch(args: argparse.Namespace) -> int:
    """Restore a folder of images or a zarr stack on a dask cluster (napari_treg.batch)."""
    from napari_treg.cli.batch import run_batch as run

    return run(args, cancel=_interrupted)  # a Ctrl-C that CPython dropped stops the run too


# --------------------------------------------------------------------------- dispatch


@dataclass(frozen=True)
class Subcommand:
    """One ``napari-treg`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "degrade": Subcommand("simulate a degraded measurement from a clean image", add_degrade_arguments, run_degrade),
    "restore": Subcommand("restore a degraded image with TReg", add_restore_arguments, run_restore),
    "batch": Subcommand("restore a folder of images or a zarr stack on a dask cluster", add_batch_arguments, run_batch),
    "demo": Subcommand("open napari with a sample image and the TReg widget", add_demo_arguments, run_demo),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-treg")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of SUBCOMMANDS."""
    parser = _Parser(prog=PROG, description="Text-guided image restoration (TReg) with a latent diffusion prior.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _fail(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


# Set by Ctrl-C or SIGTERM during main(). CPython drops a KeyboardInterrupt raised while a weakref callback
# or __del__ runs (importlib's module-lock callback while torch imports, for one): the run then carried on and
# wrote its output. The commands also check this event (before each step and before renaming outputs into place).
_interrupted = threading.Event()


def _interrupt(signum: int, frame: Any) -> None:
    _interrupted.set()
    if _importing(frame):  # raised inside torch's C++ module setup it aborts the process with a C++ trace
        return  # main() and the commands check the event
    raise KeyboardInterrupt


def _importing(frame: Any) -> bool:
    """Whether the interrupted code runs inside an import (a frame of importlib's bootstrap on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _note_dropped_interrupts(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable hook that keeps a dropped KeyboardInterrupt in ``_interrupted`` instead of printing it."""

    def hook(unraisable: Any) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            _interrupted.set()
        else:
            previous(unraisable)

    return hook


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """Ctrl-C (unless ignored) and SIGTERM set ``_interrupted`` and raise KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted.clear()
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signals.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, _interrupt) for signum in signals}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _note_dropped_interrupts(sys.unraisablehook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 bad input, 130 Ctrl-C or SIGTERM)."""
    try:
        with _signals_as_interrupt():
            args = build_parser().parse_args(argv)
            if _interrupted.is_set():  # held while the parser imported the engine
                raise KeyboardInterrupt
            return args.run(args)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        _fail(str(exc))
        return 2
    except (KeyboardInterrupt, Exception) as exc:
        failure = describe_failure(exc)  # the same mapping as the widgets'
        if failure is None:
            raise
        if failure.exit_status == EXIT_INTERRUPTED:
            print(f"{PROG}: {failure.message}", file=sys.stderr)
        else:
            _fail(failure.message)
        return failure.exit_status


if __name__ == "__main__":
    sys.exit(main())
