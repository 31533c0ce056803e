"""HeldOut: an operator followed by a mask on its measurement (the ensemble's held-out check)."""

import numpy as np
import pytest
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.imaging import layout as imaging
from napari_treg.operators import GaussianBlur, Inpainting, SuperResolution
from napari_treg.operators.heldout import HeldOut


def wrapped(image_hw=(12, 12)):
    rng = np.random.default_rng(0)
    missing = rng.random(image_hw) < 0.3
    for inner in (GaussianBlur(1.2), SuperResolution(2, "box"), Inpainting(missing)):
        hidden = rng.random(inner.measurement_hw(image_hw)) < 0.2
        yield HeldOut(inner, hidden)


@pytest.mark.parametrize("op", list(wrapped()), ids=repr)
def test_held_out_is_adjoint_and_never_sees_the_hidden_values(op):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((2, 3, 12, 12), generator=gen, dtype=torch.float64)
    y = torch.randn((2, 3, *op.hidden.shape), generator=gen, dtype=torch.float64)
    assert torch.allclose((op.forward(x) * y).sum(), (x * op.adjoint(y)).sum(), rtol=1e-10)
    assert op.forward(x)[..., torch.from_numpy(op.hidden)].abs().max() == 0
    changed = y.clone()
    changed[..., torch.from_numpy(op.hidden)] += 100.0
    assert torch.equal(op.adjoint(changed), op.adjoint(y))  # the data step gets nothing from a held-out value
    assert torch.equal(op.measured(changed), op.measured(y))


def test_padding_mirrors_the_map_as_the_engine_mirrors_the_measurement():
    hidden = np.zeros((6, 6), bool)
    hidden[5, 4] = True
    op = HeldOut(SuperResolution(2), hidden)
    padded = op.padded(4, 2)  # image pixels: two and one measurement rows / columns
    y = torch.arange(36.0).reshape(1, 1, 6, 6)
    y_padded = imaging.mirror_pad(y, 2, 1)
    assert padded.hidden.shape == (8, 7)
    # every copy of the held-out value in the padded measurement is held out too
    assert set(y_padded[0, 0][torch.from_numpy(padded.hidden)].tolist()) == {float(y[0, 0, 5, 4])}
    assert padded.held_out == int((y_padded == y[0, 0, 5, 4]).sum())


def test_a_map_of_the_wrong_size_is_refused():
    with pytest.raises(InvalidInputError, match="held-out map"):
        HeldOut(GaussianBlur(1.0), np.zeros((4, 4), bool)).check_image_hw((8, 8))
    with pytest.raises(InvalidInputError, match="2D"):
        HeldOut(GaussianBlur(1.0), np.zeros((4,), bool))
