"""Command-line options generated from the settings and the operator registry.

Shared by the ``napari-treg`` subcommands that restore (``restore`` in :mod:`napari_treg.cli.commands`,
``batch`` in :mod:`napari_treg.cli.batch`). torch is imported inside the functions, so that
``napari-treg`` catches Ctrl-C during that import.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from glob import glob
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_treg.errors import InvalidInputError
from napari_treg.io import files as io
from napari_treg.settings import Spec, specs

if TYPE_CHECKING:
    from napari_treg.engine.restore_settings import RestoreSettings
    from napari_treg.operators import LinearOperator

PROG = "napari-treg"
#: restore keywords that are neither a method setting (TRegSettings) nor a run option (RunSettings)
RESTORE_CHOICES = ("prompt", "negative_prompt", "model", "device", "dtype", "method", "schedule")
#: the choices that pick the model, not how it restores
MODEL_CHOICES = ("model", "device", "dtype")
#: run options the command line does not offer (a terminal shows no previews)
NOT_ON_THE_COMMAND_LINE = ("preview_every",)


class UsageError(Exception):
    """A command-line usage error (reported with exit status 2)."""


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
        group.add_argument(
            flag(spec.name),
            action=argparse.BooleanOptionalAction,
            default=default,
            help=f"{spec.help} (default: {shown})",
        )
        return
    group.add_argument(
        flag(spec.name),
        type=setting_type(spec.name, spec.kind, spec.check, spec.auto),
        default=default,
        choices=spec.choices or None,
        help=spec.help + ("" if spec.default is None else f" (default: {shown})"),
    )


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
            group.add_argument(
                flag(param.name),
                type=setting_type(param.name, kind, param.check),
                default=param.default,
                choices=param.choices or None,
                help=f"{users}: {param.help} (default: {param.default})",
            )


def add_rgb_argument(parser: Any) -> None:
    from napari_treg.engine.restorer import RunSettings

    add_setting(parser, next(spec for spec in specs(RunSettings) if spec.name == "rgb"))


def read_mask(path: str) -> np.ndarray:
    """A missing-pixel mask from a file: label > 0 (in any channel) = missing; Inpainting checks it."""
    mask = io.read_image(path)
    if mask.ndim == 3 and mask.shape[-1] == 3:
        mask = mask.max(axis=-1)  # NaN stays NaN, so a NaN mask is refused as by the API
    return mask


def read_kernel(path: str) -> np.ndarray:
    """A 2D blur kernel or a 3D PSF ``(Z, Y, X)`` from a file or an OME-Zarr image (RGB images are averaged
    to grey); the operator checks it. A 3D PSF whose last axis has 3 pixels would be read as RGB: pad it."""
    from napari_treg.io.ome_zarr import is_zarr, read_ome_zarr_psf

    if is_zarr(path):
        return read_ome_zarr_psf(path)[0]
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
    operator = spec.make(**values)
    check_psf_voxels(operator, getattr(args, "kernel", None), getattr(args, "input", None))
    return operator


def check_psf_voxels(operator: LinearOperator, kernel_path: str | None, input_path: str | None) -> None:
    """A 3-D PSF file (OME-TIFF or OME-Zarr) and the stack, both with voxel sizes: refuse sizes that differ,
    naming both. ``input_path``: one stack, or (``batch``) a folder or glob of stacks, each compared."""
    from napari_treg.operators import VolumeBlur
    from napari_treg.operators.psf import match_voxel_size

    if not isinstance(operator, VolumeBlur) or kernel_path is None or input_path is None:
        return
    psf_voxel = io.read_voxel_size(kernel_path)
    if psf_voxel is None:
        return
    if os.path.isfile(input_path):
        stack_voxel = io.read_voxel_size(input_path)
        if stack_voxel is not None:
            match_voxel_size(psf_voxel, stack_voxel)
        return
    for path in stack_files(input_path):
        stack_voxel = io.read_voxel_size(path)
        if stack_voxel is None:
            continue
        try:
            match_voxel_size(psf_voxel, stack_voxel)
        except InvalidInputError as error:
            raise InvalidInputError(f"{os.path.basename(path)}: {error}") from None


def stack_files(source: str) -> list[str]:
    """The image files of a batch source given as a folder or glob (none for a zarr store)."""
    from napari_treg.io.ome_zarr import is_zarr

    if is_zarr(source):
        return []
    paths = (
        [os.path.join(source, name) for name in sorted(os.listdir(source))] if os.path.isdir(source) else glob(source)
    )
    return sorted(p for p in paths if os.path.isfile(p) and os.path.splitext(p)[1].lower() in io.SUPPORTED)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Text, model, run and method options of ``restore`` (shared with ``batch``)."""
    from napari_treg.engine.restorer import RunSettings
    from napari_treg.models.devices import DTYPE_CHOICES
    from napari_treg.solver import METHODS, SCHEDULES, TRegSettings
    from napari_treg.solver.schedules import DEFAULT_SCHEDULE

    text = parser.add_argument_group("text guidance")
    text.add_argument("--prompt", default="", help="what the image shows")
    text.add_argument("--negative-prompt", default="", help="what it should not show")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="sd15",
        help="sd15, tiny (test model), analytic (test prior), a hub id, a diffusers folder or a "
        ".safetensors/.ckpt file (default: %(default)s)",
    )
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    model.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=None,
        help="model precision (default: float16 on CUDA, float32 otherwise)",
    )
    add_settings(parser.add_argument_group("run"), RunSettings, skip=NOT_ON_THE_COMMAND_LINE)
    method = parser.add_argument_group("method")
    method.add_argument(
        "--method", default="treg", choices=sorted(METHODS), help="treg or a baseline sampler (default: %(default)s)"
    )
    method.add_argument(
        "--schedule",
        default=DEFAULT_SCHEDULE,
        choices=sorted(SCHEDULES),
        help="named data-consistency schedule: paper, or faithful (the paper's plus a final "
        "projection onto the measurement); the options below override it (default: %(default)s)",
    )
    add_settings(method, TRegSettings, given_only=True)


def restore_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``restore`` keyword arguments given on the command line."""
    from napari_treg.engine.restorer import RunSettings
    from napari_treg.solver import TRegSettings

    names = [*RESTORE_CHOICES, *(s.name for s in specs(TRegSettings)), *(s.name for s in specs(RunSettings))]
    return {name: getattr(args, name) for name in names if name not in NOT_ON_THE_COMMAND_LINE and name in args}


def restore_settings(args: argparse.Namespace) -> RestoreSettings:
    """The text, method and run settings given on the command line, checked (the model's are apart)."""
    from napari_treg.engine.restore_settings import RestoreSettings

    values = restore_kwargs(args)
    return RestoreSettings.from_values({name: value for name, value in values.items() if name not in MODEL_CHOICES})
