"""magicgui building blocks shared by the restore and simulate widgets, generated from the engine.

The operator widgets come from the operator registry (:data:`napari_treg.operators.OPERATORS`)
and the method's fields from :class:`napari_treg.solver.TRegSettings`: names, defaults, ranges,
labels and help are written there once. Widgets are named after the keyword arguments of
:func:`napari_treg.restore` and the operator parameters, so ``widget.sigma.value = 3`` works
from the napari console.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, SpinBox, Widget
from napari.layers import Image, Labels

from napari_treg.errors import InvalidInputError
from napari_treg.operators.registry import OPERATORS, Param, build_operator, operator_parameters, operator_spec

__all__ = ["operator_parameters", "operator_spec"]  # re-exported for the widgets
from napari_treg.plugin.layers import is_preview, is_result
from napari_treg.settings import Spec

if TYPE_CHECKING:
    import napari

    from napari_treg.operators import LinearOperator

#: the operator a new widget starts with
DEFAULT_OPERATOR = "gauss"
#: the napari layer type of an operator's array parameter (any other is an Image layer)
LAYER_PARAMETER_KINDS = {"mask": "Labels"}


def layer_choices(
    viewer: napari.Viewer, kind: str, measurements_last: bool = False
) -> Callable[[Any], list[tuple[str, Any]]]:
    """A magicgui ``choices`` callable listing the viewer's layers of ``kind`` ("Image", "Labels").

    The preview layer is never listed. The top layer comes first, as in napari's layer list,
    but TReg's results come last and, for inputs, hidden layers after visible ones;
    ``measurements_last`` also moves layers made by "Simulate degradation" behind the others
    (for clean images and references).
    """
    layer_type = {"Image": Image, "Labels": Labels}[kind]

    def rank(layer: Any) -> tuple[bool, bool]:
        if measurements_last:
            return is_result(layer) or "treg_simulation" in layer.metadata, False
        return is_result(layer), not layer.visible

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        layers = [layer for layer in reversed(viewer.layers) if isinstance(layer, layer_type) and not is_preview(layer)]
        return [(layer.name, layer) for layer in sorted(layers, key=rank)]

    return choices


def layer_combo(
    viewer: napari.Viewer,
    kind: str,
    name: str,
    label: str,
    tooltip: str,
    nullable: bool,
    measurements_last: bool = False,
) -> ComboBox:
    """A combo box of the viewer's layers of ``kind``."""
    choices = layer_choices(viewer, kind, measurements_last)
    combo = ComboBox(name=name, label=label, choices=choices, nullable=nullable, tooltip=tooltip)
    narrow(combo)
    return combo


def narrow(combo: ComboBox, characters: int = 14) -> None:
    """Let a combo box be narrower than its longest item (long layer names must not widen the dock)."""
    from qtpy.QtWidgets import QComboBox

    combo.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.native.setMinimumContentsLength(characters)


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def float_step(default: float) -> float:
    """A spin box step one decade below ``default`` (so its decimals show the default)."""
    if not default:
        return 0.05
    return 10.0 ** (math.floor(math.log10(abs(default))) - 1)


def number_widget(
    name: str,
    label: str,
    kind: Any,
    default: Any,
    help: str,
    minimum: float | None,
    maximum: float | None,
) -> Widget:
    """A check box, spin box or float spin box for one setting."""
    if kind is bool:
        return checkbox(name, label, default, sentence(help))
    if kind is int:
        return SpinBox(
            name=name,
            label=label,
            value=default,
            min=int(minimum if minimum is not None else 0),
            max=int(maximum if maximum is not None else 2**31 - 1),
            tooltip=sentence(help),
        )
    spin = FloatSpinBox(
        name=name,
        label=label,
        value=default,
        min=minimum if minimum is not None else -1e9,
        max=maximum if maximum is not None else 1e9,
        step=float_step(default),
        tooltip=sentence(help),
    )
    spin.adaptive_step = True
    if minimum is not None and 0 < minimum < 0.01:  # show values as small as the smallest allowed, to 4 decimals
        spin.native.setDecimals(max(spin.native.decimals(), min(-math.floor(math.log10(minimum)), 4)))
    return spin


def setting_widget(spec: Spec, *, label: str | None = None, off: str = "off", step: float | None = None) -> Widget:
    """The widget of one setting, with its spec's default, range and help (written once, in its settings class).

    Text is a line edit; a number that may be None (``tile_size``, ``noise``) starts at 0, shown as
    ``off``, and 0 reads back as None (:func:`setting_value`).
    """
    label = label or spec.label
    if spec.kind is str and not spec.choices:
        return LineEdit(name=spec.name, label=label, value=spec.default or "", tooltip=sentence(spec.help))
    if not spec.optional:
        widget = number_widget(spec.name, label, spec.kind, spec.default, spec.help, spec.minimum, spec.maximum)
    else:  # a float spin box for whole numbers too: superqt's large-int spin box shows no special text
        widget = number_widget(spec.name, label, float, 0.0, spec.help, 0, spec.maximum)
        if spec.kind is int:
            widget.native.setDecimals(0)
        widget.native.setSpecialValueText(off)  # 0: None
    if step is not None:
        widget.step = step
    return widget


