"""The restore widget's form: its sections, how they follow the chosen layer, and reading them into a run.

Every field is named after a keyword argument of :func:`napari_treg.restore`; the method's
fields come from :class:`napari_treg.solver.TRegSettings` and the operator's from the operator
registry (:mod:`.forms`). ``form`` below is the restore widget, whose fields are reached by
name (``form.prompt``, ``form.sigma``) whatever section holds them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton, SpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QGroupBox, QScrollArea, QSizePolicy, QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_treg.engine.ensemble import EnsembleSettings
from napari_treg.engine.restore_settings import RestoreSettings
from napari_treg.engine.restorer import RunSettings
from napari_treg.errors import InvalidInputError
from napari_treg.models.options import ModelSettings
from napari_treg.plugin.choices import (
    CPU_FLOAT16_REASON,
    MODELS,
    PRECISIONS,
    available_devices,
    check_precision,
    model_spec,
    precisions_for,
)
from napari_treg.plugin.forms import (
    DEFAULT_OPERATOR,
    apply_operator_record,
    checkbox,
    layer_combo,
    narrow,
    operator_from_form,
    operator_parameters,
    operator_settings,
    operator_spec,
    operator_widgets,
    reset_operator,
    sentence,
    setting_value,
    setting_widget,
    show_operator,
    visible_parameters,
)
from napari_treg.plugin.layers import (
    CURRENT_PLANE,
    WHOLE_STACK,
    check_not_channels,
    current_plane_index,
    is_result,
    leading_shape,
    mask_for_planes,
    select_planes,
    simulation_record,
    voxel_size_um,
)
from napari_treg.plugin.noise_fields import (
    photon_values,
    photon_widgets,
    prefill_photon_fields,
    show_photon_fields,
    uses_photon_noise,
)
from napari_treg.plugin.restoration import RestoreRequest, check_ensemble_request
from napari_treg.settings import spec_named, specs
from napari_treg.solver import TRegSettings, schedule_settings
from napari_treg.solver.text import TextSettings

if TYPE_CHECKING:
    import napari

    from napari_treg.operators import LinearOperator

#: the method settings shown with the text; the others are under Advanced
MAIN_SETTINGS = ("guidance", "steps")
#: restore keyword arguments read straight from widgets of the same name
RESTORE_OPTIONS = (
    "prompt",
    "negative_prompt",
    "seed",
    "noise",
    "tile_size",
    "tile_overlap",
    *(spec.name for spec in specs(TRegSettings)),
)
#: the settings classes' defaults (seed, tile overlap, model, device), not repeated here
DEFAULTS = {**asdict(ModelSettings()), **asdict(RunSettings())}
#: the text fields a new widget starts with (a sample's measurement brings its own, see sample_data)
TEXT_DEFAULTS = {name: spec_named(TextSettings, name).default for name in ("prompt", "negative_prompt")}
#: the dock's width limit: it must leave room for the canvas on a 1366 px laptop screen
DOCK_WIDTH = 400
SECTION_TITLES = {
    "inputs": "Measurement",
    "model_section": "Model",
    "text": "Text guidance and sampling",
    "output": "Output",
    "advanced": "Advanced: method, device, tiles",
}


# -- the sections ---------------------------------------------------------------------------


def build_sections(viewer: napari.Viewer, schedule: str) -> tuple[Container, ...]:
    """The form's sections (inputs, model, text, output, advanced) and the Run/Cancel buttons, last."""
    settings = {spec.name: setting_widget(spec) for spec in specs(TRegSettings)}
    for name, value in schedule_settings(schedule).items():
        settings[name].value = value
    main = [settings.pop(name) for name in MAIN_SETTINGS]
    return (
        inputs_section(viewer),
        model_section(),
        text_section(main),
        output_section(viewer),
        advanced_section(list(settings.values())),
        buttons(),
    )


#: how the planes field reads while a 3-D blur makes the stack one volume
VOLUME_PLANES = "whole stack (volume)"
PLANES_HELP = "For stacks: restore only the displayed plane, or every plane"
VOLUME_HELP = "A 3-D PSF blurs across planes: the whole stack is restored as one volume"


