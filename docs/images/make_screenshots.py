"""Regenerate the user guide's screenshots.

    xvfb-run -a -s "-screen 0 1280x720x24" python docs/images/make_screenshots.py
    xvfb-run -a -s "-screen 0 1280x720x24" python docs/images/make_screenshots.py ensemble   # that shot only
    xvfb-run -a -s "-screen 0 1280x720x24" python docs/images/make_screenshots.py failure    # that shot only
    xvfb-run -a -s "-screen 0 1280x720x24" python docs/images/make_screenshots.py volume     # a z-stack as a volume
    xvfb-run -a -s "-screen 0 1280x720x24" python docs/images/make_screenshots.py controls   # volume, photon fields

Runs the real napari window (under Xvfb on a headless machine), 1280 x 720 like a small laptop's
screen, with the Advanced settings closed and open, and after a failed run with its details open. The result shots use
the analytic test prior (an exact prior over two shapes, no downloaded weights), the only prior
here that makes a meaningful image without Stable Diffusion weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
WINDOW = (1280, 720)


def save(image: np.ndarray, name: str, width: int | None = None) -> None:
    """Save a screenshot as an optimised 256-colour PNG (well under 300 kB)."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(np.asarray(image)[..., :3]))
    if width is not None and picture.width > width:
        picture = picture.resize((width, round(picture.height * width / picture.width)), Image.LANCZOS)
    picture = picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path = HERE / name
    picture.save(path, optimize=True)
    print(f"{path.name}: {picture.width}x{picture.height}, {path.stat().st_size // 1024} kB")


def grab(qwidget) -> np.ndarray:
    """A QWidget as an RGB array."""
    from qtpy.QtGui import QImage

    image = qwidget.grab().toImage().convertToFormat(QImage.Format_RGB888)
    bits = image.constBits()
    bits.setsize(image.height() * image.bytesPerLine())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : 3 * image.width()].reshape(image.height(), image.width(), 3).copy()


def dock_of(qwidget):
    """The QDockWidget holding ``qwidget``."""
    from qtpy.QtWidgets import QDockWidget

    while qwidget is not None and not isinstance(qwidget, QDockWidget):
        qwidget = qwidget.parent()
    return qwidget


def settle(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait(widget) -> None:
    while widget.is_running:
        settle(0.05)
    settle()


def shapes_measurement(viewer):
    """A 64 x 64 disk measured 8x smaller: at 8 x 8 pixels a disk and a square look alike."""
    from napari_treg import degrade
    from napari_treg.models.analytic import template
    from napari_treg.operators import SuperResolution

    clean = template("disk", (64, 64))
    measured = degrade(clean, SuperResolution(8), noise=0.01, seed=0)
    viewer.add_image(clean, name="disk (clean)", contrast_limits=(0, 1))
    return viewer.add_image(
        measured,
        name="disk 8x downsampled",
        scale=(8, 8),
        translate=(3.5, 3.5),
        contrast_limits=(0, 1),
        metadata={
            "treg_simulation": {
                "source_layer": "disk (clean)",
                "operator": {"name": "sr", "factor": 8, "filter": "bicubic"},
                "noise": 0.01,
            }
        },
    )


def close_notifications() -> None:
    """Close napari's notification pop-ups before a shot."""
    from qtpy.QtWidgets import QApplication

    for qwidget in QApplication.allWidgets():
        if type(qwidget).__name__ == "NapariQtNotification":
            qwidget.close()
    settle()


def ensemble_shot(viewer) -> None:
    """The photograph-inpainting sample restored by an ensemble of 8 with the analytic prior: the maps side by side."""
    from napari_treg.plugin.demo import open_demo

    viewer.layers.clear()
    viewer.canvas.grid.enabled = False
    widget = open_demo(viewer, "photograph_inpainting", model="analytic", steps=20)
    widget.samples.value = 8
    dock_of(widget.native).raise_()
    close_notifications()
    widget.run()
    wait(widget)
    viewer.canvas.grid.shape = (2, 3)
    settle()
    viewer.reset_view()
    close_notifications()
    save(viewer.screenshot(canvas_only=False, flash=False), "ensemble-maps.png", width=1200)


def volume_shot(viewer) -> None:
    """A z-stack (disk / square alternating along z) blurred by a 3-D PSF, restored as one volume (analytic prior)."""
    import torch

    from napari_treg.models.analytic import AnalyticPrior
    from napari_treg.operators import VolumeBlur
    from napari_treg.plugin.restore_widget import RestoreWidget

    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")  # its own dock, alone
    r = np.arange(-3, 4)
    g = np.exp(-0.5 * (r / 1.5) ** 2)
    psf = (np.exp(-0.5 * (r / 1.0) ** 2)[:, None, None] * g[None, :, None] * g[None, None, :]).astype(np.float32)
    means = AnalyticPrior().means((32, 32)).mean(dim=1, keepdim=True)  # grey templates
    truth = torch.stack([means[k % 2] for k in range(8)]).double()
    measured = VolumeBlur(psf).forward(truth) + 0.01 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    stack = viewer.add_image(((measured[:, 0].numpy() + 1) / 2).astype(np.float32), name="z-stack (3-D blur)")
    beads = viewer.add_image(psf / psf.max(), name="PSF (beads)", colormap="magma")
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Restore (TReg)")
    widget.image.value = stack
    widget.operator.value = "kernel"
    widget.kernel.value = beads
    widget.model.value = "analytic"
    widget.steps.value = 50
    widget.noise.value = 0.01
    close_notifications()
    widget.run()
    wait(widget)
    beads.visible = False
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 2)
    viewer.dims.set_point(0, 3)
    settle()
    viewer.reset_view()
    close_notifications()
    save(viewer.screenshot(canvas_only=False, flash=False), "volume-restored.png", width=1200)


