"""Inpainting masks in the layouts files and layers give them (issue 23.15)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.cli import commands as cli
from napari_treg.errors import InvalidInputError
from napari_treg.operators import Inpainting
from napari_treg.operators.masking import validate_mask

MASK = np.zeros((12, 10), bool)
MASK[3:6, 2:7] = True


@pytest.mark.parametrize("shaped", [MASK, MASK[None], MASK[..., None], MASK[None, ..., None], MASK[None, None]])
def test_a_mask_with_singleton_axes_is_the_same_mask(shaped):
    assert np.array_equal(validate_mask(shaped).numpy(), MASK)


@pytest.mark.parametrize("shape", [(12, 10, 2), (2, 12, 10), (12, 10, 3, 1)])
def test_masks_with_more_axes_are_refused(shape):
    with pytest.raises(InvalidInputError, match="must be 2D"):
        Inpainting(np.ones(shape, bool))


def test_cli_takes_an_h_w_1_mask_file(tmp_path):
    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((12, 10)).astype(np.float32))
    np.save(tmp_path / "mask.npy", MASK[..., None].astype(np.uint8))
    argv = ["degrade", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "inpaint"]
    assert cli.main([*argv, "--mask", str(tmp_path / "mask.npy"), "--noise", "0", "-q"]) == 0
    out = np.load(tmp_path / "o.npy")
    assert np.ptp(out[MASK]) < 1e-6 < np.ptp(out[~MASK])  # the masked pixels hold no data: one fill value
