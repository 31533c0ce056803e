"""The "Simulate degradation" dock widget: a clean image in, a measurement ``A x + noise`` out.

The measurement overlays its source (super-resolution measurements get ``scale * factor``),
so a restoration of it can be compared with the clean image as ground truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, PushButton, SpinBox
from napari.utils.notifications import show_error

from napari_treg.api import degrade
from napari_treg.errors import TRegError
from napari_treg.plugin.forms import (
    layer_combo,
    operator_from_form,
    operator_settings,
    operator_spec,
    operator_widgets,
    show_operator,
    status_label,
    visible_parameters,
)
from napari_treg.plugin.layers import Planes, linear_part, mask_for_planes, measurement_geometry, plain
from napari_treg.plugin.messages import explain_error
from napari_treg.plugin.noise_fields import photon_model, photon_widgets, show_photon_fields

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from napari_treg.noise import PoissonGaussian


def measurement_name(
    source: str, operator_key: str, settings: dict, noise: float, model: PoissonGaussian | None = None
) -> str:
    """E.g. ``"cells (Deblur: Gaussian sigma=2, noise 0.01)"``, or ``"..., photon noise gain 2 read sd 3)"``."""
    label = operator_spec(operator_key).label
    values = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())
    noise_text = f"noise {noise:g}" if model is None else f"photon noise gain {model.gain:g} read sd {model.read_sd:g}"
    return f"{source} ({label}{' ' + values if values else ''}, {noise_text})"


class SimulateWidget(Container):
    """Simulate a measurement of a clean Image layer with an operator and Gaussian noise."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(
            widgets=[
                layer_combo(
                    viewer,
                    "Image",
                    "image",
                    "clean image",
                    "The clean (ground-truth) image",
                    False,
                    measurements_last=True,
                ),
                *operator_widgets(viewer, operator="sr"),
                FloatSpinBox(
                    name="noise",
                    label="noise σ",
                    value=0.01,
                    min=0.0,
                    max=1.0,
                    step=0.005,
                    tooltip="Gaussian noise; the image's intensity range counts as [-1, 1], "
                    "so 0.01 is 0.5 % of the range",
                ),
                SpinBox(name="seed", label="seed", value=0, min=0, max=2**31 - 1, tooltip="Seed of the noise"),
                *photon_widgets(),
            ]
        )
        self.noise_estimate.visible = False  # a simulation is given its model, nothing is estimated
        self.simulate_button = PushButton(text="Simulate", tooltip="Add the simulated measurement as a layer")
        self.status = status_label()
        # below the labelled parameters, full width (a labelled row would show an empty label column)
        self._actions = Container(labels=False, widgets=[self.simulate_button, self.status])
        self.native.layout().addWidget(self._actions.native)
        self.viewer = viewer
        self.operator.changed.connect(self._update_visibility)
        self.noise_model.changed.connect(self._update_visibility)
        self.simulate_button.changed.connect(self.simulate)
        for event in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self.reset_choices)
        self._update_visibility()

    def _update_visibility(self, *_: Any) -> None:
        show_operator(self)
        show_photon_fields(self)
        self.noise_estimate.visible = False

    def simulate(self, *_: Any) -> Image | None:
        """Add ``degrade(image, operator, noise, seed)`` as a new layer; returns it (None on error)."""
        layer = self.image.value
        try:
            if layer is None:
                raise TRegError("choose the clean image: add an Image layer and select it under 'clean image'")
            data = np.asarray(layer.data)
            mask = self.mask.value
            if visible_parameters(self.operator.value)["mask"] and mask is not None:
                mask = mask_for_planes(mask.data, Planes(data, None), data.shape, layer.rgb)
            else:
                mask = None
            operator = operator_from_form(self, mask=mask)
            model = photon_model(self)
            measurement = degrade(
                data, operator, noise=self.noise.value, seed=self.seed.value, rgb=layer.rgb, noise_model=model
            )
        except (TRegError, ValueError) as error:
            show_error(explain_error(error).replace("Cannot restore", "Cannot simulate"))
            return None
        settings = operator_settings(self)
        linear = linear_part(layer.rotate, layer.shear, layer.ndim)
        scale, translate = measurement_geometry(layer.scale, layer.translate, operator.upscale, linear)
        name = measurement_name(layer.name, self.operator.value, settings, self.noise.value, model)
        record = {
            "source_layer": layer.name,
            "operator": {"name": self.operator.value, **settings},
            "operator_repr": repr(operator),
            "noise": None if model is not None else self.noise.value,
            "seed": self.seed.value,
        }
        if model is not None:
            record["noise_model"] = model.as_dict()
        added = self.viewer.add_image(
            measurement,
            name=name,
            rgb=layer.rgb,
            scale=scale,
            translate=translate,
            colormap=None if layer.rgb else layer.colormap,
            contrast_limits=list(layer.contrast_limits),
            units=layer.units,
            axis_labels=layer.axis_labels,
            rotate=layer.rotate,
            shear=layer.shear,
            affine=layer.affine.affine_matrix,
            metadata={"treg_simulation": plain(record)},
        )
        self.status.value = f"Added '{name}'."
        return added
