"""The default schedule 'data-first' and the text-conflict warning, on the exact analytic prior (issue 20).

The data win where they decide the class (also against a prompt of the other class), the prompt
decides where they leave it open, and a prompt the data rule out is flagged in ``info["text_conflict"]``.
The schedule 'paper' keeps the paper's behaviour (the prompt overrules the same measurements).
Sizes are small (32x32, 8 seeds) where the class evidence is still decisive; the full-size numbers
are in docs/validation.md (``python benchmarks/data_first.py --write``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import napari_treg
from napari_treg.cli import commands as cli
from napari_treg.io import files as io
from napari_treg.models.analytic import AnalyticPrior, template
from napari_treg.operators import GaussianBlur, Inpainting, MotionBlur, SuperResolution
from napari_treg.solver import TRegSettings, schedule_settings, treg_sample
from napari_treg.solver.conflict import FLAG_NATS, conflict_message
from napari_treg.solver.schedules import DEFAULT_SCHEDULE

NOISE = 0.01
HW = (32, 32)
N = 8
#: at 32x32 these measurements decide the class (blur sigma 1.5 px, motion 7 px): the paper's
#: schedule still follows a prompt of the other class on them (measured: 0 / 8 and 1 / 8 kept)
DECISIVE = {"Gaussian deblur": GaussianBlur(1.5), "motion deblur": MotionBlur(7, 30)}


def config(schedule: str, **values) -> TRegSettings:
    return TRegSettings(**(schedule_settings(schedule) | values))


def decisive_case(op, schedule: str, prompt: str) -> torch.Tensor:
    """Fraction of the true class over N samples (alternating disk / square); prompt 'other' or ''."""
    prior = AnalyticPrior()
    labels = torch.arange(N) % 2
    x = torch.cat(
        [prior.sample(1, int(k), HW, torch.Generator().manual_seed(100 + i))[0] for i, k in enumerate(labels)]
    )
    y = op(x) + NOISE * torch.randn(op(x).shape, generator=torch.Generator().manual_seed(1))
    prompts = [prior.classes[(int(k) + 1) % 2] for k in labels] if prompt == "other" else [""] * N
    settings = config(schedule) if prompt == "other" else config(schedule, guidance=0.0)
    generators = [torch.Generator().manual_seed(k) for k in range(N)]
    text, null = prior.embed_text(prompts), prior.embed_text([""] * N)
    out = treg_sample(prior, y, op, HW, text=text, null=null, config=settings, generators=generators)
    return (prior.classify(out) == labels).float().mean()


def test_data_first_is_the_one_default():
    import inspect

    from napari_treg.plugin import restore_widget

    assert DEFAULT_SCHEDULE == "data-first"
    assert inspect.signature(napari_treg.restore).parameters["schedule"].default == "data-first"
    assert restore_widget.WIDGET_SCHEDULE == DEFAULT_SCHEDULE
    # 'paper' is still the paper's: TRegSettings's own defaults, data-first re-noising off
    assert schedule_settings("paper") == {k: getattr(TRegSettings(), k) for k in schedule_settings("paper")}
    assert schedule_settings("paper")["data_first"] is False


@pytest.mark.parametrize("name", list(DECISIVE))
def test_the_data_win_against_the_other_prompt_where_they_decide(name):
    assert decisive_case(DECISIVE[name], "data-first", "other") == 1.0
    # the paper's schedule, unchanged: the prompt overrules the same measurements
    assert decisive_case(DECISIVE[name], "paper", "other") <= 0.25


def test_without_text_the_data_decide():
    assert decisive_case(DECISIVE["Gaussian deblur"], "data-first", "") == 1.0


def _hiding_mask() -> np.ndarray:
    mask = np.zeros(HW, bool)
    mask[5:-5, 5:-5] = True  # hides the whole object
    return mask


AMBIGUOUS = {"SR x16": SuperResolution(16), "hidden object": Inpainting(_hiding_mask())}


def ambiguous_classes(op, prompts: list[str], settings: TRegSettings) -> torch.Tensor:
    prior = AnalyticPrior()
    x, _ = prior.sample(1, 0, HW, torch.Generator().manual_seed(5))
    y = op(x) + NOISE * torch.randn(op(x).shape, generator=torch.Generator().manual_seed(6))
    y = y.expand(len(prompts), -1, -1, -1)
    generators = [torch.Generator().manual_seed(k) for k in range(len(prompts))]
    text, null = prior.embed_text(prompts), prior.embed_text([""] * len(prompts))
    return prior.classify(treg_sample(prior, y, op, HW, text=text, null=null, config=settings, generators=generators))


@pytest.mark.parametrize("name", list(AMBIGUOUS))
def test_the_prompt_decides_where_the_data_leave_the_class_open(name):
    labels = ambiguous_classes(AMBIGUOUS[name], ["a square"] * 16, config("data-first"))
    assert (labels == 1).all()  # the measurement came from a disk


@pytest.mark.parametrize("name", list(AMBIGUOUS))
def test_without_text_both_classes_appear_where_the_data_leave_the_class_open(name):
    labels = ambiguous_classes(AMBIGUOUS[name], [""] * 32, config("data-first", guidance=0.0))
    fraction = labels.float().mean().item()
    assert abs(fraction - 0.5) < 5 * math.sqrt(0.25 / 32)  # the exact class posterior is ~1/2


# -- the text-conflict warning, through the public API ------------------------------------------


def restore_disk_run(op, prompt: str, noise: float | None = NOISE, **kwargs):
    """Restore a measured disk (model units = the prior's, intensity range (0, 1)); returns the Restoration."""
    y = napari_treg.degrade(template("disk", HW), op, noise=NOISE, seed=0)
    return napari_treg.restore(
        y, op, prompt=prompt, model="analytic", noise=noise, intensity_range=(0, 1), return_info=True, **kwargs
    )


def restore_disk(op, prompt: str, noise: float | None = NOISE, **kwargs) -> dict:
    """:func:`restore_disk_run`'s info."""
    info = restore_disk_run(op, prompt, noise, **kwargs).info
    json.dumps(info)  # plain JSON, for the provenance
    return info


@pytest.mark.parametrize("name", list(DECISIVE))
def test_a_prompt_the_data_rule_out_is_flagged(name):
    conflict = restore_disk(DECISIVE[name], "a square")["text_conflict"]
    assert conflict["flag"] and conflict["checked"] and conflict["deficit_nats"] > FLAG_NATS
    assert conflict["noise"] == NOISE and conflict["noise_source"] == "given"
    message = conflict_message({"text_conflict": conflict})
    assert message is not None and "Text conflict" in message


@pytest.mark.parametrize("name", list(DECISIVE))
def test_a_matching_prompt_is_not_flagged(name):
    conflict = restore_disk(DECISIVE[name], "a disk")["text_conflict"]
    assert conflict["checked"] and not conflict["flag"] and conflict["deficit_nats"] < 0
    assert conflict_message({"text_conflict": conflict}) is None


@pytest.mark.parametrize("name", list(AMBIGUOUS))
def test_a_prompt_on_ambiguous_data_is_not_flagged(name):
    conflict = restore_disk(AMBIGUOUS[name], "a square")["text_conflict"]
    assert conflict["checked"] and not conflict["flag"] and abs(conflict["deficit_nats"]) < FLAG_NATS


def test_the_noise_level_is_estimated_when_not_given():
    conflict = restore_disk(DECISIVE["Gaussian deblur"], "a square", noise=None)["text_conflict"]
    assert conflict["flag"] and conflict["noise_source"].startswith("estimated")
    assert 0.5 * NOISE < conflict["noise"] < 5 * NOISE


def test_runs_without_text_are_not_checked():
    conflict = restore_disk(DECISIVE["Gaussian deblur"], "")["text_conflict"]
    assert conflict == {"flag": False, "checked": False, "reason": "no prompt"}
    conflict = restore_disk(DECISIVE["Gaussian deblur"], "a square", guidance=0.0)["text_conflict"]
    assert not conflict["flag"] and not conflict["checked"]


def test_the_cli_result_line_shows_the_conflict(tmp_path, capsys):
    y = napari_treg.degrade(template("disk", HW), DECISIVE["Gaussian deblur"], noise=NOISE, seed=0)
    source = io.write_image(tmp_path / "blurred.tif", y)
    argv = ["restore", str(source), "-o", str(tmp_path / "out.tif"), "--operator", "gauss", "--sigma", "1.5"]
    argv += ["--model", "analytic", "--device", "cpu", "--noise", str(NOISE), "--prompt", "a square"]
    assert cli.main(argv) == 0
    assert "TEXT CONFLICT" in capsys.readouterr().err


def test_the_batch_report_counts_flagged_units():
    from napari_treg.batch.runner import BatchReport
    from napari_treg.batch.sources import Unit
    from napari_treg.batch.units import unit_record
    from napari_treg.cli.batch import report_summary

    flagged = restore_disk_run(DECISIVE["Gaussian deblur"], "a square").run_info
    matched = restore_disk_run(DECISIVE["Gaussian deblur"], "a disk").run_info
    report = BatchReport(output="out.zarr", units=3)
    for plane, run_info in enumerate([flagged, matched, flagged]):
        unit = Unit(key=str(plane), name=f"plane {plane}", plane=plane)
        report.records.append(unit_record(unit, run_info, "digest"))
    assert report.text_conflicts == 2
    assert report_summary(report)["text_conflicts"] == 2
