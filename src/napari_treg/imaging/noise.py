"""The measurement's noise level, estimated from the measurement itself.

The text-conflict check and the ensembles need the noise sigma of ``y = A x + n``. When the
user does not give it, it is estimated robustly: the finest diagonal Haar detail of each
2x2 block, ``d = (y00 - y01 - y10 + y11) / 2``, has variance sigma^2 for white noise and is
near zero on smooth image content, so ``sigma = median(|d|) / 0.6745`` (Donoho's MAD rule,
the estimator of ``skimage.restoration.estimate_sigma`` on the finest Haar band, written out
here so that it also respects an inpainting mask: blocks with an unmeasured pixel are left out).
Textured content makes it an overestimate; that is why a given noise level always wins.

Photon-limited images have a variance that grows with the signal: :class:`PoissonGaussian` is that
model, :func:`estimate_poisson_gaussian` fits it to the image itself (the public face is
:mod:`napari_treg.noise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators import LinearOperator
from napari_treg.settings import setting, validate
from napari_treg.solver.noise_weights import NoiseVariance

#: median(|N(0, 1)|): turns the median absolute detail into a standard deviation
MAD_TO_SIGMA = 0.6744897501960817
#: the fewest complete 2x2 blocks a measurement needs for an estimate
MIN_BLOCKS = 16


def estimate_noise(planes: np.ndarray, operator: LinearOperator | None = None) -> float:
    """The noise sigma of measurement planes ``(N, C, h, w)`` (same units as the planes).

    With an ``operator``, values it does not measure (``operator.measured``) are left out.
    Raises InvalidInputError when fewer than 16 complete 2x2 blocks are measured.
    """
    y = np.asarray(planes, dtype=np.float64)
    if y.ndim != 4:
        raise InvalidInputError(f"noise estimation needs planes (N, C, h, w), got shape {y.shape}")
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    y = y[..., :h, :w]
    detail = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2
    complete = blocks_measured(operator, y)
    values = np.abs(detail[complete]) if complete is not None else np.abs(detail).ravel()
    if values.size < MIN_BLOCKS:
        raise InvalidInputError(
            f"too few measured pixels to estimate the noise level ({values.size} 2x2 blocks, at least "
            f"{MIN_BLOCKS} needed): give the noise sigma instead"
        )
    return float(np.median(values) / MAD_TO_SIGMA)


def blocks_measured(operator: LinearOperator | None, y: np.ndarray) -> np.ndarray | None:
    """A boolean map of the 2x2 blocks whose four values are all measured (None: all are)."""
    if operator is None:
        return None
    ones = torch.ones(y.shape, dtype=torch.float64)
    measured = operator.measured(ones).numpy() != 0
    if measured.all():
        return None
    return measured[..., 0::2, 0::2] & measured[..., 0::2, 1::2] & measured[..., 1::2, 0::2] & measured[..., 1::2, 1::2]


# -- photon noise: the Poisson-Gaussian model -----------------------------------------------------

#: the fewest measured 2x2 blocks the fit needs (about a 48x48 image)
MIN_FIT_BLOCKS = 512
#: blocks per intensity bin (level set) of the fit
BLOCKS_PER_BIN = 64
#: the most intensity bins
MAX_BINS = 64
#: a bin whose variance lies this many of its standard errors off the line is left out of the fit
OUTLIER_ERRORS = 4.0
#: the share of values below the offset beyond which an image is refused ("mostly below the offset")
MAX_BELOW_OFFSET = 0.5


@dataclass(frozen=True)
class PoissonGaussian:
    """Photon noise: ``var(I) = gain (I - offset) + read_sd^2``, in the input's own intensity units.

    ``gain`` is the intensity of one photon (ADU per photon; 1 for an image in photons), ``read_sd``
    the camera's read noise and ``offset`` the value of zero photons, all in the input's units.
    Creating one checks every value (InvalidInputError names it).

    Examples
    --------
    >>> from napari_treg.noise import PoissonGaussian
    >>> PoissonGaussian(gain=2.0, read_sd=3.0, offset=100.0).variance(300.0)
    409.0
    """

    gain: float = setting(
        1.0, "intensity of one photon in the input's units (ADU per photon; 1: photons)", positive=True, maximum=1e6
    )
    read_sd: float = setting(
        1.0, "read-noise standard deviation in the input's units", label="read sd", minimum=0.0, maximum=1e6
    )
    offset: float = setting(0.0, "the input's value at zero photons (camera offset, bias)", minimum=-1e9, maximum=1e9)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def floor(self) -> float:
        """The smallest variance a value is given: the read-noise floor, at least one photon's variance
        (``max(read_sd^2, gain^2)``), so that no value gets an unbounded weight."""
        return max(self.read_sd**2, self.gain**2)

    def variance(self, intensity: Any) -> Any:
        """``max(gain (I - offset) + read_sd^2, floor)`` for intensities ``I`` (a number or an array)."""
        value = np.maximum(
            self.gain * (np.asarray(intensity, dtype=np.float64) - self.offset) + self.read_sd**2, self.floor
        )
        return float(value) if np.ndim(value) == 0 else value

    def in_model_units(self, low: float, high: float) -> NoiseVariance:
        """The same variance for model values ``u``, where the input's ``low`` and ``high`` are the model's -1 and 1."""
        half = (high - low) / 2.0
        intercept = (self.gain * (low + half - self.offset) + self.read_sd**2) / half**2
        return NoiseVariance(slope=self.gain / half, intercept=intercept, floor=self.floor / half**2)

    def simulate(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A measurement (float64) of noise-free intensities ``clean``:
        ``gain Poisson((clean - offset) / gain) + offset + N(0, read_sd^2)``.

        Values below the offset get no photons; ``clean`` must be mostly at or above it.
        """
        clean = np.asarray(clean, dtype=np.float64)
        check_above_offset(clean, self.offset, "the noise-free image")
        photons = rng.poisson(np.maximum(clean - self.offset, 0.0) / self.gain)
        return self.gain * photons + self.offset + self.read_sd * rng.standard_normal(clean.shape)

    def as_dict(self) -> dict[str, float]:
        return {"gain": self.gain, "read_sd": self.read_sd, "offset": self.offset}


