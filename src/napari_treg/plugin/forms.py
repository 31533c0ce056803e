"""magicgui building blocks shared by the restore and simulate widgets.

Widgets are named after the keyword arguments of :func:`napari_treg.restore` and the
operator classes, so ``widget.sigma.value = 3`` works from the napari console.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox, Widget
from napari.layers import Image, Labels

from .choices import OPERATOR_PARAMETERS, OPERATORS, SR_FILTERS, build_operator, visible_parameters

if TYPE_CHECKING:
    import napari

    from ..operators import LinearOperator


def layer_choices(
    viewer: napari.Viewer, kind: str, measurements_last: bool = False
) -> Callable[[Any], list[tuple[str, Any]]]:
    """A magicgui ``choices`` callable listing the viewer's layers of ``kind`` ("Image", "Labels").

    The top layer comes first, as in napari's layer list; ``measurements_last`` moves layers
    made by "Simulate degradation" (or restored by TReg) behind the others.
    """
    layer_type = {"Image": Image, "Labels": Labels}[kind]

    def derived(layer: Any) -> bool:
        return measurements_last and any(key.startswith("treg") for key in layer.metadata)

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        layers = [layer for layer in reversed(viewer.layers) if isinstance(layer, layer_type)]
        return [(layer.name, layer) for layer in sorted(layers, key=derived)]

    return choices


def layer_combo(
    viewer: napari.Viewer, kind: str, name: str, label: str, tooltip: str, nullable: bool,
    measurements_last: bool = False,
) -> ComboBox:
    """A combo box of the viewer's layers of ``kind``."""
    choices = layer_choices(viewer, kind, measurements_last)
    return ComboBox(name=name, label=label, choices=choices, nullable=nullable, tooltip=tooltip)


def operator_widgets(viewer: napari.Viewer, operator: str = "gaussian_blur") -> list[Widget]:
    """The operator choice and every operator parameter (show only the chosen one's with :func:`show_operator`)."""
    return [
        ComboBox(
            name="operator", label="operator", value=operator,
            choices=[(c.label, c.key) for c in OPERATORS],
            tooltip="How the measurement was degraded (the forward model A in y = A x + noise)",
        ),
        SpinBox(name="factor", label="factor", value=4, min=2, max=16,
                tooltip="Super-resolution factor: the result is this many times larger"),
        ComboBox(name="filter", label="filter", value="bicubic", choices=list(SR_FILTERS),
                 tooltip="Anti-aliasing filter of the downsampling (box = camera pixel binning)"),
        FloatSpinBox(name="sigma", label="sigma (px)", value=2.0, min=0.1, max=50.0, step=0.1,
                     tooltip="Standard deviation of the Gaussian blur, in pixels"),
        FloatSpinBox(name="length", label="length (px)", value=9.0, min=1.0, max=200.0, step=1.0,
                     tooltip="Length of the motion blur, in pixels"),
        FloatSpinBox(name="angle", label="angle (°)", value=0.0, min=-180.0, max=180.0, step=5.0,
                     tooltip="Direction of the motion, counter-clockwise from the x axis"),
        layer_combo(viewer, "Image", "psf", "PSF", "Image layer with the measured point spread function (2D)",
                    nullable=True),
        layer_combo(viewer, "Labels", "mask", "mask",
                    "Labels layer marking the missing pixels (label > 0 = missing)", nullable=True),
    ]


def show_operator(form: Container) -> None:
    """Show only the parameter widgets of the operator chosen in ``form``."""
    for name, visible in visible_parameters(form.operator.value).items():
        form[name].visible = visible


def operator_from_form(form: Container, *, psf: Any = None, mask: Any = None) -> LinearOperator:
    """Build the chosen operator from ``form`` (``psf``/``mask`` arrays override the layer choices)."""
    psf_layer, mask_layer = form.psf.value, form.mask.value
    return build_operator(
        form.operator.value,
        factor=form.factor.value,
        filter=form.filter.value,
        sigma=form.sigma.value,
        length=form.length.value,
        angle=form.angle.value,
        psf=psf if psf is not None else (None if psf_layer is None else psf_layer.data),
        mask=mask if mask is not None else (None if mask_layer is None else mask_layer.data),
    )


def operator_settings(form: Container) -> dict[str, Any]:
    """The chosen operator's parameter values (layers by name), for provenance."""
    values: dict[str, Any] = {}
    for name, visible in visible_parameters(form.operator.value).items():
        if visible:
            value = form[name].value
            values[name] = getattr(value, "name", value)
    return values


def apply_operator_record(form: Container, record: dict, layers: Any) -> None:
    """Set the operator widgets from a record ``{"name": key, param: value}`` (layers by name)."""
    settings = dict(record)
    form.operator.value = settings.pop("name")
    for name, value in settings.items():
        if name not in OPERATOR_PARAMETERS:
            continue
        if name in ("psf", "mask"):
            if value in layers:
                form[name].reset_choices()
                form[name].value = layers[value]
        else:
            form[name].value = value


def checkbox(name: str, label: str, value: bool, tooltip: str) -> CheckBox:
    """A check box whose text is its label (no separate label column)."""
    return CheckBox(name=name, text=label, value=value, tooltip=tooltip, label="")
