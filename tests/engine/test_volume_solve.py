"""Z-stacks solved as one volume (a VolumeBlur): one data step over the stack, the prior in chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_treg import InvalidInputError, restore
from napari_treg.api import ensemble
from napari_treg.engine import ensemble as engine_ensemble
from napari_treg.engine import holdout
from napari_treg.engine.restorer import Restorer, RunSettings, prepare
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.models.chunked import PlaneChunks
from napari_treg.operators import KernelBlur, VolumeBlur
from napari_treg.solver import exchange
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config

NOISE = 0.01


def gaussian_psf(sigma_z: float = 1.0, sigma_xy: float = 1.0, radius_z: int = 1, radius_xy: int = 2) -> np.ndarray:
    rz, rxy = np.arange(-radius_z, radius_z + 1), np.arange(-radius_xy, radius_xy + 1)
    gz, gxy = np.exp(-0.5 * (rz / sigma_z) ** 2), np.exp(-0.5 * (rxy / sigma_xy) ** 2)
    return gz[:, None, None] * gxy[None, :, None] * gxy[None, None, :]


def alternating_stack(planes: int = 6, size: int = 16, seed: int = 0) -> tuple[np.ndarray, VolumeBlur]:
    """Planes of class disk, square, disk, ... blurred in 3-D, with noise; ``(Z, H, W, 3)`` in model units."""
    prior = AnalyticPrior()
    means = prior.means((size, size))
    gen = torch.Generator().manual_seed(seed)
    truth = torch.stack([means[k % 2] for k in range(planes)]).double()
    truth = truth + prior.latent_std * torch.randn(
        truth.shape, generator=gen, dtype=torch.float64
    )  # drawn from the prior
    op = VolumeBlur(gaussian_psf())
    y = op.forward(truth) + NOISE * torch.randn(truth.shape, generator=gen, dtype=torch.float64)
    return np.moveaxis(y.numpy(), 1, -1).astype(np.float32), op


class CountingPrior(AnalyticPrior):
    """The analytic prior, recording the batch of every noise prediction."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def predict_noise(self, z, t, text):
        self.batches.append(len(z))
        return super().predict_noise(z, t, text)


COMMON = dict(steps=12, intensity_range=(-1.0, 1.0), noise=NOISE)


def test_a_stack_is_solved_as_one_volume_and_info_says_so():
    image, op = alternating_stack()
    before = image.copy()
    out, info = restore(image, op, model=AnalyticPrior(), batch_size=2, return_info=True, **COMMON)
    assert out.shape == image.shape and np.array_equal(image, before)
    assert info["volume"]["solved_as"] == "one volume" and info["volume"]["planes"] == 6
    assert info["residual_over_noise"] < 1.35


