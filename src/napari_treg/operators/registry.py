"""Every forward operator by name, with its parameters, defaults, ranges and help, written once.

The CLI (``--operator sr --factor 4``), the widgets and the batch runner all read
:data:`OPERATORS` and build operators with :func:`build_operator`, so adding an operator
is one entry here (plus its class).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from napari_treg.errors import InvalidInputError
from napari_treg.operators.base import LinearOperator
from napari_treg.operators.blur import MAX_GAUSSIAN_SIGMA, MAX_MOTION_LENGTH, GaussianBlur, MotionBlur
from napari_treg.operators.masking import Denoising, Inpainting
from napari_treg.operators.psf import modelled_blur, psf_blur
from napari_treg.operators.resample import FILTERS, MAX_FACTOR, SuperResolution
from napari_treg.settings import check_choice, check_integer, check_number


@dataclass(frozen=True)
class Param:
    """One parameter of an operator as the front ends offer it.

    ``kind`` is int, float or str (a choice), or ``"image"`` for an array the user
    supplies (a file on the command line, a layer in napari).
    """

    name: str
    default: Any
    kind: Any
    help: str
    label: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    def check(self, value: Any) -> Any:
        """``value`` checked against this parameter's kind and range (arrays are checked by the operator)."""
        if self.is_image:
            return value
        if self.kind is str:
            return check_choice(value, self.name, self.choices)
        check = check_integer if self.kind is int else check_number
        return check(value, self.name, self.minimum, self.maximum)


@dataclass(frozen=True)
class OperatorSpec:
    """An operator by name: how the front ends show it and how to build it from parameter values."""

    name: str
    label: str
    help: str
    build: Callable[..., LinearOperator]
    parameters: tuple[Param, ...] = ()
    aliases: tuple[str, ...] = ()
    #: always a 3-D blur (a modelled PSF): a stack is solved as one volume (a measured PSF: when it is 3-D)
    volume: bool = False

    def make(self, **values: Any) -> LinearOperator:
        """The operator from its parameter values (missing ones take their defaults; others are ignored)."""
        arguments = {}
        for param in self.parameters:
            value = values.get(param.name, param.default)
            if value is None and param.is_image:
                raise InvalidInputError(f"operator {self.name!r} needs {param.name}: {param.help}")
            arguments[param.name] = param.check(value)
        return self.build(**arguments)


#: the optical parameters of a modelled PSF (widefield and confocal)
OPTICS = (
    Param("na", 1.4, float, "numerical aperture of the objective", label="NA", minimum=0.1, maximum=1.7),
    Param(
        "wavelength", 0.52, float, "emission wavelength, in micrometres", label="emission (um)", minimum=0.2, maximum=2
    ),
    Param(
        "immersion_index",
        1.515,
        float,
        "refractive index of the immersion medium",
        label="immersion index",
        minimum=1.0,
        maximum=2.0,
    ),
    Param(
        "sample_index", 1.33, float, "refractive index of the sample", label="sample index", minimum=1.0, maximum=2.0
    ),
    Param(
        "depth",
        0.0,
        float,
        "depth of the focus below the coverslip, in micrometres (with a sample index unlike the immersion's, "
        "it adds spherical aberration)",
        label="depth (um)",
        minimum=0.0,
        maximum=1000.0,
    ),
    Param(
        "voxel_z", 0.3, float, "z step of the stack, in micrometres", label="z step (um)", minimum=0.001, maximum=100
    ),
    Param(
        "voxel_xy",
        0.1,
        float,
        "pixel size of the stack, in micrometres",
        label="pixel (um)",
        minimum=0.001,
        maximum=100,
    ),
)

OPERATORS: dict[str, OperatorSpec] = {
    spec.name: spec
    for spec in (
        OperatorSpec(
            "sr",
            "Super-resolution",
            "the measurement is a downsampled image; the result is factor times larger",
            lambda factor, filter: SuperResolution(factor, filter=filter),
            (
                Param(
                    "factor",
                    4,
                    int,
                    "downsampling factor: the result is this many times larger",
                    minimum=1,
                    maximum=MAX_FACTOR,
                ),
                Param(
                    "filter",
                    "bicubic",
                    str,
                    "anti-aliasing filter of the downsampling (bicubic: photographs, box: camera pixel binning)",
                    choices=FILTERS,
                ),
            ),
            aliases=("super_resolution",),
        ),
        OperatorSpec(
            "gauss",
            "Deblur: Gaussian",
            "a Gaussian blur",
            GaussianBlur,
            (
                Param(
                    "sigma",
                    2.0,
                    float,
                    "standard deviation of the blur, in pixels",
                    label="sigma (px)",
                    minimum=0.1,
                    maximum=MAX_GAUSSIAN_SIGMA,
                ),
            ),
            aliases=("gaussian_blur",),
        ),
        OperatorSpec(
            "motion",
            "Deblur: motion",
            "a straight motion blur",
            MotionBlur,
            (
                Param(
                    "length",
                    9.0,
                    float,
                    "length of the motion, in pixels",
                    label="length (px)",
                    minimum=1.0,
                    maximum=MAX_MOTION_LENGTH,
                ),
                Param(
                    "angle",
                    0.0,
                    float,
                    "direction of the motion, degrees counter-clockwise from the x axis",
                    label="angle (°)",
                    minimum=-180.0,
                    maximum=180.0,
                ),
            ),
            aliases=("motion_blur",),
        ),
        OperatorSpec(
            "kernel",
            "Deblur: measured PSF",
            "a blur by a measured point spread function (normalised to sum 1)",
            psf_blur,
            (
                Param(
                    "kernel",
                    None,
                    "image",
                    "the blur kernel (point spread function): 2D, or 3D (Z, Y, X) to restore a z-stack as one volume",
                    label="PSF",
                ),
            ),
            aliases=("psf_blur",),
        ),
        *(
            OperatorSpec(
                kind,
                f"Deblur: {kind} PSF (3D)",
                f"a 3-D blur of a z-stack by a modelled {kind} PSF (psfmodels, vectorial model)",
                functools.partial(modelled_blur, kind),
                OPTICS,
                volume=True,
            )
            for kind in ("widefield", "confocal")
        ),
        OperatorSpec(
            "inpaint",
            "Inpainting (mask)",
            "fill the masked (missing) pixels",
            Inpainting,
            (Param("mask", None, "image", "the missing pixels: label > 0 = missing", label="mask"),),
            aliases=("inpainting",),
        ),
        OperatorSpec("denoise", "Denoising", "noise only (A = identity)", Denoising, aliases=("denoising",)),
    )
}
_BY_ALIAS = {alias: spec for spec in OPERATORS.values() for alias in (spec.name, *spec.aliases)}


def operator_spec(name: str) -> OperatorSpec:
    """The :class:`OperatorSpec` called ``name`` (or one of its aliases)."""
    try:
        return _BY_ALIAS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}") from None


def build_operator(name: str, **values: Any) -> LinearOperator:
    """The operator ``name`` built from parameter values, e.g. ``build_operator("sr", factor=4)``."""
    return operator_spec(name).make(**values)


def operator_parameters() -> dict[str, Param]:
    """Every parameter of every operator by name (a name means the same thing for every operator)."""
    return {param.name: param for spec in OPERATORS.values() for param in spec.parameters}
