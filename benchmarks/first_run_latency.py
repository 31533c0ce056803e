"""First-run latency of the restore dock: from opening the dock to the first sampling step, in a fresh process.

Each measurement is a new Python process (nothing imported but napari) that opens a napari window,
adds an image and opens the "Restore (TReg)" dock (the clock starts there), waits ``--delay``
seconds as a user setting the form would (Qt events processed meanwhile), presses Run with the
tiny model (2 steps, CPU) and stops the clock at the first step. It prints the status lines the
dock showed before that step, with the time each arrived.

    xvfb-run -a python benchmarks/first_run_latency.py [--delay 0 10] [--src SRC_DIR ...] [--repeat 1]

``--src`` puts another source tree first on the path (e.g. an older checkout's ``src`` for a
before/after comparison). Prints one JSON object. On a shared machine other jobs disturb the
numbers: rerun and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(delay: float) -> dict:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="y")
    QApplication.processEvents()
    start = time.perf_counter()
    from napari_treg.plugin.restore_widget import RestoreWidget

    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Restore (TReg)")
    dock_s = time.perf_counter() - start
    widget.model.value, widget.device.value, widget.steps.value, widget.preview.value = "tiny", "cpu", 2, False
    while time.perf_counter() - start < delay:
        QApplication.processEvents()
        time.sleep(0.02)
    seen: list[tuple[float, str]] = []
    first_step: list[float] = []

    def record(kind: str, args: tuple) -> None:
        if kind == "status":
            seen.append((round(time.perf_counter() - start, 1), args[0]))
        elif kind == "step" and not first_step:
            first_step.append(time.perf_counter() - start)

    widget.relay.called.connect(record)
    pressed = time.perf_counter() - start
    widget.run()
    while not first_step and widget.is_running:
        QApplication.processEvents()
        time.sleep(0.01)
    while widget.is_running:
        QApplication.processEvents()
        time.sleep(0.01)
    return {
        "delay_s": delay,
        "dock_open_s": round(dock_s, 2),
        "run_pressed_s": round(pressed, 2),
        "first_step_s": round(first_step[0], 2) if first_step else None,
        "run_to_first_step_s": round(first_step[0] - pressed, 2) if first_step else None,
        "statuses": seen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--src", nargs="+", default=[os.path.join(os.path.dirname(__file__), "..", "src")])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    results = []
    for src in args.src:
        for delay in args.delay:
            for _ in range(args.repeat):
                env = {**os.environ, "PYTHONPATH": os.path.abspath(src), "HF_HUB_OFFLINE": "1"}
                done = subprocess.run(
                    [sys.executable, __file__, "--child", str(delay)], env=env, capture_output=True, text=True
                )
                line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
                results.append({"src": os.path.abspath(src), **json.loads(line)})
    print(json.dumps({"load_average": os.getloadavg(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
