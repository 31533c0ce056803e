"""Output arguments and record files of the CLI and batch runs (napari_treg.io.outputs, napari_treg.batch.outputs).

Every output argument is checked before any work with a create-and-remove probe; record files of any
content count as "not done" rather than breaking a resume.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_treg.batch.outputs import FolderOutput, ZarrOutput, read_records
from napari_treg.batch.sources import Unit
from napari_treg.cli.commands import main
from napari_treg.io import files as io

#: root may write anywhere access() checks; /proc still refuses new files: access() says yes, the probe says no
UNWRITABLE = "/proc"
RUN = ["--operator", "gauss", "--sigma", "1", "--model", "analytic", "--device", "cpu", "--steps", "2", "-q"]


@pytest.fixture
def measurement(tmp_path) -> str:
    path = tmp_path / "in.tif"
    io.write_image(path, (np.random.default_rng(0).random((16, 16)) * 100).astype(np.uint16))
    return str(path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("napari-treg: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.skipif(not os.access(UNWRITABLE, os.W_OK), reason="needs a folder access() calls writable")
@pytest.mark.parametrize(
    ("command", "option"),
    [("restore", "-o"), ("restore", "--info"), ("degrade", "-o"), ("batch", "-o"), ("batch", "--info")],
)
def test_an_output_where_no_file_can_be_created_is_refused_before_any_work(
    command, option, measurement, tmp_path, capsys
):
    """Issue 23.10: the probe, not access(), decides; one line, exit 2, nothing computed or written."""
    outputs = {"-o": str(tmp_path / ("out" if command == "batch" else "out.tif")), "--info": None}
    outputs[option] = f"{UNWRITABLE}/out" + ("" if command == "batch" and option == "-o" else ".json")
    if option == "-o" and command != "batch":
        outputs[option] = f"{UNWRITABLE}/out.tif"
    args = [command, measurement, "-o", outputs["-o"], *RUN]
    if outputs["--info"]:
        args += ["--info", outputs["--info"]]
    if command == "degrade":
        args = [a for a in args if a not in ("--model", "analytic", "--device", "cpu", "--steps", "2")]
    assert main(args) == 2
    err = one_error_line(capsys)
    assert option in err and "not writable" in err and UNWRITABLE in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


@pytest.mark.parametrize("command", ["restore", "batch"])
def test_info_onto_a_folder_is_refused_before_any_work(command, measurement, tmp_path, capsys):
    """Issue 23.10: ``--info`` naming a folder: one line, exit 2 (was a raw [Errno 21] after the run)."""
    (tmp_path / "folder").mkdir()
    out = str(tmp_path / ("out" if command == "batch" else "out.tif"))
    assert main([command, measurement, "-o", out, *RUN, "--info", str(tmp_path / "folder")]) == 2
    assert "--info" in one_error_line(capsys) and not Path(out).exists()


def test_batch_output_that_is_a_file_is_refused(measurement, tmp_path, capsys):
    (tmp_path / "out").write_text("mine")
    assert main(["batch", measurement, "-o", str(tmp_path / "out"), *RUN]) == 2
    assert "not a folder" in one_error_line(capsys)
    assert (tmp_path / "out").read_text() == "mine"


record_bytes = st.one_of(
    st.binary(max_size=64),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=10,
    ).map(lambda value: __import__("json").dumps(value).encode()),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=record_bytes)
def test_any_record_file_content_reads_as_done_or_not_done(tmp_path, content):
    """Hypothesis: a hostile record (bytes, any JSON) never breaks a resume; it never vouches for a missing output."""
    folder = tmp_path / "records"
    folder.mkdir(exist_ok=True)
    (folder / "img.tif.treg.json").write_bytes(content)
    records = read_records(folder, ".treg.json")
    assert all(isinstance(record, dict) for record in records.values())
    unit = Unit(key="img.tif", name="img.tif", plane=0, path="img.tif")
    record = FolderOutput(str(folder)).record(unit)
    assert record is None or isinstance(record, dict)
    assert not FolderOutput(str(folder)).holds(unit, record or {})  # no output file: never done


def test_a_zarr_record_without_its_chunk_is_not_done(tmp_path):
    zarr = pytest.importorskip("zarr")
    zarr.create_array(str(tmp_path / "out.zarr"), shape=(2, 4, 4), chunks=(1, 4, 4), dtype="float32")
    output, unit = ZarrOutput(str(tmp_path / "out.zarr"), ""), Unit(key="1", name="1", plane=1, index=(1,))
    assert output.chunk_path(unit) == tmp_path / "out.zarr" / "c" / "1" / "0" / "0"
    assert not output.holds(unit, {"output_digest": "0" * 64})
    assert output.holds(unit, {"output_digest": None})  # a plane of fill values has no chunk file