class PlanesComboBox(ComboBox):
    """The planes choice; while a 3-D blur is chosen it shows "whole stack (volume)", fixed, and keeps the
    user's own choice for when another operator is chosen."""

    def __init__(self) -> None:
        super().__init__(name="planes", label="planes", value=CURRENT_PLANE, choices=[CURRENT_PLANE, WHOLE_STACK])
        self.tooltip = PLANES_HELP
        self.chosen = CURRENT_PLANE  # the user's choice, while the field shows the volume

    @property
    def value(self) -> Any:
        return ComboBox.value.fget(self)

    @value.setter
    def value(self, value: Any) -> None:
        if self.enabled:
            ComboBox.value.fset(self, value)
        else:  # from the console while the volume is shown: kept for when another operator is chosen
            self.chosen = value

    def reset_choices(self, *_: Any) -> None:
        """The form's reset on layer changes (the planes' choices are fixed): the volume stays shown."""
        if self.enabled:
            super().reset_choices()

    def show_volume(self, volume: bool) -> None:
        if volume == (not self.enabled):
            return
        if volume:
            self.chosen = self.value
            self.choices = [(VOLUME_PLANES, WHOLE_STACK)]
            self.enabled = False
        else:
            self.enabled = True
            self.choices = [CURRENT_PLANE, WHOLE_STACK]
            self.value = self.chosen
        self.tooltip = VOLUME_HELP if volume else PLANES_HELP


def psf_file_widget() -> FileEdit:
    """A PSF from a file: opened as an Image layer (its OME voxel size as the scale) and chosen."""
    return FileEdit(
        name="kernel_file",
        label="PSF file",
        mode="r",
        filter="Images (*.tif *.tiff *.npy *.png)",
        tooltip="Or open a PSF from a file (TIFF, OME-TIFF, .npy, PNG): it is added as an Image layer and chosen",
    )


def inputs_section(viewer: napari.Viewer) -> Container:
    noise = setting_widget(spec_named(RunSettings, "noise"), label="noise σ", off="unknown", step=0.005)
    image = layer_combo(viewer, "Image", "image", "image", "The measured (degraded) image to restore", False)
    operator = operator_widgets(viewer)
    kernel = next(i for i, widget in enumerate(operator) if widget.name == "kernel")
    operator.insert(kernel + 1, psf_file_widget())
    return Container(name="inputs", widgets=[image, PlanesComboBox(), *operator, noise, *photon_widgets()])


def model_section() -> Container:
    model = ComboBox(
        name="model",
        label="model",
        value=DEFAULTS["model"],
        choices=list(MODELS),
        tooltip="Stable Diffusion 1.5 weights, or a test model (no meaningful photograph)",
    )
    path = FileEdit(
        name="model_path", label="path", mode="d", tooltip="A diffusers folder or a .safetensors / .ckpt checkpoint"
    )
    narrow(model)
    return Container(name="model_section", widgets=[model, path])


def text_section(main_settings: list) -> Container:
    prompt = setting_widget(spec_named(TextSettings, "prompt"))
    negative = setting_widget(spec_named(TextSettings, "negative_prompt"), label="negative")
    seed = setting_widget(spec_named(RunSettings, "seed"))  # the whole seed range, as the API and batch take
    widgets = [prompt, negative, *main_settings, seed, samples_widget(), holdout_widget()]
    return Container(name="text", widgets=widgets)


#: the restore widget's help for its samples field
SAMPLES_HELP = (
    "1: one restoration. 2 or more: an ensemble (seeds seed, seed + 1, ...) added as layers "
    "'mean', 'std' (spread), 'data share' (1 = measured, 0 = invented) and, with a prompt, "
    "'text influence'; it takes that many times as long (docs/uncertainty.md)"
)


def samples_widget(tooltip: str = SAMPLES_HELP) -> SpinBox:
    """1 = one restoration; more = an ensemble, up to the ensemble's own limit (:class:`EnsembleSettings`)."""
    (spec,) = (spec for spec in specs(EnsembleSettings) if spec.name == "samples")
    return SpinBox(name="samples", label="samples", value=1, min=1, max=int(spec.maximum or 1), tooltip=tooltip)


#: the share of the measured values the widget's held-out check hides (the API and CLI take any below 0.5)
WIDGET_HOLDOUT = 0.1


def holdout_widget() -> CheckBox:
    """The held-out check of an ensemble (:mod:`napari_treg.engine.holdout`), with 10 % of the values."""
    return CheckBox(
        name="holdout",
        label="held-out check of the spread",
        value=False,
        tooltip=f"With 4 or more samples: first restore without {WIDGET_HOLDOUT:.0%} of the measured values, see "
        "whether the spread predicts them, and scale the spread of invented pixels by what it finds; one extra "
        "ensemble of time (docs/uncertainty.md)",
    )