def setting_value(spec: Spec, value: Any) -> Any:
    """A :func:`setting_widget`'s value as the setting takes it: 0 of a setting that may be None is None."""
    if spec.optional and spec.kind in (int, float) and not value:
        return None
    return spec.kind(value) if spec.kind in (int, float) else value


def parameter_widget(viewer: napari.Viewer, param: Param) -> Widget:
    """The widget of one operator parameter: a layer choice for arrays, else a number or a choice."""
    label = param.label or param.name
    if param.is_image:
        kind = LAYER_PARAMETER_KINDS.get(param.name, "Image")
        return layer_combo(viewer, kind, param.name, label, f"{kind} layer: {param.help}", nullable=True)
    if param.kind is str:
        combo = ComboBox(
            name=param.name, label=label, value=param.default, choices=list(param.choices), tooltip=sentence(param.help)
        )
        narrow(combo)
        return combo
    return number_widget(param.name, label, param.kind, param.default, param.help, param.minimum, param.maximum)


class OperatorComboBox(ComboBox):
    """The operator choice; it also takes the operators' aliases (``"gaussian_blur"`` selects ``"gauss"``)."""

    @property
    def value(self) -> Any:
        return ComboBox.value.fget(self)

    @value.setter
    def value(self, value: Any) -> None:
        ComboBox.value.fset(self, operator_spec(value).name if isinstance(value, str) else value)


def operator_widgets(viewer: napari.Viewer, operator: str = DEFAULT_OPERATOR) -> list[Widget]:
    """The operator choice and every operator parameter (show only the chosen one's with :func:`show_operator`)."""
    combo = OperatorComboBox(
        name="operator",
        label="operator",
        value=operator_spec(operator).name,
        choices=[(spec.label, spec.name) for spec in OPERATORS.values()],
        tooltip="How the measurement was degraded (the forward model A in y = A x + noise)",
    )
    narrow(combo)
    return [combo, *(parameter_widget(viewer, param) for param in operator_parameters().values())]


def visible_parameters(name: str) -> dict[str, bool]:
    """For every operator parameter widget, whether operator ``name`` uses it."""
    used = {param.name for param in operator_spec(name).parameters}
    return {param: param in used for param in operator_parameters()}


def show_operator(form: Container) -> None:
    """Show only the parameter widgets of the operator chosen in ``form``."""
    for name, visible in visible_parameters(form.operator.value).items():
        form[name].visible = visible


def operator_from_form(form: Container, **arrays: Any) -> LinearOperator:
    """Build the chosen operator from ``form``; arrays given by name (e.g. ``mask=``) override layer choices."""
    values = {}
    for param in operator_spec(form.operator.value).parameters:
        value = form[param.name].value
        if param.is_image:
            value = arrays.get(param.name) if arrays.get(param.name) is not None else getattr(value, "data", None)
            if value is None:
                kind = LAYER_PARAMETER_KINDS.get(param.name, "Image")
                article = "an" if kind[0] in "AEIOU" else "a"
                raise InvalidInputError(f"choose the {param.label or param.name}: {article} {kind} layer, {param.help}")
        values[param.name] = value
    return build_operator(form.operator.value, **values)


def operator_settings(form: Container) -> dict[str, Any]:
    """The chosen operator's parameter values (layers by name), for provenance."""
    return {
        param.name: getattr(form[param.name].value, "name", form[param.name].value)
        for param in operator_spec(form.operator.value).parameters
    }


def reset_operator(form: Container) -> None:
    """Every operator parameter back to its default, and no layer chosen."""
    for param in operator_parameters().values():
        form[param.name].value = param.default


def apply_operator_record(form: Container, record: dict, layers: Any) -> None:
    """Set the operator widgets from a record ``{"name": name, param: value}`` (layers by name).

    Parameters the record does not give take their defaults; a layer it names that is
    not in ``layers`` is left unchosen.
    """
    settings = dict(record)
    reset_operator(form)
    form.operator.value = operator_spec(settings.pop("name")).name
    parameters = operator_parameters()
    for name, value in settings.items():
        param = parameters.get(name)
        if param is None:
            continue
        if param.is_image:
            form[name].reset_choices()
            form[name].value = layers[value] if value in layers else None
        else:
            form[name].value = value


def status_label() -> Label:
    """A status line as wide as its dock, wrapping onto as many lines as its text needs (never cut off)."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return label


def checkbox(name: str, label: str, value: bool, tooltip: str) -> CheckBox:
    """A check box whose text is its label (no separate label column)."""
    return CheckBox(name=name, text=label, value=value, tooltip=tooltip, label="")