def test_the_volume_data_step_fits_the_3d_measurement_better_than_plane_by_plane():
    image, op = alternating_stack()
    in_focus = KernelBlur(op.psf[op.depth // 2].numpy())
    _, volume = restore(image, op, model=AnalyticPrior(), return_info=True, **COMMON)
    planes, _ = restore(image, in_focus, model=AnalyticPrior(), return_info=True, **COMMON)
    x = torch.from_numpy(np.moveaxis(planes, -1, 1)).double()
    y = torch.from_numpy(np.moveaxis(image, -1, 1)).double()
    plane_residual = float(((op.forward(x) - y) ** 2).mean().sqrt()) / NOISE  # the 3-D residual of the 2-D result
    assert volume["residual_over_noise"] < plane_residual - 0.1  # 1.24 vs 1.44 noise units (12 steps)


def test_the_prior_sees_batch_size_planes_per_call_as_plane_by_plane_does():
    image, op = alternating_stack(planes=5)
    volume, plane = CountingPrior(), CountingPrior()
    config = method_config(DEFAULT_SCHEDULE, {"steps": 6, "guidance": 2.0})  # guidance: CFG doubles each call
    Restorer(volume, config, prompt="a disk").restore(image, op, batch_size=2, intensity_range=(-1, 1))
    in_focus = KernelBlur(op.psf[op.depth // 2].numpy())
    Restorer(plane, config, prompt="a disk").restore(image, in_focus, batch_size=2, intensity_range=(-1, 1))
    assert sorted(volume.batches) == sorted(plane.batches)  # the same calls (plane by plane: batch after batch)
    assert len(volume.batches) == 6 * 3 and max(volume.batches) == 4  # steps x 3 chunks; 2 planes x (null, text)


def test_plane_chunks_give_the_same_noise_prediction_as_one_call():
    prior = AnalyticPrior()
    z = torch.randn(2 * 5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.cat([prior.embed_text([""] * 5), prior.embed_text(["a disk"] * 5)])
    whole = prior.predict_noise(z, 500, text)
    assert torch.allclose(PlaneChunks(prior, 2, 5).predict_noise(z, 500, text), whole, atol=1e-6)
    assert torch.allclose(PlaneChunks(prior, 2, 5).decode(z), prior.decode(z))


def test_plane_k_keeps_seed_plus_k():
    image, op = alternating_stack(planes=4)
    restorer = Restorer(AnalyticPrior(), method_config(DEFAULT_SCHEDULE, {"steps": 3}))
    seen = []
    sampler = restorer.sampler

    def recording(*args, generators, **kwargs):
        seen.append([g.initial_seed() for g in generators])
        return sampler(*args, generators=generators, **kwargs)

    restorer.sampler = recording
    restorer.restore(image, op, seed=40, batch_size=1, intensity_range=(-1, 1))
    assert seen == [[40, 41, 42, 43]]  # one sampler call for the whole stack


def test_results_do_not_depend_on_the_batch_size():
    image, op = alternating_stack(planes=4)
    one = restore(image, op, model=AnalyticPrior(), batch_size=1, **COMMON)
    four = restore(image, op, model=AnalyticPrior(), batch_size=4, **COMMON)
    assert np.allclose(one, four, atol=1e-5)


def test_tiles_cut_y_and_x_and_keep_z_whole():
    image, op = alternating_stack(planes=4, size=24)
    prior = CountingPrior()
    out, info = restore(image, op, model=prior, tile_size=16, tile_overlap=4, batch_size=4, return_info=True, **COMMON)
    assert out.shape == image.shape and info["tiling"]["tiles"] == 4
    assert set(prior.batches) == {2 * 4}  # every call: the 4 planes of one tile, (null, text)
    with pytest.raises(InvalidInputError, match="lateral reach"):
        restore(image, op, model=prior, tile_size=16, tile_overlap=1, **COMMON)


def test_ensemble_of_a_volume_uses_the_3d_operator_for_its_last_step_and_data_share():
    image, op = alternating_stack(planes=4)
    ens = ensemble(image, op, model=AnalyticPrior(), samples=3, batch_size=2, **COMMON)
    assert ens.mean.shape == image.shape and ens.info["settings"]["volume"]["planes"] == 4
    share = ens.data_share
    assert share.shape == image.shape
    assert not np.allclose(share[0], share[1], atol=1e-3)  # the end planes see fewer neighbours: a 3-D map
    assert ens.info["plane_exchange"]["groups"] == [3]  # the 3 samples trade planes as one batch
    # steps and 5 look-ahead calls at each of the 2 trades (steps 5 and 7 of 12), the 3 x 4 planes in chunks of 2
    assert ens.info["model_calls"] == (12 + 2 * exchange.LOOK_AHEAD_STEPS) * 6
    alone = ensemble(image, op, model=AnalyticPrior(), samples=3, batch_size=2, plane_exchange=False, **COMMON)
    assert "plane_exchange" not in alone.info
    assert alone.info["model_calls"] == 3 * 12 * 2  # samples x steps x chunks of 2 planes: as plane by plane


def test_the_samples_of_a_volume_trade_at_the_exchange_steps(monkeypatch):
    image, op = alternating_stack(planes=4)
    seen = []
    shipped = exchange.Trade.__call__

    def recording(self, step, z_t, z0, eps, predict):
        out = shipped(self, step, z_t, z0, eps, predict)
        if step.index in self.at:
            seen.append((step.index, len(z0), self.depth, self.moved[-1]))
        return out

    monkeypatch.setattr(exchange.Trade, "__call__", recording)
    ensemble(image, op, model=AnalyticPrior(), samples=3, **COMMON)
    assert [s[:3] for s in seen] == [(5, 12, 4), (7, 12, 4)]  # 3 samples x 4 planes in one batch, twice
    assert all(0 <= moved <= 12 for *_, moved in seen)


def test_an_exchanged_ensemble_is_reproducible_and_differs_from_samples_alone():
    image, op = alternating_stack(planes=4)
    before = image.copy()
    first = ensemble(image, op, model=AnalyticPrior(), samples=3, **COMMON)
    again = ensemble(image, op, model=AnalyticPrior(), samples=3, **COMMON)
    alone = ensemble(image, op, model=AnalyticPrior(), samples=3, plane_exchange=False, **COMMON)
    assert np.array_equal(image, before)
    assert np.allclose(first.samples, again.samples, atol=1e-6)
    assert not np.allclose(first.samples, alone.samples, atol=1e-3)


def test_more_samples_than_a_group_trade_in_balanced_groups():
    assert engine_ensemble.exchange_groups(16) == [16]
    assert engine_ensemble.exchange_groups(17) == [9, 8]
    assert engine_ensemble.exchange_groups(33) == [11, 11, 11]
    image, op = alternating_stack(planes=3, size=8)
    ens = ensemble(image, op, model=AnalyticPrior(), samples=exchange.MAX_GROUP + 1, steps=4, noise=NOISE)
    assert ens.info["plane_exchange"]["groups"] == [9, 8] and len(ens.samples) == 17


def test_2d_and_tiled_ensembles_do_not_exchange():
    image, op = alternating_stack(planes=4, size=24)
    tiled = ensemble(image, op, model=AnalyticPrior(), samples=2, tile_size=16, tile_overlap=4, **COMMON)
    flat = ensemble(image[0], KernelBlur(op.psf[1].numpy()), model=AnalyticPrior(), samples=2, **COMMON)
    assert "plane_exchange" not in tiled.info and "plane_exchange" not in flat.info


def test_the_held_out_check_of_a_volume_solves_the_held_out_stack_as_a_volume():
    image, op = alternating_stack(planes=4, size=24)
    run = prepare(image, op, RunSettings(noise=NOISE), (-1.0, 1.0))
    assert holdout.HoldoutCheck.plan(run, 0.1, NOISE, 0.2, 4).held_out_run().depth == 4  # not plane by plane
    ens = ensemble(image, op, model=AnalyticPrior(), samples=4, holdout=0.1, **COMMON)
    assert ens.info["holdout"]["values"] > 0 and "plane_exchange" in ens.info


@pytest.mark.parametrize(
    "image, psf, message",
    [
        (np.zeros((2, 3, 16, 16), np.float32), np.ones((1, 3, 3)), "one z-stack"),
        (np.zeros((3, 16, 16), np.float32), np.ones((5, 3, 3)), "PSF has 5 planes, more than the stack's 3"),
        (np.zeros((16, 16), np.float32), np.ones((3, 3, 3)), "PSF has 3 planes, more than the stack's 1"),
    ],
)
def test_stacks_a_volume_blur_cannot_restore_are_refused_before_any_work(image, psf, message):
    prior = CountingPrior()
    with pytest.raises(InvalidInputError, match=message):
        restore(image, VolumeBlur(psf), model=prior, **COMMON)
    assert prior.batches == []


def test_a_single_image_with_a_one_plane_psf_is_a_volume_of_one_plane():
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    out, info = restore(image, VolumeBlur(np.ones((1, 3, 3))), model=AnalyticPrior(), return_info=True, steps=3)
    assert out.shape == image.shape and info["volume"]["planes"] == 1
