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

if TYPE_CHECKING:
    from napari_treg.operators import LinearOperator

PROG = "napari-treg"
OPERATORS = ("sr", "gauss", "motion", "kernel", "inpaint", "denoise")
FILTERS = ("bicubic", "box", "gaussian")
DTYPES = ("float32", "float16", "bfloat16")

#: ``restore`` keyword defaults shown in --help; tests check they match the API.
RESTORE_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "guidance": 5.0,
    "steps": 200,
    "seed": 0,
    "model": "sd15",
    "device": "auto",
    "dtype": None,
    "method": "treg",
    "dc_every": 3,
    "dc_until": 0.85,
    "cg_iterations": 5,
    "cg_lambda": 1e-4,
    "adaptive_negation": True,
    "negation_lr": 8e-4,
    "negation_steps": 10,
    "batch_size": "auto",
    "rgb": None,
    "noise": None,
    "tile_size": None,
    "tile_overlap": 64,
}
DEGRADE_DEFAULTS: dict[str, Any] = {"noise": 0.01, "seed": 0, "rgb": None}


class UsageError(Exception):
    """A command-line usage error (reported with exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- value types


def _number(kind: Callable[[str], float], test: Callable[[float], bool], rule: str):
    """An argparse type: ``kind(text)`` that must satisfy ``test`` (described by ``rule``)."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    return convert


positive_int = _number(int, lambda v: v > 0, "a whole number > 0")
non_negative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number > 0")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
unit_float = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
finite_float = _number(float, lambda v: abs(v) < float("inf"), "a finite number")


def batch_size(text: str) -> int | str:
    """``auto`` or a whole number > 0."""
    return "auto" if text == "auto" else positive_int(text)


# --------------------------------------------------------------------------- shared arguments


