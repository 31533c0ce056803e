"""The local cluster from any way of starting napari: worker processes, or a worker thread here when they
would run the user's script again (a script without ``if __name__ == "__main__":``)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from napari_treg.batch import cluster

GUARDED = 'import napari\n\nif __name__ == "__main__":\n    napari.run()\n'
UNGUARDED = "import napari\n\nviewer = napari.Viewer()\nnapari.run()\n"


def main_module(monkeypatch, path=None, spec=None) -> None:
    main = types.ModuleType("__main__")
    if path is not None:
        main.__file__ = str(path)
    main.__spec__ = spec
    monkeypatch.setitem(sys.modules, "__main__", main)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (UNGUARDED, "script.py"),
        (GUARDED, None),
        (GUARDED.replace('__name__ == "__main__"', "'__main__' == __name__"), None),
    ],
)
def test_a_script_run_by_path_is_unguarded_only_without_a_main_guard(monkeypatch, tmp_path, source, expected):
    script = tmp_path / "script.py"
    script.write_text(source)
    main_module(monkeypatch, script)
    assert cluster.unguarded_script() == expected


def test_python_dash_m_a_notebook_and_the_console_are_never_unguarded(monkeypatch, tmp_path):
    script = tmp_path / "__main__.py"
    script.write_text(UNGUARDED)
    main_module(monkeypatch, script, spec=types.SimpleNamespace(name="napari.__main__"))  # python -m napari
    assert cluster.unguarded_script() is None
    main_module(monkeypatch)  # a notebook or an interactive interpreter: no file
    assert cluster.unguarded_script() is None


def test_worker_processes_that_fail_to_start_give_a_thread_here_naming_why(monkeypatch):
    def fail(workers):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(cluster, "unguarded_script", lambda: None)
    monkeypatch.setattr(cluster, "process_cluster", fail)
    from distributed import Client

    with cluster.local_cluster(1) as local, Client(local, set_as_default=False) as client:
        assert not local.processes
        note = cluster.in_process_note(client)
    assert note is not None and "Nanny failed to start" in note and "scheduler address" in note


SCRIPT = """
import time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_treg.plugin.batch_widget import BatchWidget

print("script ran as", __name__, flush=True)
viewer = napari.Viewer(show=False)
layer = viewer.add_image(np.random.default_rng(0).random((2, 16, 16)).astype(np.float32), name="stack")
widget = BatchWidget(viewer)
viewer.window.add_dock_widget(widget)
widget.image.value = layer
widget.model.value = "analytic"
widget.operator.value = "denoise"
widget.steps.value = 2
widget.workers.value = 1
widget.output.value = {output!r}
start = time.perf_counter()
widget.run()
while widget.is_running and time.perf_counter() - start < 90:
    QApplication.processEvents()
    time.sleep(0.05)
print("STATUS:", widget.status.value, flush=True)
"""


def test_the_batch_dock_runs_from_a_napari_script_without_a_main_guard(tmp_path):
    """Reproduced: a worker process ran the script again (a second viewer and cluster) and every run
    ended in 'Nanny failed to start. Check the inputs and settings'."""
    pytest.importorskip("napari")
    script = tmp_path / "view_stack.py"
    script.write_text(SCRIPT.format(output=str(tmp_path / "out.zarr")))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert "script ran as __mp_main__" not in output  # no worker process ran the script again
    assert "STATUS: Done: 2 of 2 units" in output, output[-2000:]
    assert "view_stack.py" in output and "guard" in output  # the one-line note says why and what to do


def test_a_cluster_failure_in_the_batch_dock_does_not_blame_the_inputs(
    make_napari_viewer, qtbot, monkeypatch, tmp_path
):
    import numpy as np

    import napari_treg.batch as batch
    from napari_treg.plugin.batch_widget import BatchWidget

    def nanny(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(batch, "restore_many", nanny)
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((2, 16, 16), np.float32), name="stack")
    widget = BatchWidget(viewer)
    widget.image.value = layer
    widget.model.value = "analytic"
    widget.output.value = tmp_path / "out.zarr"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=30_000)
    from napari.utils.notifications import notification_manager

    said = [str(record.message) for record in notification_manager.records]
    assert "Nanny failed to start" in widget.status.value
    assert said and all("Check the inputs" not in text for text in said), said
