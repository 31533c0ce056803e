"""Hostile zarr / OME-Zarr inputs of a batch run (napari_treg.batch.sources): refused up front, by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_treg import InvalidInputError  # noqa: E402
from napari_treg.batch import restore_many  # noqa: E402
from napari_treg.batch.sources import ome_image, open_source  # noqa: E402
from napari_treg.cli.commands import main  # noqa: E402
from napari_treg.operators import GaussianBlur  # noqa: E402

SETTINGS = {"model": "analytic", "device": "cpu", "steps": 2, "seed": 5}
AXES = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
GOOD = {"datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.5]}]}]}


def ome_store(path, multiscales, data=None) -> str:
    """A zarr v3 group with array "0" and the given ``multiscales`` value under ``ome``."""
    data = np.ones((2, 8, 8), np.uint16) if data is None else data
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=data.shape, chunks=(1, *data.shape[1:]), dtype=data.dtype)[:] = data
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return str(path)


@pytest.mark.parametrize(
    ("multiscales", "named"),
    [
        ([], "non-empty list of images"),
        ({"datasets": []}, "non-empty list of images"),
        ([{"axes": AXES, "datasets": []}], "'datasets'"),
        ([{"axes": AXES}], "'datasets'"),
        ([{"axes": AXES, "datasets": [{}]}], "'path'"),
        ([{"axes": AXES, "datasets": [{"path": "9"}]}], "'9'"),
        ([{"axes": "cyx", **GOOD}], "'axes'"),
        ([{"axes": [{"type": "space"}] * 3, **GOOD}], "name"),
        ([{"axes": AXES, "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale"}]}]}], "scale"),
        (
            [
                {
                    "axes": AXES,
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": ["a", 1, 1]}]}],
                }
            ],
            "scale must hold finite numbers",
        ),
        (
            [
                {
                    "axes": AXES,
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0, 1]}]}],
                }
            ],
            "scale must be > 0",
        ),
        ([{"axes": AXES[:2], **GOOD}], "one number per axis"),
    ],
)
def test_malformed_multiscales_exit_2_naming_the_metadata(tmp_path, capsys, multiscales, named):
    """Issue 23.7: no KeyError/IndexError/TypeError traceback, exit 2, before any cluster starts."""
    source = ome_store(tmp_path / "in.ome.zarr", multiscales)
    args = ["batch", source, "-o", str(tmp_path / "out.zarr"), "--operator", "gauss", "--sigma", "1", "-q"]
    assert main([*args, "--model", "analytic", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "multiscales" in err and named in err, err
    assert not (tmp_path / "out.zarr").exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(
    ["axes", "datasets", "path", "coordinateTransformations", "type", "scale", "translation", "name"]
)
hostile = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attrs=st.dictionaries(st.sampled_from(["ome", "multiscales"]), hostile, max_size=2))
def test_any_multiscales_metadata_parses_or_is_refused_by_name(attrs):
    """Hypothesis: hostile ``multiscales`` JSON either parses into a checked image or raises InvalidInputError."""
    try:
        image = ome_image(attrs, "in.ome.zarr")
    except InvalidInputError as error:
        assert "in.ome.zarr" in str(error)
        return
    assert isinstance(image.path, str) and image.path
    assert len(image.axes) >= 2 and all(isinstance(a["name"], str) for a in image.axes)
    for values in (image.scale, image.translation):
        assert values is None or (len(values) == len(image.axes) and all(np.isfinite(values)))


def test_corrupt_zarr_json_is_refused_by_name(tmp_path):
    source = ome_store(tmp_path / "in.ome.zarr", [{"axes": AXES, **GOOD}])
    (tmp_path / "in.ome.zarr" / "zarr.json").write_text("{ not json")
    with pytest.raises(InvalidInputError, match="unreadable zarr metadata"):
        open_source(source)


def test_a_nan_plane_is_refused_up_front_naming_it(tmp_path):
    """Issue 23.8: the planes with NaN are named, nothing is written (as local restore refuses the stack)."""
    stack = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    stack[1, 2, 3] = np.nan
    stack[1, 4, 4] = np.inf
    array = zarr.create_array(str(tmp_path / "in.zarr"), shape=stack.shape, chunks=(1, 8, 8), dtype="float32")
    array[:] = stack
    with pytest.raises(InvalidInputError, match=r"2 NaN or infinite pixel\(s\), in 1 plane\(s\): 1 \(2\)"):
        restore_many(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), GaussianBlur(1.0), workers=1, **SETTINGS)
    assert not (tmp_path / "out.zarr").exists()


def test_ome_zarr_output_keeps_the_input_name(tmp_path):
    """Issue 21.9: the image's name is the input's, not "/"."""
    source = ome_store(tmp_path / "in.ome.zarr", [{"axes": AXES, "name": "nuclei", **GOOD}])
    report = restore_many(source, str(tmp_path / "out.zarr"), GaussianBlur(1.0), workers=1, **SETTINGS)
    assert report.ok
    written = json.loads((tmp_path / "out.zarr" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert written["name"] == "nuclei"