def check_above_offset(values: np.ndarray, offset: float, what: str = "the image") -> None:
    """Refuse values that are mostly below the offset (no photons there: wrong offset, or not camera units)."""
    below = float(np.mean(np.asarray(values) < offset)) if np.size(values) else 0.0
    if below > MAX_BELOW_OFFSET:
        raise InvalidInputError(
            f"{below:.0%} of the values of {what} are below the offset {offset:g}: give the camera's offset "
            "(the value of zero photons) in the image's own units, or use the Gaussian noise level"
        )


@dataclass(frozen=True)
class VarianceFit:
    """The line ``var = slope I + intercept`` fitted to an image, and what it was fitted on."""

    slope: float  # the gain
    intercept: float  # read_sd^2 - gain * offset
    bins: int  # intensity bins (level sets) used
    blocks: int  # 2x2 blocks used

    def model(self, offset: float | None = None) -> PoissonGaussian:
        """The :class:`PoissonGaussian` of this line. Only ``gain`` and ``read_sd^2 - gain offset`` are
        identifiable: with ``offset`` given, ``read_sd`` follows (0 where the line says less); without it,
        the offset is 0 when the intercept is positive, else where the line meets zero variance."""
        if offset is None:
            offset = 0.0 if self.intercept >= 0 else -self.intercept / self.slope
        read_var = self.intercept + self.slope * offset
        return PoissonGaussian(gain=self.slope, read_sd=math.sqrt(max(read_var, 0.0)), offset=offset)


