"""``napari-treg demo``: napari with a sample loaded and the TReg widgets docked.

The restore widget starts pointed at the sample's measurement, with the operator it
was simulated with, the clean image as the reference, and the sample's prompt and
negative prompt (:data:`.sample_data.TEXT_PRESETS`). The other samples are in
File > Open Sample > napari-treg.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, Sequence

from napari_treg.errors import TRegError

SAMPLES = (
    "fluorescence_blur",
    "photograph_sr",
    "photograph_inpainting",
    "fluorescence_stack_sr",
    "fluorescence_photons",
)
#: Qt platforms that need no display server (QT_QPA_PLATFORM)
HEADLESS_PLATFORMS = ("offscreen", "minimal", "minimalegl", "vnc", "eglfs", "linuxfb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options: ``[SAMPLE] [--model MODEL] [--steps N]``."""
    parser.add_argument(
        "sample", nargs="?", choices=SAMPLES, default=SAMPLES[0], help=f"sample to open (default: {SAMPLES[0]})"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model to preselect: sd15, tiny (test model, no meaningful image), analytic, "
        "a diffusers folder or a checkpoint file",
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps to preselect")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="napari-treg demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = list(argv) if argv is not None else None
    if args and args[0] == "--":  # "napari-treg demo -- --model tiny"
        args = args[1:]
    return parser.parse_args(args)


def open_demo(viewer: Any, sample: str = SAMPLES[0], model: str | None = None, steps: int | None = None) -> Any:
    """Open ``sample`` in ``viewer`` and dock both widgets; returns the restore widget."""
    viewer.open_sample("napari-treg", sample)
    viewer.window.add_plugin_dock_widget("napari-treg", "Simulate degradation")
    _, restore = viewer.window.add_plugin_dock_widget("napari-treg", "Restore (TReg)", tabify=True)
    measurements = [layer for layer in viewer.layers if "treg_simulation" in layer.metadata]
    if measurements:
        restore.image.value = measurements[-1]
    if model is not None:
        set_model(restore, model)
    if steps is not None:
        restore.steps.value = steps
    return restore


def set_model(widget: Any, model: str) -> None:
    """Select ``model`` (a name or a path) in the restore widget."""
    from pathlib import Path

    if model in ("sd15", "tiny", "analytic"):
        widget.model.value = model
        return
    widget.model.value = "folder" if Path(model).is_dir() else "checkpoint"
    widget.model_path.value = model


def check_display(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> None:
    """Raise TRegError where Qt would abort the process: Linux with no X11 or Wayland display.

    Checked before Qt starts, since Qt's own failure kills the process without a Python error.
    """
    if not platform.startswith("linux") or environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return
    if environ.get("QT_QPA_PLATFORM", "").split(":")[0] in HEADLESS_PLATFORMS:
        return
    raise TRegError(
        "no display to open napari on (neither DISPLAY nor WAYLAND_DISPLAY is set): run the demo in a "
        "desktop session, over 'ssh -X', or under a virtual display: xvfb-run napari-treg demo"
    )


def run(args: argparse.Namespace) -> int:
    """Open napari with the demo for options parsed by :func:`add_arguments`; returns when it closes."""
    check_display()
    import napari

    viewer = napari.Viewer(title="napari-treg demo")
    open_demo(viewer, args.sample, args.model, args.steps)
    napari.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``napari-treg demo [SAMPLE] [--model MODEL] [--steps N]``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