def add_io_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Positional input and required -o output."""
    supported = ", ".join(io.SUPPORTED)
    parser.add_argument("input", metavar="IN", help=f"{what} ({supported})")
    parser.add_argument("-o", "--output", metavar="OUT", required=True, help="output file")


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    """--operator and its parameters."""
    group = parser.add_argument_group("degradation operator")
    group.add_argument("--operator", required=True, choices=OPERATORS,
                       help="sr: super-resolution, gauss: Gaussian blur, motion: motion blur, "
                            "kernel: blur by a kernel file, inpaint: fill masked pixels, "
                            "denoise: noise only")
    group.add_argument("--factor", type=positive_int, default=4,
                       help="sr: downsampling factor (default: %(default)s)")
    group.add_argument("--filter", choices=FILTERS, default="bicubic",
                       help="sr: downsampling filter (default: %(default)s)")
    group.add_argument("--sigma", type=positive_float, default=2.0,
                       help="gauss: blur sigma in pixels (default: %(default)s)")
    group.add_argument("--length", type=positive_float, default=9.0,
                       help="motion: blur length in pixels (default: %(default)s)")
    group.add_argument("--angle", type=finite_float, default=0.0,
                       help="motion: blur angle in degrees (default: %(default)s)")
    group.add_argument("--kernel", metavar="FILE",
                       help="kernel: 2D blur kernel (PSF) image or .npy, normalised to sum 1")
    group.add_argument("--mask", metavar="FILE",
                       help="inpaint: mask image or .npy, label > 0 = missing pixel")


def add_rgb_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None,
                        help="treat the last axis as colour (default: auto, when it has 3 or 4 entries)")


def read_mask(path: str) -> np.ndarray:
    """A boolean missing-pixel mask from a file: label > 0 (in any channel) = missing."""
    mask = io.read_image(path)
    if mask.ndim == 3 and mask.shape[-1] == 3:
        mask = mask.max(axis=-1)
    return np.asarray(mask) > 0


def read_kernel(path: str) -> np.ndarray:
    """A 2D blur kernel from a file (RGB images are averaged to grey)."""
    kernel = io.read_image(path)
    if kernel.ndim == 3 and kernel.shape[-1] == 3:
        kernel = kernel.mean(axis=-1)
    return np.asarray(kernel, dtype=np.float64)


def operator_from_args(args: argparse.Namespace) -> LinearOperator:
    """Build the forward operator named by ``--operator`` from the parsed options."""
    from napari_treg import operators as ops

    name = args.operator
    if args.mask is not None and name != "inpaint":
        raise UsageError("--mask is only used with --operator inpaint")
    if args.kernel is not None and name != "kernel":
        raise UsageError("--kernel is only used with --operator kernel")
    if name == "sr":
        return ops.SuperResolution(args.factor, filter=args.filter)
    if name == "gauss":
        return ops.GaussianBlur(args.sigma)
    if name == "motion":
        return ops.MotionBlur(args.length, angle=args.angle)
    if name == "kernel":
        if args.kernel is None:
            raise UsageError("--operator kernel needs --kernel FILE")
        return ops.KernelBlur(read_kernel(args.kernel))
    if name == "inpaint":
        if args.mask is None:
            raise UsageError("--operator inpaint needs --mask FILE (label > 0 = missing)")
        return ops.Inpainting(read_mask(args.mask))
    if name == "denoise":
        return ops.Denoising()
    raise UsageError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}")


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
    add_io_arguments(parser, "clean image")
    add_operator_arguments(parser)
    group = parser.add_argument_group("noise")
    group.add_argument("--noise", type=non_negative_float, default=DEGRADE_DEFAULTS["noise"],
                       help="Gaussian noise sigma; the image's 0.1-99.9 percentile range "
                            "counts as 2, so 0.01 is 0.5%% of it (default: %(default)s)")
    group.add_argument("--seed", type=non_negative_int, default=DEGRADE_DEFAULTS["seed"],
                       help="noise seed (default: %(default)s)")
    add_rgb_argument(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no status line")


def run_degrade(args: argparse.Namespace) -> int:
    """Simulate a measurement: apply the operator to IN and add noise."""
    from napari_treg.api import degrade

    io.check_output_path(args.output)
    image = io.read_image(args.input)
    operator = operator_from_args(args)
    result = degrade(image, operator, noise=args.noise, seed=args.seed, rgb=args.rgb)
    io.write_image(args.output, result, like=image)
    _say(args, lambda: f"wrote {args.output} ({_describe(args.output)}) with {operator!r}")
    return 0


# --------------------------------------------------------------------------- restore


class ProgressBar:
    """A tqdm bar on stderr fed by ``restore``'s ``progress(step, total, preview)`` callback."""

    def __init__(self, enabled: bool = True, desc: str = "restore"):
        self.enabled = enabled
        self.desc = desc
        self._bar = None

    def __call__(self, step: int, total: int, preview: Any = None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit="step", file=sys.stderr,
                             dynamic_ncols=True, leave=True)
        elif total != self._bar.total or step < self._bar.n:  # next plane of a stack
            self._bar.reset(total=total)
        self._bar.update(max(0, step - self._bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    d = RESTORE_DEFAULTS
    add_io_arguments(parser, "degraded measurement")
    add_operator_arguments(parser)
    text = parser.add_argument_group("text guidance")
    text.add_argument("--prompt", default=d["prompt"], help="what the image shows")
    text.add_argument("--negative-prompt", default=d["negative_prompt"],
                      help="what it should not show")
    text.add_argument("--guidance", type=non_negative_float, default=d["guidance"],
                      help="classifier-free guidance scale (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--steps", type=positive_int, default=d["steps"],
                     help="diffusion steps (default: %(default)s)")
    run.add_argument("--seed", type=non_negative_int, default=d["seed"],
                     help="random seed; plane k of a stack uses seed + k (default: %(default)s)")
    run.add_argument("--model", default=d["model"],
                     help="sd15, tiny (test model), a hub id, a diffusers folder or a "
                          ".safetensors/.ckpt file (default: %(default)s)")
    run.add_argument("--device", default=d["device"],
                     help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    run.add_argument("--dtype", choices=DTYPES, default=d["dtype"],
                     help="model precision (default: float16 on CUDA, float32 otherwise)")
    run.add_argument("--batch-size", type=batch_size, default=d["batch_size"],
                     help="planes of a stack solved together; auto: as many as fit on a CUDA GPU, at most 4, "
                          "else 1 (default: %(default)s)")
    run.add_argument("--tile-size", type=positive_int, default=d["tile_size"],
                     help="restore images larger than this (restored pixels; 512 suits SD 1.5) in "
                          "overlapping, seam-free tiles (default: one piece)")
    run.add_argument("--tile-overlap", type=non_negative_int, default=d["tile_overlap"],
                     help="overlap of neighbouring tiles in restored pixels (default: %(default)s)")
    run.add_argument("--noise", type=non_negative_float, default=d["noise"],
                     help="the measurement's noise sigma (as for degrade): the residual is then also "
                          "reported in units of it (about 1 = consistent with the measurement)")
    add_rgb_argument(run)
    run.add_argument("--info", metavar="FILE.json",
                     help="also write the run's parameters, residual and versions as JSON")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status line")
    method = parser.add_argument_group("method (advanced)")
    method.add_argument("--method", default=d["method"],
                        help="treg or a registered baseline sampler (default: %(default)s)")
    method.add_argument("--dc-every", type=non_negative_int, default=d["dc_every"],
                        help="data consistency on every N-th step, 0: never "
                             "(default: %(default)s)")
    method.add_argument("--dc-until", type=unit_float, default=d["dc_until"],
                        help="data consistency until this fraction of the run "
                             "(default: %(default)s)")
    method.add_argument("--cg-iterations", type=non_negative_int, default=d["cg_iterations"],
                        help="conjugate-gradient iterations per data-consistency step "
                             "(default: %(default)s)")
    method.add_argument("--cg-lambda", type=positive_float, default=d["cg_lambda"],
                        help="proximal weight of each data-consistency step "
                             "(default: %(default)s)")
    method.add_argument("--no-adaptive-negation", dest="adaptive_negation", action="store_false",
                        help="keep the null text embedding fixed")
    method.add_argument("--negation-lr", type=non_negative_float, default=d["negation_lr"],
                        help="adaptive negation learning rate; 1e-3 suits SR, 5e-4 deblurring "
                             "(default: %(default)s)")
    method.add_argument("--negation-steps", type=non_negative_int, default=d["negation_steps"],
                        help="adaptive negation updates per step (default: %(default)s)")


def restore_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``restore`` keyword arguments given on the command line."""
    return {name: getattr(args, name) for name in RESTORE_DEFAULTS}


def _check_info_path(path: str | None) -> None:
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise InvalidInputError(f"folder of --info does not exist: {path!r}")


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
    from napari_treg.api import restore

    io.check_output_path(args.output)
    _check_info_path(args.info)
    image = io.read_image(args.input)
    operator = operator_from_args(args)
    with ProgressBar(enabled=not args.quiet) as bar:
        result, info = restore(image, operator, **restore_kwargs(args), progress=bar,
                               return_info=True)
    io.write_image(args.output, result, like=image)
    if args.info:
        _write_info(args.info, info)
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
    except (OSError, MemoryError, ImportError) as exc:  # ImportError: a broken install
        _fail(str(exc) or type(exc).__name__)
        return 1
    except RuntimeError as exc:  # torch out-of-memory on a GPU
        if "out of memory" not in str(exc).lower():
            raise
        _fail(f"out of memory ({exc}); try a smaller image, --dtype float16 or --device cpu")
        return 1


if __name__ == "__main__":
    sys.exit(main())
