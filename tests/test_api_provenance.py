"""A result's info repeats its run exactly (napari_treg.api, operators' repr).

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from napari_treg import operators as ops
from napari_treg import restore
from napari_treg.operators import Denoising, GaussianBlur, MotionBlur, SuperResolution

os.environ.setdefault("HF_HUB_OFFLINE", "1")


QUICK = dict(steps=2, dc_every=1, dc_until=1.0, negation_steps=1)


# ------------------------------------------------------------------------------ provenance


@pytest.mark.issue6
def test_info_repeats_a_run_exactly(tiny):
    image = np.random.default_rng(8).integers(0, 255, (2, 12, 12)).astype(np.uint8)
    operator = GaussianBlur(1.2345678)
    first, info = restore(
        image,
        operator,
        model=tiny,
        prompt="cells",
        negative_prompt="blur",
        seed=11,
        batch_size=2,
        return_info=True,
        **QUICK,
    )
    json.loads(json.dumps(info))  # plain JSON: can be stored next to the result
    params = dict(info["params"])
    rebuilt = eval(params.pop("operator"), vars(ops))  # noqa: S307 - our own repr
    assert repr(rebuilt) == repr(operator)
    again = restore(image, rebuilt, model=tiny, dtype=info["dtype"], device=info["device"], **params)
    np.testing.assert_array_equal(first, again)
    assert info["model"] == tiny.name and info["test_model"] is True
    assert {"napari-treg", "torch", "diffusers", "transformers", "numpy"} <= set(info["versions"])


@pytest.mark.parametrize(
    "operator",
    [SuperResolution(3, "gaussian"), GaussianBlur(0.1 + 0.2), MotionBlur(7.25, -33.3), Denoising()],
)
@pytest.mark.issue6
def test_parametric_operators_round_trip_through_repr(operator):
    rebuilt = eval(repr(operator), vars(ops))  # noqa: S307
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    assert torch.equal(rebuilt.forward(x), operator.forward(x))