def output_section(viewer: napari.Viewer) -> Container:
    reference = layer_combo(
        viewer,
        "Image",
        "reference",
        "reference",
        "Ground truth (e.g. the image a measurement was simulated from): shows PSNR and SSIM",
        nullable=True,
        measurements_last=True,
    )
    return Container(
        name="output",
        widgets=[
            checkbox("preview", "live preview", True, "Show the current estimate while sampling"),
            checkbox(
                "residual_layer",
                "residual layer |A x - y|",
                False,
                "Also add where the result disagrees with the measurement (hidden, below the result)",
            ),
            reference,
        ],
    )


def advanced_section(method_settings: list) -> Container:
    device = ComboBox(
        name="device",
        label="device",
        value=DEFAULTS["device"],
        choices=available_devices(),
        tooltip="auto: the GPU if there is one, else the CPU",
    )
    dtype = ComboBox(name="dtype", label="precision", value=None, choices=list(PRECISIONS))
    device.changed.connect(lambda *_: offer_precisions(device, dtype))
    offer_precisions(device, dtype)
    low_memory = checkbox(
        "low_memory",
        "low-memory mode",
        False,
        "VAE tiling, text encoder on the CPU: for GPUs with little memory (use tiles for large images)",
    )
    tile_size = setting_widget(spec_named(RunSettings, "tile_size"), step=64)
    tile_overlap = setting_widget(spec_named(RunSettings, "tile_overlap"), step=16)
    for combo in (device, dtype):
        narrow(combo)
    return Container(name="advanced", widgets=[*method_settings, device, dtype, low_memory, tile_size, tile_overlap])


def offer_precisions(device: ComboBox, dtype: ComboBox) -> None:
    """The precisions the device can use well (no float16 on the CPU: :data:`CPU_FLOAT16_REASON`), said in the
    tooltip; a precision no longer offered falls back to auto."""
    offered = precisions_for(device.value)
    if dtype.value not in [value for _, value in offered]:
        dtype.value = None
    dtype.choices = offered
    on_cpu = len(offered) < len(PRECISIONS)
    dtype.tooltip = f"{sentence(CPU_FLOAT16_REASON)}." if on_cpu else "float16 halves GPU memory"


def buttons() -> Container:
    return Container(
        name="buttons",
        layout="horizontal",
        labels=False,
        widgets=[
            PushButton(name="run_button", text="Run", tooltip="Restore the image (in the background)"),
            PushButton(
                name="cancel_button", text="Cancel", enabled=False, tooltip="Stop within one step; nothing is added"
            ),
        ],
    )


def frame_sections(sections: tuple[Container, ...]) -> tuple[QScrollArea, QCollapsible]:
    """Titled boxes around the sections, in a scroll area; a collapsible box for the advanced settings.

    Returns the scroll area (to put above Run, Cancel and the status, which stay visible) and
    the collapsible box.
    """
    content = QWidget()
    column = QVBoxLayout(content)
    column.setContentsMargins(0, 0, 0, 0)
    advanced = QCollapsible(SECTION_TITLES["advanced"])
    for section in sections:
        section.margins = (0, 0, 0, 0)
        if section.name == "advanced":
            advanced.addWidget(section.native)
            frame: QWidget = advanced
        else:
            frame = QGroupBox(SECTION_TITLES[section.name])
            QVBoxLayout(frame).addWidget(section.native)
            frame.layout().setContentsMargins(4, 4, 4, 4)
        column.addWidget(frame)
    column.addStretch(1)
    let_fields_shrink(content)
    scroll = QScrollArea()
    scroll.setWidget(content)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setMinimumWidth(min(content.minimumSizeHint().width() + 16, DOCK_WIDTH))
    scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    return scroll, advanced


#: the narrowest a field may get: a spin box's own minimum fits its largest value (1e9: 13 digits), which made
#: the form 401 px wide in a 309 px dock at 1280x720, its right edge (the + buttons, combo arrows) cut off
FIELD_MIN_WIDTH = 64


def let_fields_shrink(content: QWidget) -> None:
    """Let the spin boxes, line edits and combo boxes of the form narrow down to :data:`FIELD_MIN_WIDTH`."""
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QLineEdit

    for kind in (QAbstractSpinBox, QComboBox, QLineEdit):
        for field_widget in content.findChildren(kind):
            field_widget.setMinimumWidth(FIELD_MIN_WIDTH)


# -- what is shown --------------------------------------------------------------------------


