"""A first run's slow start: the status names each loading phase with its elapsed time, and the imports a run
needs begin in the background when the dock opens."""

from __future__ import annotations

import re
import sys

import pytest

from napari_treg.plugin import warmup

SLOW_MODULE = "import time\ntime.sleep({seconds})\n"


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    """A module whose import takes 2.5 s, importable by name; forgotten afterwards."""

    def make(name: str, seconds: float = 2.5) -> str:
        (tmp_path / f"{name}.py").write_text(SLOW_MODULE.format(seconds=seconds))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    yield make


def test_loading_shows_each_phase_with_its_elapsed_time(restore_widget, run_to_end, slow_module, monkeypatch):
    from napari_treg.models import clear_model_cache
    from napari_treg.plugin import restoration

    name = slow_module("treg_slow_import_a")
    monkeypatch.setattr(restoration, "imports_for", lambda model: (name,))
    clear_model_cache()
    restore_widget._state.holder.release()
    viewer = restore_widget.viewer
    viewer.add_image(__import__("numpy").random.default_rng(0).random((16, 16)).astype("float32"), name="y")
    restore_widget.preview.value = False
    seen: list[str] = []
    restore_widget.relay.called.connect(lambda kind, args: seen.append(args[0]) if kind == "status" else None)
    run_to_end(restore_widget)
    assert f"importing {name}" in seen
    assert any(re.fullmatch(rf"importing {name} \([12] s\)", text) for text in seen), seen
    assert "building the tiny model" in seen
    assert seen[-1] == "restoring", seen  # the clock stops with the loading: no late "(n s)" after it


def test_the_imports_start_in_the_background_once(slow_module):
    name = slow_module("treg_slow_import_b", seconds=0.5)
    thread = warmup.start_background_imports((name,))
    assert thread is not None
    assert warmup.start_background_imports((name,)) is None  # once per process
    thread.join(10)
    assert warmup.is_imported(name)


def test_a_run_waits_for_a_background_import_and_says_so(slow_module):
    name = slow_module("treg_slow_import_c", seconds=1.0)
    thread = warmup.start_background_imports((name,))
    said: list[str] = []
    warmup.import_run_modules((name,), lambda message, fraction: said.append(message))
    assert said == [f"importing {name}"] and warmup.is_imported(name)
    thread.join(10)
