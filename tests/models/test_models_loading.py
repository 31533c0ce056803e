"""Loading by spec (models/loading.py): the model cache per spec, device and dtype, releasing models,
the built-in specs, and the errors for unknown specs, missing paths and non-hub downloads.
"""

from __future__ import annotations

import models_helpers
import pytest
import torch

from napari_treg.errors import InvalidInputError, ModelNotFoundError
from napari_treg.models import StableDiffusionPrior, clear_model_cache, download_model, load_model

# shared fixtures (tests/models_helpers.py): binding one here registers it for this module
fresh_model_cache = models_helpers.fresh_model_cache


def test_load_model_caches_per_spec_device_and_dtype():
    first = load_model("tiny", device="cpu")
    assert isinstance(first, StableDiffusionPrior) and first.is_test_model
    assert load_model("tiny", device="cpu") is first
    assert load_model("TINY", device="cpu", dtype="float32") is first
    other = load_model("tiny", device="cpu", dtype="bfloat16")
    assert other is not first and other.dtype == torch.bfloat16
    clear_model_cache()
    assert load_model("tiny", device="cpu") is not first


def test_prior_instance_is_returned_as_is(tiny):
    assert load_model(tiny) is tiny


def test_analytic_spec_loads():
    from napari_treg.models.analytic import AnalyticPrior

    assert isinstance(load_model("analytic", device="cpu"), AnalyticPrior)


def test_download_model_refuses_non_hub_specs():
    with pytest.raises(InvalidInputError, match="hub"):
        download_model("tiny")


def test_nonexistent_paths_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        load_model(str(missing), device="cpu")
    with pytest.raises(ModelNotFoundError, match="missing_folder"):
        load_model("./missing_folder", device="cpu")


def test_unknown_spec_lists_the_choices():
    with pytest.raises(ModelNotFoundError, match="sd15"):
        load_model("whatever", device="cpu")
    with pytest.raises(InvalidInputError):
        load_model(42, device="cpu")


def test_release_model_frees_only_that_model():
    from napari_treg.models import release_model

    first = load_model("tiny", device="cpu")
    second = load_model("tiny", device="cpu", dtype="bfloat16")
    release_model(first)
    assert load_model("tiny", device="cpu", dtype="bfloat16") is second
    assert load_model("tiny", device="cpu") is not first
