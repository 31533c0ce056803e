"""The ``napari-treg`` command line: ``degrade``, ``restore`` and ``demo``.

Each subcommand is one entry in :data:`SUBCOMMANDS`: a function that adds its
arguments and a function that runs it and returns the exit status. Errors end
as one line on stderr, ``napari-treg: error: <message>``, never a traceback:

- exit 2: bad usage or bad input (unknown option, missing file, invalid value);
- exit 1: any other failure (missing model weights, divergence, I/O, memory,
  a missing dependency);
- exit 130: interrupted (Ctrl-C); no partial output file is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_treg import io
from napari_treg.errors import Cancelled, InvalidInputError, TRegError
from napari_treg.memory import is_out_of_memory, out_of_memory_error
from napari_treg.settings import Spec, check_integer, check_number, specs

if TYPE_CHECKING:  # torch is imported inside main(), where Ctrl-C during the import is caught
    from napari_treg.engine import Progress
    from napari_treg.operators import LinearOperator

PROG = "napari-treg"
#: restore keywords that are neither a method setting (TRegConfig) nor a run option (RunOptions)
RESTORE_CHOICES = ("prompt", "negative_prompt", "model", "device", "dtype", "method", "schedule")
#: run options the command line does not offer (a terminal shows no previews)
NOT_ON_THE_COMMAND_LINE = ("preview_every",)


class UsageError(Exception):
    """A command-line usage error (reported with exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- options from settings


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting_type(name: str, kind: Any, check: Callable[[Any], Any], auto: bool = False) -> Callable[[str], Any]:
    """An argparse type: parse ``kind`` from text (or "auto"), then ``check`` it (the setting's own rule)."""

    def convert(text: str) -> Any:
        if auto and text == "auto":
            return "auto"
        try:
            value = kind(text) if kind in (int, float) else text
        except ValueError:
            what = ("a whole number" if kind is int else "a number") + (" or auto" if auto else "")
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        try:
            return check(value)
        except InvalidInputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def add_setting(group: Any, spec: Spec, given_only: bool = False) -> None:
    """One command-line option for a setting, with its default, range and help from the one place.

    ``given_only``: the option is in the parsed arguments only when given (the API's default, or a
    named schedule's value, applies otherwise).
    """
    default = argparse.SUPPRESS if given_only else spec.default
    shown = "auto" if spec.default is None else spec.default
    if spec.kind is bool:
        group.add_argument(flag(spec.name), action=argparse.BooleanOptionalAction, default=default,
                           help=f"{spec.help} (default: {shown})")
        return
    group.add_argument(flag(spec.name), type=setting_type(spec.name, spec.kind, spec.check, spec.auto),
                       default=default, choices=spec.choices or None,
                       help=spec.help + ("" if spec.default is None else f" (default: {shown})"))


def add_settings(group: Any, settings_class: type, skip: Sequence[str] = (), given_only: bool = False) -> None:
    for spec in specs(settings_class):
        if spec.name not in skip:
            add_setting(group, spec, given_only)


# --------------------------------------------------------------------------- shared arguments


def add_io_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Positional input and required -o output."""
    supported = ", ".join(io.SUPPORTED)
    parser.add_argument("input", metavar="IN", help=f"{what} ({supported})")
    parser.add_argument("-o", "--output", metavar="OUT", required=True, help="output file")


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    """--operator and every operator parameter, from the operator registry."""
    from napari_treg.operators.registry import OPERATORS, operator_parameters

    group = parser.add_argument_group("degradation operator")
    names = ", ".join(f"{spec.name}: {spec.help}" for spec in OPERATORS.values())
    group.add_argument("--operator", required=True, choices=list(OPERATORS), help=names)
    for param in operator_parameters().values():
        users = ", ".join(spec.name for spec in OPERATORS.values() if param in spec.parameters)
        if param.is_image:
            group.add_argument(flag(param.name), metavar="FILE", help=f"{users}: {param.help} (an image or .npy file)")
        else:
            kind = param.kind if param.kind in (int, float) else str
            group.add_argument(flag(param.name), type=setting_type(param.name, kind, param.check),
                               default=param.default, choices=param.choices or None,
                               help=f"{users}: {param.help} (default: {param.default})")


def add_rgb_argument(parser: Any) -> None:
    from napari_treg.engine import RunOptions

    add_setting(parser, next(spec for spec in specs(RunOptions) if spec.name == "rgb"))


def read_mask(path: str) -> np.ndarray:
    """A missing-pixel mask from a file: label > 0 (in any channel) = missing; Inpainting checks it."""
    mask = io.read_image(path)
    if mask.ndim == 3 and mask.shape[-1] == 3:
        mask = mask.max(axis=-1)  # NaN stays NaN, so a NaN mask is refused as by the API
    return mask


def read_kernel(path: str) -> np.ndarray:
    """A 2D blur kernel from a file (RGB images are averaged to grey); KernelBlur checks it."""
    kernel = io.read_image(path)
    if kernel.ndim == 3 and kernel.shape[-1] == 3:
        kernel = kernel.mean(axis=-1)
    return kernel


#: how each image parameter of an operator is read from its file
IMAGE_READERS: dict[str, Callable[[str], np.ndarray]] = {"kernel": read_kernel, "mask": read_mask}


def operator_from_args(args: argparse.Namespace) -> LinearOperator:
    """Build the forward operator named by ``--operator`` from the parsed options."""
    from napari_treg.operators.registry import OPERATORS, operator_parameters, operator_spec

    spec = operator_spec(args.operator)
    values = {}
    for param in operator_parameters().values():
        value = getattr(args, param.name)
        if param.is_image and value is not None:
            if param not in spec.parameters:
                users = " or ".join(s.name for s in OPERATORS.values() if param in s.parameters)
                raise UsageError(f"{flag(param.name)} is only used with --operator {users}")
            value = IMAGE_READERS[param.name](value)
        values[param.name] = value
    for param in spec.parameters:
        if param.is_image and values[param.name] is None:
            raise UsageError(f"--operator {spec.name} needs {flag(param.name)} FILE ({param.help})")
    return spec.make(**values)


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
    from napari_treg.engine import MAX_SEED

    add_io_arguments(parser, "clean image")
    add_operator_arguments(parser)
    group = parser.add_argument_group("noise")
    group.add_argument("--noise", type=setting_type("noise", float, lambda v: check_number(v, "noise", minimum=0.0)),
                       default=DEGRADE_DEFAULTS["noise"],
                       help="Gaussian noise sigma; the image's 0.1-99.9 percentile range "
                            "counts as 2, so 0.01 is 0.5%% of it (default: %(default)s)")
    group.add_argument("--seed", type=setting_type("seed", int, lambda v: check_integer(v, "seed", 0, MAX_SEED)),
                       default=DEGRADE_DEFAULTS["seed"], help="noise seed (default: %(default)s)")
    add_rgb_argument(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no status line")


def run_degrade(args: argparse.Namespace) -> int:
    """Simulate a measurement: apply the operator to IN and add noise."""
    from napari_treg import outputs
    from napari_treg.api import degrade

    image = io.read_image(args.input)
    operator = operator_from_args(args)
    shape = outputs.result_shape(image, args.rgb, operator.measurement_hw)
    outputs.check_outputs([outputs.Output("-o", Path(args.output), shape)], [args.input, args.mask, args.kernel])
    result = degrade(image, operator, noise=args.noise, seed=args.seed, rgb=args.rgb)
    outputs.write_together({args.output: lambda path: io.write_image(path, result, like=image)})
    _say(args, lambda: f"wrote {args.output} ({_describe(args.output)}) with {operator!r}")
    return 0


# --------------------------------------------------------------------------- restore


class ProgressBar:
    """A tqdm bar on stderr fed by :class:`~napari_treg.engine.Progress` events."""

    def __init__(self, enabled: bool = True, desc: str = "restore"):
        self.enabled = enabled
        self.desc = desc
        self._bar: Any = None

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=event.total, desc=self.desc, unit="step", file=sys.stderr,
                             dynamic_ncols=True, leave=True)
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

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    add_io_arguments(parser, "degraded measurement")
    add_operator_arguments(parser)
    add_method_arguments(parser)
    parser.add_argument("--info", metavar="FILE.json",
                        help="also write the run's parameters, residual and versions as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status line")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Text, model, run and method options of ``restore`` (shared with ``batch``)."""
    from napari_treg.engine import DEFAULT_SCHEDULE, RunOptions
    from napari_treg.models.devices import DTYPE_CHOICES
    from napari_treg.solver import METHODS, SCHEDULES, TRegConfig

    text = parser.add_argument_group("text guidance")
    text.add_argument("--prompt", default="", help="what the image shows")
    text.add_argument("--negative-prompt", default="", help="what it should not show")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="sd15",
                       help="sd15, tiny (test model), analytic (test prior), a hub id, a diffusers folder or a "
                            ".safetensors/.ckpt file (default: %(default)s)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    model.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                       help="model precision (default: float16 on CUDA, float32 otherwise)")
    add_settings(parser.add_argument_group("run"), RunOptions, skip=NOT_ON_THE_COMMAND_LINE)
    method = parser.add_argument_group("method")
    method.add_argument("--method", default="treg", choices=sorted(METHODS),
                        help="treg or a baseline sampler (default: %(default)s)")
    method.add_argument("--schedule", default=DEFAULT_SCHEDULE, choices=sorted(SCHEDULES),
                        help="named data-consistency schedule: paper, or faithful (the paper's plus a final "
                             "projection onto the measurement); the options below override it (default: %(default)s)")
    add_settings(method, TRegConfig, given_only=True)


def restore_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``restore`` keyword arguments given on the command line."""
    from napari_treg.engine import RunOptions
    from napari_treg.solver import TRegConfig

    names = [*RESTORE_CHOICES, *(s.name for s in specs(TRegConfig)), *(s.name for s in specs(RunOptions))]
    return {name: getattr(args, name) for name in names if name not in NOT_ON_THE_COMMAND_LINE and name in args}


def _write_info(path: str, info: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(info, indent=2, default=str) + "\n")


def _restore_summary(output: str, info: dict[str, Any]) -> str:
    summary = f"wrote {output} ({_describe(output)})"
    if "seconds" in info:
        summary += f" in {info['seconds']:.1f} s"
    if "residual" in info:
        summary += f"; relative residual {info['residual']:.3g}"
    if info.get("residual_over_noise") is not None:
        summary += f" ({info['residual_over_noise']:.2g} x the noise level)"
    return summary


def run_restore(args: argparse.Namespace) -> int:
    """Restore IN with TReg and write the result to OUT."""
    from napari_treg import outputs
    from napari_treg.api import restore

    image = io.read_image(args.input)
    operator = operator_from_args(args)
    planned = [outputs.Output("-o", Path(args.output), outputs.result_shape(image, args.rgb, operator.image_hw))]
    if args.info is not None:
        planned.append(outputs.Output("--info", Path(args.info)))
    outputs.check_outputs(planned, [args.input, args.mask, args.kernel])
    with ProgressBar(enabled=not args.quiet) as bar:
        result, info = restore(image, operator, **restore_kwargs(args), progress=bar,
                               return_info=True)
    writers = {args.output: lambda path: io.write_image(path, result, like=image)}
    if args.info is not None:
        writers[args.info] = lambda path: _write_info(path, info)
    outputs.write_together(writers)
    _say(args, lambda: _restore_summary(args.output, info))
    return 0


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
    from napari_treg.batch.cli import add_batch_arguments as add

    add(parser)


def run_batch(args: argparse.Namespace) -> int:
    """Restore a folder of images or a zarr stack on a dask cluster (napari_treg.batch)."""
    from napari_treg.batch.cli import run_batch as run

    return run(args)


# --------------------------------------------------------------------------- dispatch


@dataclass(frozen=True)
class Subcommand:
    """One ``napari-treg`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "degrade": Subcommand("simulate a degraded measurement from a clean image",
                          add_degrade_arguments, run_degrade),
    "restore": Subcommand("restore a degraded image with TReg",
                          add_restore_arguments, run_restore),
    "batch": Subcommand("restore a folder of images or a zarr stack on a dask cluster", add_batch_arguments, run_batch),
    "demo": Subcommand("open napari with a sample image and the TReg widget",
                       add_demo_arguments, run_demo),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-treg")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of SUBCOMMANDS."""
    parser = _Parser(prog=PROG, description="Text-guided image restoration (TReg) "
                                            "with a latent diffusion prior.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _fail(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 bad input, 130 Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except (KeyboardInterrupt, Cancelled):
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return 130
    except (UsageError, InvalidInputError) as exc:
        _fail(str(exc))
        return 2
    except TRegError as exc:
        _fail(str(exc))
        return 1
    except ValueError as exc:
        _fail(str(exc))
        return 2
    except (OSError, ImportError) as exc:  # ImportError: a broken install
        _fail(str(exc) or type(exc).__name__)
        return 1
    except (MemoryError, RuntimeError) as exc:  # an allocation failure on any device
        if not is_out_of_memory(exc):
            raise
        _fail(str(out_of_memory_error(exc)))
        return 1


if __name__ == "__main__":
    sys.exit(main())
