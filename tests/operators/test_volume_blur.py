"""VolumeBlur: exact adjoint, scipy's reflect convolution on every axis, centring, bad PSFs; modelled PSFs."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators import KernelBlur, VolumeBlur, build_operator
from napari_treg.operators.psf import match_voxel_size, modelled_psf, psf_blur, resample_psf
from napari_treg.solver.cg import data_consistency

PSF_SHAPES = [(3, 3, 3), (5, 1, 3), (7, 5, 3), (2, 4, 5), (9, 3, 3)]  # (9, ...): wider than the stack in z


@pytest.mark.parametrize("psf_shape", PSF_SHAPES)
def test_volume_blur_is_adjoint_to_1e12(psf_shape):
    op = VolumeBlur(np.random.default_rng(0).random(psf_shape))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((6, 2, 9, 11), generator=gen, dtype=torch.float64)
    y = torch.randn((6, 2, 9, 11), generator=gen, dtype=torch.float64)
    lhs, rhs = (op.forward(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    assert op.adjoint(y).shape == x.shape


def test_adjointness_check_catches_a_wrong_volume_adjoint():
    op = VolumeBlur(np.random.default_rng(0).random((3, 3, 3)))
    x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    assert abs((op.forward(x) * y).sum() - (x * op.forward(y)).sum()) > 1e-3  # A is not its own adjoint


@pytest.mark.parametrize("psf_shape", [(3, 3, 3), (5, 1, 3), (7, 5, 3)])
def test_volume_blur_equals_scipy_reflect_convolution(psf_shape):
    rng = np.random.default_rng(2)
    psf = rng.random(psf_shape)
    x = rng.standard_normal((6, 3, 9, 11))
    y = VolumeBlur(psf).forward(torch.from_numpy(x)).numpy()
    for c in range(3):
        assert np.allclose(y[:, c], ndi.convolve(x[:, c], psf / psf.sum(), mode="reflect"), atol=1e-12)


def test_even_psf_sides_are_centred_like_kernel_blur():
    """Centre voxel (kz // 2, ky // 2, kx // 2): scipy's convolve with origin -1 on the even axes."""
    rng = np.random.default_rng(3)
    psf = rng.random((2, 4, 5))
    x = rng.standard_normal((6, 1, 9, 11))
    y = VolumeBlur(psf).forward(torch.from_numpy(x)).numpy()[:, 0]
    assert np.allclose(y, ndi.convolve(x[:, 0], psf / psf.sum(), mode="reflect", origin=(-1, -1, 0)), atol=1e-12)


def test_a_psf_of_one_plane_is_kernel_blur_per_plane():
    kernel = np.random.default_rng(4).random((3, 5))
    x = torch.randn(4, 3, 10, 12, dtype=torch.float64)
    assert torch.allclose(VolumeBlur(kernel[None]).forward(x), KernelBlur(kernel).forward(x))


def test_an_off_centre_psf_moves_light_to_the_next_plane():
    psf = np.zeros((3, 3, 3))
    psf[2, 1, 1] = 1
    x = torch.zeros(5, 1, 7, 7, dtype=torch.float64)
    x[2, 0, 3, 3] = 1
    y = VolumeBlur(psf).forward(x)
    assert abs(y[3, 0, 3, 3] - 1) < 1e-12 and abs(y.sum() - 1) < 1e-12  # float64 runs by FFT: round-off only


@pytest.mark.parametrize("psf_shape", [(3, 3, 3), (2, 4, 5), (7, 5, 3)])
def test_the_float64_fft_path_equals_the_direct_float32_convolution(psf_shape):
    """float64 runs by FFT (bounded memory), float32 by conv3d: the same operator to float32 round-off."""
    op = VolumeBlur(np.random.default_rng(6).random(psf_shape))
    x = torch.randn(7, 3, 9, 11, dtype=torch.float64)
    for apply in (op.forward, op.adjoint, op.normal):
        torch.testing.assert_close(apply(x).float(), apply(x.float()), rtol=1e-5, atol=1e-6)


def test_volume_blur_couples_planes_and_others_do_not():
    assert VolumeBlur(np.ones((3, 3, 3))).couples_planes
    assert not KernelBlur(np.ones((3, 3))).couples_planes


def test_volume_blur_keeps_dtype():
    op = VolumeBlur(np.ones((3, 3, 3)))
    for dtype in (torch.float32, torch.float64):
        assert op.forward(torch.rand(4, 3, 8, 8, dtype=dtype)).dtype == dtype


def test_volume_data_step_solves_the_whole_stack_as_one_system():
    """CG on the coupled operator converges to the dense least-squares solution over the volume."""
    rng = np.random.default_rng(5)
    op = VolumeBlur(rng.random((3, 3, 3)))
    z, h, w = 4, 6, 6
    basis = torch.eye(z * h * w, dtype=torch.float64)
    a = np.stack([op.forward(b.reshape(z, 1, h, w)).numpy().ravel() for b in basis], axis=1)
    y = torch.from_numpy(rng.standard_normal((z, 1, h, w)))
    x0 = torch.from_numpy(rng.standard_normal((z, 1, h, w)))
    lam = 0.05
    exact = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y.numpy().ravel() + lam * x0.numpy().ravel())
    solved = data_consistency(op, y, x0, lam, 200).numpy().ravel()
    assert np.allclose(solved, exact, atol=1e-8)