@dataclass(frozen=True)
class NoiseDefaults:
    """Camera values recorded with an image (an OME file's Detector ``Gain`` / ``Offset``): the defaults of
    a Poisson-Gaussian model asked for without them. ``source`` says where they were read.

    ``gain`` is taken as the intensity of one photon in the image's units (ADU per photon); see
    docs/api.md for what that assumes of a file's "gain".
    """

    gain: float | None = None
    offset: float | None = None
    source: str = "metadata"

    def __post_init__(self) -> None:
        if self.gain is not None and not (math.isfinite(self.gain) and self.gain > 0):
            raise InvalidInputError(f"the recorded gain must be a finite number > 0, got {self.gain!r} ({self.source})")
        if self.offset is not None and not math.isfinite(self.offset):
            raise InvalidInputError(f"the recorded offset must be a finite number, got {self.offset!r} ({self.source})")

    def describe(self) -> str:
        """``"<source>: gain G, offset O"`` (the values it holds)."""
        values = [
            f"{name} {value:g}" for name, value in (("gain", self.gain), ("offset", self.offset)) if value is not None
        ]
        return f"{self.source}: {', '.join(values)}"


def estimate_poisson_gaussian(
    image: np.ndarray,
    offset: float | None = None,
    operator: LinearOperator | None = None,
    gain: float | None = None,
) -> PoissonGaussian:
    """The Poisson-Gaussian noise of an image, estimated from the image itself (input units).

    ``image``: (H, W), or planes ``(N, C, h, w)``; ``offset``: the camera's, when known (see
    :meth:`VarianceFit.model`); ``operator``: values it does not measure are left out; ``gain``: the
    camera's, when known (e.g. recorded in the file): then only the line's intercept is fitted. The method
    (after Foi et al. 2008, "Practical Poissonian-Gaussian noise modeling and fitting for single-image
    raw-data"): the finest diagonal Haar detail of each 2x2 block, ``(y00 - y01 - y10 + y11) / 2``, is
    pure noise on locally planar content and has the block's variance; blocks are grouped into level
    sets by their local mean (6x6 pixels; bins of equal count), each set's variance is estimated robustly (MAD), and the
    line ``var = gain I + b`` is fitted by weighted least squares with outlying sets left out.

    Raises InvalidInputError when the image is flat, has too few measured blocks, or its variance
    does not grow with intensity (then give ``gain`` and ``read_sd``, or use a Gaussian noise level).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_treg.noise import PoissonGaussian, estimate_poisson_gaussian
    >>> truth = PoissonGaussian(gain=2.0, read_sd=3.0, offset=100.0)
    >>> clean = np.tile(np.linspace(110.0, 1100.0, 256), (256, 1))
    >>> noisy = truth.simulate(clean, np.random.default_rng(0))
    >>> model = estimate_poisson_gaussian(noisy, offset=100.0)
    >>> bool(abs(model.variance(800.0) / truth.variance(800.0) - 1) < 0.15)
    True
    """
    return fit_variance_line(image, operator, gain).model(offset)