def controls_shot(viewer) -> None:
    """The volume and photon-noise controls: a z-stack in nanometres with a modelled widefield PSF (the planes
    field says "whole stack (volume)", z step and pixel size read from the layer's scale and units) and the
    Poisson-Gaussian noise model with its estimate on the layer."""
    from napari_treg.plugin.restore_widget import RestoreWidget

    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")  # its own dock, alone
    viewer.canvas.grid.enabled = False
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.full((8, 64, 64), 40.0) + 400 * (rng.random((8, 64, 64)) > 0.97))
    stack = viewer.add_image(
        (2.0 * counts + 100).astype(np.float32),
        name="z-stack (photon counts)",
        scale=(250, 65, 65),
        units="nm",
        axis_labels=("z", "y", "x"),
        colormap="magma",
    )
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Restore (TReg)")
    widget.image.value = stack
    widget.operator.value = "widefield"
    widget.noise_model.value = "poisson-gaussian"
    settle()
    viewer.reset_view()
    close_notifications()
    save(viewer.screenshot(canvas_only=False, flash=False), "volume-photon-controls.png", width=1200)


def failure_shot(viewer) -> None:
    """The default model, not downloadable here: the failure's details open, the form still usable above them."""
    from napari_treg.plugin.demo import open_demo

    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")  # the demo's two docks, as a user opens them
    viewer.canvas.grid.enabled = False
    widget = open_demo(viewer, "fluorescence_blur")
    dock_of(widget.native).raise_()
    widget.run()
    wait(widget)
    widget.status_panel.toggle_details()
    settle()
    print(f"failure, details open: the form shows {widget.scroll_area.viewport().height()} px")
    close_notifications()
    save(viewer.screenshot(canvas_only=False, flash=False), "restore-failed-details.png", width=1200)


def main(argv: list[str]) -> int:
    import napari

    from napari_treg.plugin.demo import open_demo

    viewer = napari.Viewer(title="napari-treg")
    viewer.window._qt_window.showMaximized()
    viewer.window._qt_window.resize(*WINDOW)
    shots = {"ensemble": ensemble_shot, "failure": failure_shot, "volume": volume_shot, "controls": controls_shot}
    if len(argv) == 1 and argv[0] in shots:
        shots[argv[0]](viewer)
        viewer.close()
        return 0
    widget = open_demo(viewer, "fluorescence_blur")
    settle(1.0)
    viewer.reset_view()
    close_notifications()
    save(viewer.screenshot(canvas_only=False, flash=False), "restore-widget.png", width=1200)

    # the simulate widget, on its tab
    simulate = viewer.window.dock_widgets["Simulate degradation (napari-treg)"]
    dock_of(simulate.native).raise_()
    simulate.operator.value = "sr"
    simulate.factor.value = 2
    simulate.simulate()
    settle()
    save(grab(simulate.native)[:330], "simulate-widget.png")
    viewer.layers.pop()

    # the advanced settings open: the dock scrolls, Run stays in view
    dock_of(widget.native).raise_()
    widget.advanced_frame.expand(animate=False)
    settle()
    bar = widget.scroll_area.verticalScrollBar()
    for _ in range(5):  # the scroll range grows as the box unfolds
        bar.setValue(bar.maximum())  # scrolled down to the advanced settings
        settle()
    print(f"advanced open: the settings scroll by {bar.maximum()} px")
    close_notifications()
    save(viewer.screenshot(canvas_only=False, flash=False), "restore-advanced-window.png", width=1200)
    save(grab(widget.native), "restore-advanced.png")
    widget.advanced_frame.collapse(animate=False)
    widget.scroll_area.verticalScrollBar().setValue(0)

    # a run with the analytic prior: "a disk" vs "a square" from the same 8 x 8 measurement
    viewer.layers.clear()
    measurement = shapes_measurement(viewer)
    widget.image.value = measurement
    widget.model.value = "analytic"
    widget.steps.value = 100
    widget.negative_prompt.value = ""
    widget.prompt.value = "a square"
    captured = {}

    def shoot_midway(name, args):
        event = args[0]
        if name == "step" and event.step >= event.total // 2 and event.preview is not None and "running" not in captured:
            captured["running"] = viewer.screenshot(canvas_only=False, flash=False)

    close_notifications()
    widget.relay.called.connect(shoot_midway)
    widget.run()
    wait(widget)
    widget.relay.called.disconnect(shoot_midway)
    if "running" in captured:
        save(captured["running"], "restore-running.png", width=1200)
    widget.image.value = measurement
    widget.prompt.value = "a disk"
    widget.run()
    wait(widget)
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.stride = 1
    viewer.canvas.grid.shape = (2, 2)
    viewer.layers.selection.active = viewer.layers[-1]
    settle()
    viewer.reset_view()
    close_notifications()
    save(viewer.screenshot(canvas_only=False, flash=False), "result-text-guidance.png", width=1200)
    ensemble_shot(viewer)
    volume_shot(viewer)
    controls_shot(viewer)
    failure_shot(viewer)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