def update_visibility(form: Any) -> None:
    """Only the chosen operator's parameters; planes for stacks (fixed to the volume for a 3-D blur);
    the path for a model given by path."""
    show_operator(form.inputs)
    form.kernel_file.visible = visible_parameters(form.operator.value)["kernel"]
    layer = form.image.value
    form.planes.visible = layer is not None and len(leading_shape(np.shape(layer.data), layer.rgb)) > 0
    form.planes.show_volume(solves_as_volume(form))
    choice = form.model.value
    form.model_path.visible = choice in ("folder", "checkpoint")
    form.model_path.mode = "d" if choice == "folder" else "r"
    show_photon_fields(form)


def solves_as_volume(form: Any) -> bool:
    """Whether the chosen operator blurs across planes: a modelled PSF, or a PSF layer of several planes."""
    from napari_treg.operators.psf import is_volume_psf

    if operator_spec(form.operator.value).volume:
        return True
    kernel = form.kernel.value if form.operator.value == "kernel" else None
    return kernel is not None and not kernel.rgb and is_volume_psf(np.shape(kernel.data))


def open_psf_file(form: Any, viewer: napari.Viewer) -> None:
    """Add the PSF file chosen in ``kernel_file`` as an Image layer (scale: its OME voxel size) and choose it."""
    from pathlib import Path

    from napari_treg.io.files import read_image, read_voxel_size

    path = Path(str(form.kernel_file.value))
    if not path.is_file():
        return
    psf = read_image(path)
    voxel = read_voxel_size(path) if psf.ndim == 3 else None
    placed = {"scale": voxel, "units": "um"} if voxel is not None else {}
    layer = viewer.add_image(psf, name=path.stem, visible=False, **placed)
    form.kernel.reset_choices()
    form.kernel.value = layer


def prefill_voxel_fields(form: Any, layer: Any) -> None:
    """The modelled PSF's z step and pixel size from the layer's scale and units (when it gives them)."""
    voxel = None if layer is None else voxel_size_um(layer)
    if voxel is None:
        return
    parameters = operator_parameters()
    for name, value in (("voxel_z", voxel[0]), ("voxel_xy", voxel[2])):
        param = parameters[name]
        if param.minimum <= value <= param.maximum:
            form.inputs[name].value = value


# -- settings that follow the chosen layer --------------------------------------------------


@dataclass
class SetFromLayer:
    """Which settings the record of a layer set, so that choosing another layer can take them back."""

    #: the layer whose record set the operator, if any
    operator_from: str | None = None
    #: the text a layer's record set (prompt, negative prompt), while the user has not changed it
    text: dict[str, str] = field(default_factory=dict)


def follow_layer(form: Any, viewer: napari.Viewer, memory: SetFromLayer) -> None:
    """Every setting that belongs to a layer follows the chosen image, or is cleared.

    A measurement made by "Simulate degradation" (or a sample) brings its operator and
    parameters, its noise level, its mask or PSF, its clean reference and, for a sample,
    a fitting prompt and negative prompt. Any other layer clears the reference, mask, PSF
    and noise level; an operator or a text set from another layer's record goes back to
    its defaults (a text the user has edited since stays).
    """
    layer = form.image.value
    record = simulation_record(layer)
    layers = viewer.layers
    if "operator" in record:
        apply_operator_record(form.inputs, record["operator"], layers)
        memory.operator_from = layer.name
    elif memory.operator_from is not None:  # set by another layer's record: back to the defaults
        form.operator.value = DEFAULT_OPERATOR
        reset_operator(form.inputs)
        memory.operator_from = None
    else:
        for name, param in operator_parameters().items():
            if param.is_image:
                form.inputs[name].value = None
    if "operator" not in record:
        prefill_voxel_fields(form, layer)
    follow_text(form, record, memory)
    form.noise.value = float(record.get("noise") or 0.0)
    prefill_photon_fields(form, layer)
    source = record.get("source_layer")
    form.reference.reset_choices()
    form.reference.value = layers[source] if source in layers else None
    update_visibility(form)


def follow_text(form: Any, record: dict, memory: SetFromLayer) -> None:
    """The record's prompt and negative prompt, or the defaults back if another record set the text."""
    preset = {name: str(record[name]) for name in TEXT_DEFAULTS if name in record}
    if preset:
        for name, value in preset.items():
            getattr(form, name).value = value
        memory.text = preset
        return
    untouched = all(getattr(form, name).value == value for name, value in memory.text.items())
    if memory.text and untouched:
        for name, value in TEXT_DEFAULTS.items():
            getattr(form, name).value = value
    memory.text = {}


