"""The model and text settings classes: one place for their defaults, checked before any work."""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Any

import numpy as np
import pytest

from napari_treg import InvalidInputError, restore
from napari_treg.batch.runner import checked_settings
from napari_treg.engine.restore_settings import RestoreSettings
from napari_treg.engine.restorer import Restorer, RunSettings
from napari_treg.models import load_model
from napari_treg.models.options import ModelSettings
from napari_treg.operators import GaussianBlur
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config
from napari_treg.solver.text import TextSettings


def test_restore_takes_its_defaults_from_the_settings_classes():
    parameters = inspect.signature(restore).parameters
    for settings in (ModelSettings(), TextSettings()):
        for name, value in vars(settings).items():
            if name in parameters:
                assert parameters[name].default == value, name


def test_a_batch_run_takes_restores_keywords_with_restores_defaults():
    skip = {"image", "operator", "progress", "preview_every", "cancel", "return_info", "settings"}
    skip.add("noise_defaults")  # what a file records: batch reads each file's own (batch.units.recorded_noise_defaults)
    defaults = {n: p.default for n, p in inspect.signature(restore).parameters.items() if n not in skip}
    model, settings, intensity_range = checked_settings(defaults)  # every keyword accepted
    assert (model, settings, intensity_range) == checked_settings({})  # and restore's defaults are the batch's
    values = {**asdict(model), **settings.as_values(), "intensity_range": intensity_range}
    for name, value in defaults.items():
        assert values[name] == value, name


def test_a_batch_run_refuses_what_it_cannot_use():
    with pytest.raises(InvalidInputError, match="preview_every"):
        checked_settings({"preview_every": 5})
    with pytest.raises(InvalidInputError, match="unknown restore setting dc_evry"):
        checked_settings({"dc_evry": 2})
    with pytest.raises(InvalidInputError, match="name or path"):
        checked_settings({"model": load_model("analytic")})


def test_restore_settings_resolve_the_named_schedule_under_the_given_values():
    paper = RestoreSettings.from_values({"schedule": "paper", "final_dc": True, "steps": 7})
    assert paper.config == method_config("paper", {"final_dc": True, "steps": 7})
    assert paper.text.schedule == "paper" and not paper.config.data_first
    assert RestoreSettings().config == method_config(DEFAULT_SCHEDULE, {})
    assert RestoreSettings.from_values({"seed": 3}).with_run(seed=9).run == RunSettings(seed=9)
    with pytest.raises(InvalidInputError, match="seed"):
        RestoreSettings().with_run(seed=-1)  # a changed run option is checked again
    with pytest.raises(InvalidInputError, match="config must be a TRegSettings"):
        RestoreSettings(config={"steps": 3})


def test_restore_settings_make_the_same_restoration_as_restore():
    values = {"prompt": "a disk", "steps": 3, "seed": 2, "schedule": "paper", "negative_prompt": "a square"}
    image = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    settings = RestoreSettings.from_values(values)
    restored, info = settings.restorer(load_model("analytic")).restore(image, GaussianBlur(1.0), options=settings.run)
    np.testing.assert_array_equal(restored, restore(image, GaussianBlur(1.0), model="analytic", **values))
    assert info["params"]["negative_prompt"] == "a square" and info["params"]["dc_every"] == 3


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
    by_options, info = restorer.restore(image, GaussianBlur(1.0), options=RunSettings(seed=4, batch_size=1))
    np.testing.assert_array_equal(by_options, by_keywords)
    assert info["seed"] == 4
    with pytest.raises(InvalidInputError, match="RunSettings"):
        restorer.restore(image, GaussianBlur(1.0), options={"seed": 4})
    with pytest.raises(InvalidInputError, match="not both"):
        restorer.restore(image, GaussianBlur(1.0), options=RunSettings(seed=4), seed=5)
    with pytest.raises(InvalidInputError, match="unknown run option sed"):
        restorer.restore(image, GaussianBlur(1.0), sed=4)


# -- the kind of a setting comes from its annotation ---------------------------------------------


def test_a_settings_kind_and_none_come_from_its_annotation():
    import dataclasses

    from napari_treg.settings import setting, specs, validate

    @dataclasses.dataclass(frozen=True)
    class Demo:
        count: int = setting(3, "a count", minimum=1)
        level: float | None = setting(None, "a level", positive=True)
        size: int | str = setting("auto", "a size", minimum=1, auto=True)

        def __post_init__(self):
            validate(self)

    kinds = {spec.name: (spec.kind, spec.optional, spec.auto) for spec in specs(Demo)}
    assert kinds == {"count": (int, False, False), "level": (float, True, False), "size": (int, False, True)}
    assert Demo(level=None).level is None and Demo(size=4).size == 4
    with pytest.raises(InvalidInputError, match="count must be a whole number"):
        Demo(count=None)
    with pytest.raises(InvalidInputError, match="level must be a number"):
        Demo(level="x")


def test_a_setting_annotated_any_is_refused():
    import dataclasses

    from napari_treg.settings import setting, specs

    @dataclasses.dataclass(frozen=True)
    class Loose:
        value: Any = setting(1, "anything")

    with pytest.raises(TypeError, match="value must be annotated with bool, int, float or str"):
        specs(Loose)


def test_every_settings_class_reads_its_kinds_from_annotations_that_match_its_defaults():
    from napari_treg.engine.ensemble import EnsembleSettings
    from napari_treg.engine.restorer import RunSettings
    from napari_treg.models.options import ModelSettings
    from napari_treg.settings import specs
    from napari_treg.solver.config import TRegSettings
    from napari_treg.solver.text import TextSettings

    for settings_class in (TRegSettings, RunSettings, TextSettings, ModelSettings, EnsembleSettings):
        for spec in specs(settings_class):
            assert spec.check(spec.default) == spec.default, (settings_class.__name__, spec.name)


def test_the_settings_classes_have_one_suffix_and_keep_their_old_names_for_one_release():
    from napari_treg.engine import EnsembleOptions, RunOptions
    from napari_treg.engine.ensemble import EnsembleSettings
    from napari_treg.solver import TRegConfig, TRegSettings

    assert TRegConfig is TRegSettings and RunOptions is RunSettings and EnsembleOptions is EnsembleSettings
    names = {cls.__name__ for cls in (TRegSettings, RunSettings, EnsembleSettings, TextSettings, ModelSettings)}
    assert all(name.endswith("Settings") for name in names | {RestoreSettings.__name__}), names
