"""``batch --samples``: every map file and map store planned before any work, with ``restore --samples``'s rules
(issue 33): a map that is an input, a user's own store, or another unit's output is refused by name (exit 2)
and nothing is written; bad ensemble settings are refused before any cluster starts.

No cluster is started here: every refusal comes first (``connect`` fails the test if it is called).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")

from napari_treg import InvalidInputError, io  # noqa: E402
from napari_treg.batch import outputs, runner  # noqa: E402
from napari_treg.batch.sources import open_source  # noqa: E402
from napari_treg.cli.commands import main  # noqa: E402

STACK = (np.random.default_rng(0).random((2, 16, 16)) * 1000).astype(np.uint16)
OPTIONS = [
    "--operator",
    "gauss",
    "--sigma",
    "1",
    "--model",
    "analytic",
    "--device",
    "cpu",
    "--steps",
    "3",
    "--samples",
    "2",
    "--workers",
    "1",
    "-q",
]


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    monkeypatch.setattr(runner, "connect", lambda *a, **k: pytest.fail("a cluster was started"))


def zarr_stack(path: Path, stack: np.ndarray = STACK) -> Path:
    array = zarr.create_array(str(path), shape=stack.shape, chunks=(1, *stack.shape[1:]), dtype=stack.dtype)
    array[:] = stack
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, *argv) -> str:
    assert main(["batch", *map(os.fspath, argv), *OPTIONS]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_a_map_store_that_is_the_input_is_refused_and_nothing_is_written(tmp_path, capsys):
    source = zarr_stack(tmp_path / "a.std.zarr")
    before = snapshot(tmp_path)
    err = refused(capsys, source, "-o", tmp_path / "a.zarr")
    assert "the std map store" in err and "is an input" in err
    assert snapshot(tmp_path) == before and not (tmp_path / "a.zarr").exists()


def test_a_users_own_store_beside_the_output_is_refused_and_kept(tmp_path, capsys):
    source = zarr_stack(tmp_path / "in.zarr")
    zarr_stack(tmp_path / "o.std.zarr", STACK.astype(np.float32))  # the user's own data, same shape
    before = snapshot(tmp_path)
    err = refused(capsys, source, "-o", tmp_path / "o.zarr")
    assert "o.std.zarr" in err and "no napari-treg batch run made it" in err
    assert snapshot(tmp_path) == before and not (tmp_path / "o.zarr").exists()


def test_a_file_that_would_be_one_units_map_and_another_units_output_is_refused(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    io.write_image(folder / "x.tif", STACK[0])
    io.write_image(folder / "x.std.tif", STACK[1])
    err = refused(capsys, folder, "-o", tmp_path / "out")
    assert "the std map of x.tif and the output of x.std.tif" in err or (
        "the output of x.std.tif and the std map of x.tif" in err
    )
    assert not (tmp_path / "out").exists()


def test_a_map_file_that_would_be_an_input_is_refused(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    io.write_image(folder / "x.tif", STACK[0])
    io.write_image(folder / "x.data_share.tif", STACK[1])
    before = snapshot(folder)
    err = refused(capsys, folder / "x.tif", "-o", folder)
    assert "is an input file" in err
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--noise", "0"], "noise must be > 0"),
        (["--noise", "1e-300"], "noise must be > 0"),
        (["--seed", str(2**63 - 2)], "seed + units * samples"),
    ],
)
def test_bad_ensemble_settings_are_refused_before_any_cluster_or_store(tmp_path, capsys, extra, message):
    source = zarr_stack(tmp_path / "in.zarr")
    err = refused(capsys, source, "-o", tmp_path / "out.zarr", *extra)
    assert message in err and "cg_lambda" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


# -- stale map stores ------------------------------------------------------------------------------------


def planned_output(tmp_path: Path, stack: np.ndarray, maps=("std", "data_share")):
    data = open_source(str(zarr_stack(tmp_path / f"in{len(stack)}.zarr", stack)))
    return outputs.ZarrOutput(str(tmp_path / "out.zarr"), "", maps), data


def test_a_stale_map_store_of_an_output_that_is_gone_is_remade(tmp_path):
    target, data = planned_output(tmp_path, np.zeros((3, 16, 16), np.float32))
    target.prepare(data, {"run": 1}, (16, 16))
    shutil.rmtree(tmp_path / "out.zarr")  # the user deleted the output, not its maps
    target, data = planned_output(tmp_path, STACK)  # now 2 planes
    target.prepare(data, {"run": 2}, (16, 16))
    for name in ("std", "data_share"):
        assert zarr.open_array(str(target.map_path(name))).shape == (2, 16, 16)


def test_a_map_store_of_another_shape_beside_a_kept_output_is_named(tmp_path):
    target, data = planned_output(tmp_path, STACK)
    target.prepare(data, {"run": 1}, (16, 16))
    marked = dict(zarr.open_array(str(target.map_path("std"))).attrs)
    shutil.rmtree(target.map_path("std"))
    zarr.create_array(str(target.map_path("std")), shape=(5, 16, 16), dtype="float32", attributes=marked)
    with pytest.raises(InvalidInputError, match=r"std map store .* holds 5x16x16 planes from another run"):
        target.prepare(data, {"run": 1}, (16, 16))