@pytest.mark.parametrize(
    "psf, message",
    [
        (np.full((3, 3, 3), np.nan), "NaN"),
        (np.full((3, 3, 3), np.inf), "NaN or infinite"),
        (-np.ones((3, 3, 3)), "negative"),
        (np.zeros((3, 3, 3)), "all zero"),
        (np.ones((2, 3, 3, 3)), "3D"),
        (np.ones(5), "3D"),
    ],
)
def test_bad_psfs_are_refused_in_one_line(psf, message):
    with pytest.raises(InvalidInputError, match=message):
        VolumeBlur(psf)


def test_the_psf_is_not_modified():
    psf = np.arange(27.0).reshape(3, 3, 3)
    before = psf.copy()
    VolumeBlur(psf)
    assert np.array_equal(psf, before)


def test_a_psf_taller_than_the_stack_is_refused():
    with pytest.raises(InvalidInputError, match="PSF has 5 planes, more than the stack's 3"):
        VolumeBlur(np.ones((5, 3, 3))).check_depth(3)


def test_the_kernel_operator_restores_a_3d_psf_as_a_volume():
    assert isinstance(psf_blur(np.ones((3, 3, 3))), VolumeBlur)
    assert isinstance(build_operator("kernel", kernel=np.ones((1, 3, 3))), KernelBlur)


def test_voxel_sizes_that_disagree_are_refused_naming_both():
    match_voxel_size((0.3, 0.1, 0.1), (0.3, 0.1, 0.1))
    with pytest.raises(InvalidInputError, match=r"\(0.5, 0.1, 0.1\) differs from the stack's \(0.3, 0.1, 0.1\)"):
        match_voxel_size((0.5, 0.1, 0.1), (0.3, 0.1, 0.1))


def test_resampling_a_gaussian_psf_gives_the_gaussian_at_the_new_voxel_size():
    def gaussian(voxel, radius):
        axes = [np.arange(-r, r + 1) * v for r, v in zip(radius, voxel)]
        zz, yy, xx = np.meshgrid(*axes, indexing="ij")
        g = np.exp(-0.5 * (zz**2 / 0.6**2 + (yy**2 + xx**2) / 0.2**2))
        return g / g.sum()

    fine = gaussian((0.1, 0.025, 0.025), (30, 32, 32))
    coarse = resample_psf(fine, (0.1, 0.025, 0.025), (0.3, 0.1, 0.1))
    assert coarse.shape == (21, 17, 17)
    assert np.abs(coarse - gaussian((0.3, 0.1, 0.1), (10, 8, 8))).max() < 0.02 * coarse.max()


@pytest.mark.parametrize("kind", ["widefield", "confocal"])
def test_modelled_psfs_are_centred_normalised_and_narrower_laterally(kind):
    optics = dict(na=1.2, wavelength=0.52, immersion_index=1.33, sample_index=1.33)
    psf = modelled_psf(kind, **optics, voxel_size=(0.1, 0.03, 0.03))
    assert np.isclose(psf.sum(), 1) and np.all(psf >= 0)
    centre = tuple(n // 2 for n in psf.shape)
    assert psf.argmax() == np.ravel_multi_index(centre, psf.shape)
    lateral = (psf[centre[0], centre[1]] > psf.max() / 2).sum() * 0.03
    axial = (psf[:, centre[1], centre[2]] > psf.max() / 2).sum() * 0.1
    assert axial > 1.5 * lateral  # the focus is longer than it is wide


def test_confocal_psf_is_tighter_than_widefield():
    optics = dict(na=1.2, wavelength=0.52, immersion_index=1.33, sample_index=1.33, voxel_size=(0.3, 0.1, 0.1))
    wide, confocal = modelled_psf("widefield", **optics), modelled_psf("confocal", **optics)
    assert confocal.max() > wide.max()


def test_modelled_psf_errors_name_the_parameter():
    optics = dict(wavelength=0.52, immersion_index=1.0, sample_index=1.0, voxel_size=(0.3, 0.1, 0.1))
    with pytest.raises(InvalidInputError, match="NA .* below the immersion index"):
        modelled_psf("widefield", na=1.2, **optics)
    with pytest.raises(InvalidInputError, match="widefield or confocal"):
        modelled_psf("lightsheet", na=0.8, **optics)


def test_a_missing_psf_library_is_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psfmodels(name, *args, **kwargs):
        if name == "psfmodels":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psfmodels)
    with pytest.raises(InvalidInputError, match="pip install psfmodels"):
        build_operator("widefield")
