"""The plugin's Qt-free logic: operators from widget values, planes, geometry, provenance, the run."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.engine.restore_settings import RestoreSettings
from napari_treg.errors import Cancelled, InvalidInputError, ModelNotFoundError
from napari_treg.imaging.metrics import ground_truth_metrics
from napari_treg.models.options import ModelSettings
from napari_treg.operators import GaussianBlur, SuperResolution
from napari_treg.plugin.choices import model_spec
from napari_treg.plugin.layers import (
    CURRENT_PLANE,
    WHOLE_STACK,
    Planes,
    current_plane_index,
    linear_part,
    mask_for_planes,
    measurement_geometry,
    percentile_limits,
    place_plane,
    reference_for,
    restore_metadata,
    restored_geometry,
    result_name,
    select_planes,
)
from napari_treg.plugin.messages import explain_error
from napari_treg.plugin.restoration import ModelHolder, RestoreRequest, run_request


def test_widget_operators_and_parameters_come_from_the_registry():
    from napari_treg.operators.registry import OPERATORS, operator_parameters
    from napari_treg.plugin.forms import visible_parameters

    for name, spec in OPERATORS.items():
        shown = {param for param, visible in visible_parameters(name).items() if visible}
        assert shown == {param.name for param in spec.parameters}
        assert set(visible_parameters(name)) == set(operator_parameters())
    assert visible_parameters("motion_blur") == visible_parameters("motion")  # aliases resolve
    assert SuperResolution(3).upscale == 3 and GaussianBlur(1.0).upscale == 1


def test_model_spec():
    assert model_spec("tiny") == "tiny"
    assert model_spec("sd15", "/ignored") == "sd15"
    assert model_spec("folder", "/models/sd15") == "/models/sd15"
    with pytest.raises(InvalidInputError, match="model path"):
        model_spec("checkpoint", ".")


def test_planes_of_grey_rgb_and_stacks():
    image = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    assert select_planes(image[0, 0], False, CURRENT_PLANE, ()).index == ()
    plane = select_planes(image, False, CURRENT_PLANE, (1, 2))
    np.testing.assert_array_equal(plane.data, image[1, 2])
    assert plane.description == "current plane [1, 2]"
    assert select_planes(image, False, WHOLE_STACK, (0, 0)).index is None
    rgb = np.zeros((3, 4, 5, 3), np.uint8)
    assert select_planes(rgb, True, CURRENT_PLANE, (2,)).data.shape == (4, 5, 3)
    assert current_plane_index([0.6, 9.0, 0.2, 0.3], image.shape, False) == (1, 2)
    assert current_plane_index([-3.0, 1.0, 1.0], rgb.shape, True) == (0,)
    assert place_plane(np.zeros((4, 5)), plane).shape == (1, 1, 4, 5)


def test_masks_for_planes():
    image_shape = (3, 8, 8)
    mask = np.zeros(image_shape, np.uint8)
    mask[:, 2:4, 2:4] = 1
    whole = Planes(np.zeros(image_shape), None)
    assert mask_for_planes(mask, whole, image_shape, False).shape == (8, 8)
    mask[1, 5, 5] = 2
    with pytest.raises(InvalidInputError, match="differs from plane to plane"):
        mask_for_planes(mask, whole, image_shape, False)
    assert mask_for_planes(mask, Planes(np.zeros((8, 8)), (1,)), image_shape, False)[5, 5] == 2
    with pytest.raises(InvalidInputError, match="2D Labels"):
        mask_for_planes(np.zeros((2, 8, 8)), whole, image_shape, False)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_super_resolution_geometry_keeps_pixel_centres(factor):
    scale, translate = [0.3, 0.5, 0.25], [7.0, 1.0, -2.0]
    hr_scale, hr_translate = restored_geometry(scale, translate, factor)
    assert hr_scale == pytest.approx([0.3, 0.5 / factor, 0.25 / factor])
    for axis in (1, 2):
        j = 5  # measurement pixel j is the mean of image pixels factor*j ... factor*j + factor - 1
        lr_centre = translate[axis] + scale[axis] * j
        hr_centres = hr_translate[axis] + hr_scale[axis] * (factor * j + np.arange(factor))
        assert hr_centres.mean() == pytest.approx(lr_centre)
    back_scale, back_translate = measurement_geometry(hr_scale, hr_translate, factor)
    assert back_scale == pytest.approx(scale) and back_translate == pytest.approx(translate)
    _, placed = restored_geometry(scale, translate, factor, (4,))
    assert placed[0] == pytest.approx(7.0 + 4 * 0.3)


def test_rotated_layers_keep_pixel_centres():
    from napari.layers import Image

    source = Image(np.zeros((8, 8)), scale=(0.5, 0.25), translate=(3.0, -1.0), rotate=30, shear=[0.2])
    linear = linear_part(source.rotate, source.shear, 2)
    scale, translate = restored_geometry(source.scale, source.translate, 4, linear=linear)
    result = Image(np.zeros((32, 32)), scale=scale, translate=translate, rotate=source.rotate, shear=source.shear)
    j = np.array([5.0, 2.0])  # measurement pixel j is the mean of result pixels 4j ... 4j + 3
    centres = np.array([result.data_to_world(4 * j + [a, b]) for a in range(4) for b in range(4)])
    np.testing.assert_allclose(centres.mean(axis=0), source.data_to_world(j))


def test_names_are_short_and_unique_and_contrast():
    assert result_name("cells", set()) == "cells TReg"
    assert result_name("cells", {"cells TReg"}) == "cells TReg #2"
    assert result_name("cells", {"cells TReg", "cells TReg #2"}) == "cells TReg #3"
    assert percentile_limits(np.full((4, 4), 3.0)) == (3.0, pytest.approx(3.003))
    lo, hi = percentile_limits(np.linspace(0, 100, 1001))
    assert 0 < lo < 1 and 99 < hi < 100


def test_metrics_against_a_reference():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 255, (3, 32, 32))
    noisy = reference + rng.normal(0, 5, reference.shape)
    metrics = ground_truth_metrics(noisy, reference, rgb=False)
    assert 25 < metrics["psnr"] < 40 and 0 < metrics["ssim"] < 1
    assert ground_truth_metrics(reference, reference, rgb=False)["ssim"] == pytest.approx(1.0)
    rgb = rng.uniform(0, 1, (16, 16, 3))
    assert ground_truth_metrics(rgb, rgb, rgb=True)["ssim"] == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="clean image"):
        ground_truth_metrics(noisy[0], reference, rgb=False)
    planes = Planes(np.zeros((32, 32)), (1,))
    np.testing.assert_array_equal(reference_for(reference, (32, 32), planes), reference[1])


def test_metadata_is_plain_python():
    info = {"params": {"steps": np.int64(4)}, "seed": 3, "residual": np.float32(0.5), "versions": {"torch": "2"}}
    record = restore_metadata(
        input_name="cells",
        operator={"name": "gaussian_blur", "sigma": 2.0},
        settings={"model": "tiny"},
        info=info,
        planes=Planes(np.zeros((4, 4)), (2,)),
        metrics={"psnr": 30.0},
    )
    assert record["params"]["steps"] == 4 and type(record["params"]["steps"]) is int
    assert record["plane_index"] == [2] and record["metrics"] == {"psnr": 30.0}
    assert record["operator"]["name"] == "gaussian_blur" and record["input_layer"] == "cells"


def test_errors_say_what_to_do():
    assert "tiny test model" in explain_error(ModelNotFoundError("weights missing"))
    assert "current plane" in explain_error(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert explain_error(InvalidInputError("mask is 3x3")).startswith("Cannot restore: mask is 3x3")
    assert "Traceback" not in explain_error(KeyError("x"))


def _request(residual: bool = False, reference=None, **values) -> RestoreRequest:
    image = np.random.default_rng(0).uniform(0, 1, (16, 16)).astype(np.float32)
    settings = RestoreSettings.from_values({"steps": 2, "seed": 0, "prompt": "", "cg_iterations": 1, **values})
    model = ModelSettings("tiny", "cpu")
    return RestoreRequest(Planes(image, ()), GaussianBlur(1.0), model, settings, residual=residual, reference=reference)


def test_run_request_with_the_tiny_model_reuses_it():
    holder = ModelHolder()
    steps: list[tuple[int, int, bool]] = []
    outcome = run_request(
        _request(preview_every=1, residual=True),
        holder,
        lambda e: steps.append((e.step, e.total, e.preview is not None)),
    )
    assert outcome.result.shape == (16, 16) and outcome.residual.shape == (16, 16)
    assert steps == [(1, 2, True), (2, 2, True)]
    assert outcome.info["test_model"] and outcome.info["seed"] == 0
    first = holder.prior
    run_request(_request(reference=np.zeros((16, 16))), holder)
    assert holder.prior is first  # reused
    holder.release()
    assert holder.prior is None


def test_cancelled_job_raises_and_release_waits_for_the_run():
    holder = ModelHolder()
    job = _request()
    job.cancel.set()
    with pytest.raises(Cancelled):
        run_request(job, holder)
    with holder.use(ModelSettings("tiny", "cpu")) as prior:
        holder.release()  # asked during a run: deferred
        assert holder.prior is prior
    assert holder.prior is None

    cancel_at_first_step = _request()
    with pytest.raises(Cancelled):
        run_request(cancel_at_first_step, holder, lambda e: cancel_at_first_step.cancel.set())


def test_run_request_collects_the_warnings_of_the_run():
    holder = ModelHolder()
    job = _request(prompt="word " * 200)  # longer than the text encoder's 77 tokens
    outcome = run_request(job, holder)
    assert any("77 tokens" in message for message in outcome.warnings), outcome.warnings
    assert outcome.load_seconds > 0
    loaded = holder.prior
    again = run_request(job, holder)  # the same warning again: reported again, the model not reloaded
    assert any("77 tokens" in message for message in again.warnings)
    assert loaded is not None and holder.prior is loaded  # (sub-millisecond load times are no evidence either way)


def test_the_cli_prints_the_warnings_of_a_run(tmp_path):
    import subprocess
    import sys

    import tifffile

    tifffile.imwrite(tmp_path / "y.tif", np.random.default_rng(0).uniform(0, 1, (16, 16)).astype(np.float32))
    command = [
        sys.executable,
        "-m",
        "napari_treg.cli.commands",
        "restore",
        str(tmp_path / "y.tif"),
        "-o",
        str(tmp_path / "x.tif"),
        "--operator",
        "denoise",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--quiet",
        "--prompt",
        "word " * 200,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "77 tokens" in done.stderr


def test_data_consistency_line_speaks_in_noise_units():
    from napari_treg.plugin.messages import data_consistency_line

    constant = data_consistency_line({"residual": 0.0, "residual_over_noise": 65.0}, constant=True)
    assert "constant" in constant and "residual 0" not in constant and "= 0" not in constant

    assert data_consistency_line({"residual": 0.0123}) == "Data consistency ||Ax - y|| / ||y|| = 0.0123."
    line = data_consistency_line({"residual": 0.0123, "residual_over_noise": 1.04})
    assert line.endswith("1 x the noise level (about 1 = consistent).")
