"""Every Python snippet of README.md and docs/user-guide.md runs, in a napari viewer with the samples open.

Stand-ins keep it offline and quick: Stable Diffusion ("sd15", the default model) is replaced by
the tiny test model, and every restoration runs 2 steps. Everything else is the real code.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/user-guide.md")
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


def test_the_docs_have_python_snippets():
    assert all(python_blocks(ROOT / doc) for doc in DOCS)


@pytest.fixture
def offline_and_quick(monkeypatch):
    """ "sd15" loads the tiny test model, and every restoration runs at most 2 steps (the widget's too).

    The steps are cut where every front end builds its engine, ``Restorer.__init__`` (the API, the
    widget through ``RestoreSettings.restorer``, an ensemble's variant); the fixture yields the steps of
    every Restorer made, so a test can check that the cut took hold.
    """
    import napari_treg.models
    from napari_treg.engine.restorer import Restorer

    load_model = napari_treg.models.load_model

    def tiny_load_model(spec="sd15", **kwargs):
        return load_model("tiny" if spec == "sd15" else spec, **{**kwargs, "device": "cpu"})

    made: list[int] = []
    init = Restorer.__init__

    def quick_init(self, prior, config=None, **kwargs):
        init(self, prior, config, **kwargs)
        self.config = dataclasses.replace(self.config, steps=min(self.config.steps, 2))
        made.append(self.config.steps)

    monkeypatch.setattr(napari_treg.models, "load_model", tiny_load_model)
    monkeypatch.setattr(Restorer, "__init__", quick_init)
    return made


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_snippet_runs(doc, make_napari_viewer, qtbot, offline_and_quick, capsys):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-treg", "fluorescence_blur")
    viewer.open_sample("napari-treg", "photograph_sr")
    namespace = {"viewer": viewer}
    for number, block in enumerate(python_blocks(ROOT / doc), 1):
        layers = len(viewer.layers)
        exec(compile(block, f"{doc} snippet {number}", "exec"), namespace)
        worker = namespace.pop("worker", None)
        if worker is not None:  # a widget run in the background: wait for it and its finished handlers
            finished = []
            worker.finished.connect(lambda: finished.append(True))
            qtbot.waitUntil(lambda: bool(finished), timeout=240_000)
            qtbot.wait(100)
        assert len(viewer.layers) > layers, f"{doc} snippet {number} added no layer"
    assert "Traceback" not in capsys.readouterr().err
    assert offline_and_quick and max(offline_and_quick) <= 2  # every engine ran the quick steps


def test_the_readme_command_line_example_runs_from_nothing(tmp_path):
    """Issue 35: the README's CLI example needed a cat.png nobody had. Its lines run in an empty folder, the
    restore with the tiny test model and 1 step appended (later options win), so it runs offline and fast."""
    import shlex
    import subprocess
    import sys

    block = re.search(
        r"^```bash\n(.*?)^```",
        (ROOT / "README.md").read_text(encoding="utf-8").split("## From the command line")[1],
        re.DOTALL | re.MULTILINE,
    ).group(1)
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    assert [shlex.split(line)[0] for line in commands] == ["python", "napari-treg", "napari-treg"]
    for line in commands:
        argv = shlex.split(line)
        argv = (
            [sys.executable, *argv[1:]] if argv[0] == "python" else [sys.executable, "-m", "napari_treg.cli", *argv[1:]]
        )
        if "restore" in argv:
            argv += ["--model", "tiny", "--steps", "1", "--device", "cpu", "-q"]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "cat_sr.png").exists()