def fit_variance_line(
    image: np.ndarray, operator: LinearOperator | None = None, gain: float | None = None
) -> VarianceFit:
    """:class:`VarianceFit` of an image (see :func:`estimate_poisson_gaussian`); with ``gain``, the slope
    is that gain and only the intercept is fitted."""
    y = np.asarray(image, dtype=np.float64)
    if y.ndim == 2:
        y = y[None, None]
    if y.ndim != 4:
        raise InvalidInputError(f"noise estimation needs an (H, W) image or planes (N, C, h, w), got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise InvalidInputError("the image holds NaN or infinite values: the noise cannot be estimated from it")
    means, details = local_blocks(y, operator)
    if means.size < MIN_FIT_BLOCKS:
        raise InvalidInputError(
            f"too few homogeneous 2x2 blocks to fit the noise ({means.size}; at least {MIN_FIT_BLOCKS}, "
            "about a 48x48 image): give gain and read_sd instead"
        )
    level, variance, error = level_sets(means, details)
    if len(level) < 2 or not level[-1] - level[0] > 3 * math.sqrt(max(variance.max(), 0.0)):
        raise InvalidInputError(
            "the image is too flat to fit the noise against intensity (its local means span "
            f"{means.min():.4g} to {means.max():.4g}): give gain and read_sd instead, or use a Gaussian noise level"
        )
    slope, intercept, used = robust_line(level, variance, error, gain)
    if not slope > 0:
        raise InvalidInputError(
            f"the image's noise does not grow with intensity (fitted gain {slope:.3g}): the Poisson-Gaussian "
            "model does not fit it; give gain and read_sd, or use a Gaussian noise level"
        )
    return VarianceFit(slope=slope, intercept=intercept, bins=int(used.sum()), blocks=int(means.size))


def local_blocks(y: np.ndarray, operator: LinearOperator | None) -> tuple[np.ndarray, np.ndarray]:
    """The local mean (3x3 blocks, 6x6 pixels) and the diagonal detail of every interior measured 2x2 block."""
    from scipy.ndimage import uniform_filter

    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    y = y[..., :h, :w]
    detail = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2
    block_mean = (y[..., 0::2, 0::2] + y[..., 0::2, 1::2] + y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 4
    local = uniform_filter(block_mean, size=(1, 1, 3, 3), mode="nearest")
    keep = np.zeros(detail.shape, bool)
    keep[..., 1:-1, 1:-1] = True  # interior: the 3x3 neighbourhood lies inside the image
    complete = blocks_measured(operator, y)
    if complete is not None:  # the whole neighbourhood measured
        keep &= uniform_filter(complete.astype(np.float64), size=(1, 1, 3, 3), mode="constant") > 1 - 1e-9
    return local[keep], detail[keep]


def level_sets(means: np.ndarray, details: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per intensity bin (blocks sorted by local mean, :data:`BLOCKS_PER_BIN` or more each, at most
    :data:`MAX_BINS` bins): its mean intensity, its robust variance, and that variance's standard error
    (MAD of a normal sample: about ``1.65 var / sqrt(n)``)."""
    order = np.argsort(means, kind="stable")
    level, variance, error = [], [], []
    for part in np.array_split(order, max(1, min(MAX_BINS, means.size // BLOCKS_PER_BIN))):
        sd = float(np.median(np.abs(details[part])) / MAD_TO_SIGMA)
        level.append(float(means[part].mean()))
        variance.append(sd**2)
        error.append(1.65 * sd**2 / math.sqrt(len(part)))
    return np.array(level), np.array(variance), np.array(error)


def robust_line(
    level: np.ndarray, variance: np.ndarray, error: np.ndarray, slope: float | None = None
) -> tuple[float, float, np.ndarray]:
    """``variance = slope level + intercept`` by weighted least squares (weights 1 / error^2, the errors
    taken from the line itself after the first pass), leaving out bins more than
    :data:`OUTLIER_ERRORS` standard errors off it; returns the line and the bins used. A given
    ``slope`` is kept: only the intercept is fitted."""
    used = np.ones(level.shape, bool)
    sigma = np.maximum(error, 1e-300)
    fixed = slope
    intercept = 0.0
    for _ in range(5):
        if fixed is None:
            design = np.stack([level[used], np.ones(int(used.sum()))], axis=1) / sigma[used, None]
            (slope, intercept), *_ = np.linalg.lstsq(design, variance[used] / sigma[used], rcond=None)
        else:
            weight = 1.0 / sigma[used] ** 2
            intercept = float(np.sum(weight * (variance[used] - fixed * level[used])) / np.sum(weight))
        assert slope is not None
        predicted = np.maximum(slope * level + intercept, variance.max() * 1e-6)
        sigma = error * predicted / np.maximum(variance, 1e-300)  # the standard error at the line's variance
        inliers = np.abs(variance - predicted) <= OUTLIER_ERRORS * sigma
        if inliers.sum() < 2 or np.array_equal(inliers, used):
            break
        used = inliers
    return float(slope), float(intercept), used
