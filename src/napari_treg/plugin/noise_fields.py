"""The noise-model fields of both widgets: Gaussian level or Poisson-Gaussian, pre-filled from the layer.

Plain functions over a form (any container with the fields below); no algorithm lives here: the
estimate is :func:`napari_treg.noise.estimate_poisson_gaussian`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Label, Widget

from napari_treg.engine.restorer import PHOTON_PARAMETERS, RunSettings, gain_check
from napari_treg.errors import InvalidInputError
from napari_treg.io.files import read_noise_defaults
from napari_treg.noise import NoiseDefaults, PoissonGaussian, estimate_poisson_gaussian
from napari_treg.plugin.forms import number_widget, sentence
from napari_treg.settings import spec_named

#: the widest central crop of the layer the estimate reads (it needs a few thousand 2x2 blocks, not all)
ESTIMATE_CROP = 1024
#: the smallest gain a spin box offers (the spec says only > 0)
MIN_GAIN = 1e-4


def photon_widgets() -> list[Widget]:
    """The noise-model choice, gain, read sd and offset (their specs), and a label for the estimate."""
    choice = spec_named(RunSettings, "noise_model")
    widgets: list[Widget] = [
        ComboBox(
            name="noise_model",
            label=choice.label,
            value=choice.default,
            choices=list(choice.choices),
            tooltip=sentence(choice.help),
        )
    ]
    for name in PHOTON_PARAMETERS:
        spec = spec_named(PoissonGaussian, name)
        minimum = MIN_GAIN if spec.positive else spec.minimum
        widgets.append(number_widget(name, spec.label, spec.kind, spec.default, spec.help, minimum, spec.maximum))
    widgets.append(estimate_label())
    return widgets


def estimate_label() -> Label:
    """Where the estimate is said: it wraps within the dock's width (its one-line width made the form 389 px
    wide, cut off in a 309 px dock)."""
    from qtpy.QtWidgets import QSizePolicy

    estimate = Label(name="noise_estimate", label="estimate", value="")
    estimate.native.setWordWrap(True)
    estimate.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return estimate


def uses_photon_noise(form: Any) -> bool:
    return form.noise_model.value == "poisson-gaussian"


def show_photon_fields(form: Any) -> None:
    """Gain, read sd, offset and the estimate only for the Poisson-Gaussian model; the noise sigma otherwise."""
    photon = uses_photon_noise(form)
    for name in (*PHOTON_PARAMETERS, "noise_estimate"):
        getattr(form, name).visible = photon
    form.noise.visible = not photon


def estimate_plane(data: Any, rgb: bool) -> np.ndarray:
    """Planes ``(1, C, h, w)`` of the first plane of a layer's data, cropped to its centre."""
    array = np.asarray(data[(0,) * (np.ndim(data) - (3 if rgb else 2))], dtype=np.float64)
    planes = np.moveaxis(array, -1, 0)[None] if rgb else array[None, None]
    h, w = planes.shape[-2:]
    top, left = max(0, (h - ESTIMATE_CROP) // 2), max(0, (w - ESTIMATE_CROP) // 2)
    return planes[..., top : top + ESTIMATE_CROP, left : left + ESTIMATE_CROP]


def layer_noise_defaults(layer: Any) -> NoiseDefaults | None:
    """The camera gain and offset recorded in the file the layer was opened from (OME metadata), or None."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        return None
    try:
        return read_noise_defaults(path)
    except (InvalidInputError, OSError, ValueError):  # not a TIFF we can read, or no longer there: nothing recorded
        return None


def prefill_photon_fields(form: Any, layer: Any) -> None:
    """Fill gain, read sd and offset with the estimate on ``layer`` and show it (or why there is none); where
    the layer's file records the camera's gain or offset (OME metadata), those are used and the rest estimated."""
    if layer is None or not uses_photon_noise(form):
        form.noise_estimate.value = ""
        return
    recorded = layer_noise_defaults(layer)
    gain, offset = (None, None) if recorded is None else (recorded.gain, recorded.offset)
    plane = estimate_plane(layer.data, layer.rgb)
    try:
        model = estimate_poisson_gaussian(plane, offset=offset, gain=gain)
    except InvalidInputError as error:
        form.noise_estimate.value = f"Not estimated: {error}."
        if recorded is not None:
            form.noise_estimate.value += f" Recorded: {recorded.describe()}."
        return
    for name, value in model.as_dict().items():
        getattr(form, name).value = value
    values = f"gain {model.gain:.3g}, read sd {model.read_sd:.3g}, offset {model.offset:.4g}"
    if recorded is None:
        form.noise_estimate.value = (
            f"Estimated from '{layer.name}': {values} (only gain and read sd² - gain × offset are identifiable; "
            "edit to override)."
        )
        return
    doubt = "" if gain is None else gain_check(plane, None, gain)
    form.noise_estimate.value = (
        f"From {recorded.describe()}; the rest estimated from '{layer.name}': {values} (a recorded gain is taken "
        f"as the intensity of one photon; edit to override){doubt}."
    )


def photon_values(form: Any) -> dict[str, Any]:
    """The run options of the fields: empty for the Gaussian level, else the model and its parameters."""
    if not uses_photon_noise(form):
        return {}
    return {"noise_model": "poisson-gaussian", **{name: getattr(form, name).value for name in PHOTON_PARAMETERS}}


def photon_model(form: Any) -> PoissonGaussian | None:
    """The fields' :class:`PoissonGaussian` (None for the Gaussian level); checked."""
    values = photon_values(form)
    return None if not values else PoissonGaussian(values["gain"], values["read_sd"], values["offset"])
