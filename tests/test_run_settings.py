"""The model and text settings classes: one place for their defaults, checked before any work."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from napari_treg import InvalidInputError, restore
from napari_treg.batch.runner import checked_settings, restore_defaults
from napari_treg.engine import Restorer, RunOptions
from napari_treg.models import load_model
from napari_treg.models.options import ModelSettings
from napari_treg.operators import GaussianBlur
from napari_treg.solver.schedules import method_config
from napari_treg.solver.text import TextSettings


def test_restore_takes_its_defaults_from_the_settings_classes():
    parameters = inspect.signature(restore).parameters
    for settings in (ModelSettings(), TextSettings()):
        for name, value in vars(settings).items():
            if name in parameters:
                assert parameters[name].default == value, name


def test_the_batch_defaults_are_restores_keywords_and_defaults():
    skip = {"image", "operator", "progress", "preview_every", "cancel", "return_info", "settings"}
    expected = {n: p.default for n, p in inspect.signature(restore).parameters.items() if n not in skip}
    assert restore_defaults() == expected


@pytest.mark.parametrize(
    "bad, named",
    [({"method": "magic"}, "method"), ({"schedule": "fast"}, "schedule"), ({"prompt": b"caf\xe9"}, "prompt")],
)
def test_bad_text_settings_fail_on_the_client_before_any_worker(bad, named):
    with pytest.raises(InvalidInputError, match=named):
        checked_settings({"model": "analytic", **bad})


def test_bad_model_settings_fail_on_the_client():
    with pytest.raises(InvalidInputError, match="dtype"):
        checked_settings({"model": "analytic", "dtype": 16})


def test_text_settings_decode_utf8_prompts():
    assert TextSettings(prompt="café".encode()).prompt == "café"


def test_restorer_takes_a_ready_run_options():
    restorer = Restorer(load_model("analytic"), method_config("data-first", {"steps": 3}))
    image = np.random.default_rng(1).random((2, 16, 16)).astype(np.float32)
    by_keywords, _ = restorer.restore(image, GaussianBlur(1.0), seed=4, batch_size=1)
    by_options, info = restorer.restore(image, GaussianBlur(1.0), options=RunOptions(seed=4, batch_size=1))
    np.testing.assert_array_equal(by_options, by_keywords)
    assert info["seed"] == 4
    with pytest.raises(InvalidInputError, match="RunOptions"):
        restorer.restore(image, GaussianBlur(1.0), options={"seed": 4})