def takes_new_layer(layer: Any, current: Any, running: bool) -> bool:
    """Whether a layer just added should replace the chosen image (never during a run): a visible
    measurement replacing a hidden or derived choice, or the clean image it was simulated from."""
    from napari.layers import Image

    if running or not isinstance(layer, Image) or not layer.visible or is_result(layer):
        return False
    simulated_from_current = current is not None and simulation_record(layer).get("source_layer") == current.name
    return current is None or not current.visible or is_result(current) or simulated_from_current


# -- reading the form into a run -------------------------------------------------------------


def preview_interval(steps: int, previews: int = 20) -> int:
    """Preview every this many steps: about ``previews`` previews per run."""
    return max(1, round(steps / previews))


def plane_index(viewer: napari.Viewer, layer: Any) -> tuple[int, ...]:
    """The index of the plane of ``layer`` the viewer shows."""
    position = layer.world_to_data(viewer.dims.point)
    return current_plane_index(position, np.shape(layer.data), layer.rgb)


def read_model(form: Any) -> ModelSettings:
    """The model section as :class:`ModelSettings` (checked)."""
    model = model_spec(form.model.value, str(form.model_path.value))
    check_precision(form.device.value, form.dtype.value)
    return ModelSettings(model, form.device.value, form.dtype.value, form.low_memory.value)


def read_settings(form: Any, rgb: bool) -> RestoreSettings:
    """The text, method and run fields as :class:`RestoreSettings` (checked; every method setting is a field)."""
    values = {name: getattr(form, name).value for name in RESTORE_OPTIONS}
    for name in ("tile_size", "noise"):  # off / unknown: None
        values[name] = setting_value(spec_named(RunSettings, name), values[name])
    values["preview_every"] = preview_interval(values["steps"]) if form.preview.value else 0
    if uses_photon_noise(form):
        values["noise"] = None  # the model gives every value its own level
    return RestoreSettings.from_values({**values, **photon_values(form), "rgb": rgb})


def check_layer_voxels(form: Any, layer: Any, operator: LinearOperator) -> None:
    """Refuse a PSF whose voxel size (modelled, or its Image layer's scale and units) differs from the stack
    layer's; a layer that gives no voxel size (:func:`voxel_size_um`) is not compared."""
    from napari_treg.operators.psf import match_voxel_size

    stack = voxel_size_um(layer)
    psf = getattr(operator, "voxel_size", None)
    kernel_layer = getattr(getattr(form.inputs, "kernel", None), "value", None)
    if psf is None and form.operator.value == "kernel" and kernel_layer is not None:
        psf = voxel_size_um(kernel_layer)
    if stack is not None and psf is not None:
        match_voxel_size(psf, stack)


def read_request(form: Any, viewer: napari.Viewer) -> RestoreRequest:
    """The form as a :class:`RestoreRequest` (main thread; raises InvalidInputError on bad input)."""
    layer = form.image.value
    if layer is None:
        raise InvalidInputError("choose the image to restore: add an Image layer and select it under 'image'")
    if getattr(layer, "multiscale", False):
        raise InvalidInputError("multiscale images are not supported: open the full-resolution level only")
    check_not_channels(layer.name, np.shape(layer.data), layer.rgb)
    planes = select_planes(layer.data, layer.rgb, form.planes.value, plane_index(viewer, layer))
    mask = None
    if visible_parameters(form.operator.value)["mask"] and form.mask.value is not None:
        mask = mask_for_planes(form.mask.value.data, planes, np.shape(layer.data), layer.rgb)
    operator = operator_from_form(form.inputs, mask=mask)
    if operator.couples_planes:  # a 3-D PSF: the whole stack is one volume
        planes = select_planes(layer.data, layer.rgb, WHOLE_STACK, plane_index(viewer, layer))
        check_layer_voxels(form, layer, operator)
    plane_hw = np.shape(planes.data)[-3:-1] if layer.rgb else np.shape(planes.data)[-2:]
    operator.check_image_hw(operator.image_hw(tuple(plane_hw)))  # e.g. a mask of another size
    reference = form.reference.value
    request = RestoreRequest(
        planes=planes,
        operator=operator,
        model=read_model(form),
        settings=read_settings(form, bool(layer.rgb)),
        residual=form.residual_layer.value,
        reference=None if reference is None else np.asarray(reference.data),
        source=layer,
        record={
            "operator": {"name": form.operator.value, **operator_settings(form.inputs)},
            "reference": getattr(reference, "name", None),
        },
        samples=form.samples.value,
        holdout=WIDGET_HOLDOUT if form.holdout.value else None,
    )
    if request.holdout is not None and request.samples == 1:
        raise InvalidInputError("the held-out check tests an ensemble's spread: set samples to 4 or more")
    if request.samples > 1:
        check_ensemble_request(request)
    return request
