"""What a run records about itself: one typed record, serialised once into ``info`` and every output.

The engine builds a :class:`RunInfo` for every restore (:meth:`Restorer.provenance
<napari_treg.engine.restorer.Restorer.provenance>`) and an :class:`EnsembleInfo` for every ensemble;
code reads their fields (``result.run_info.text_conflict.flag``). ``as_dict()`` is the one serialiser:
``Restoration.info`` and ``Ensemble.info`` are its plain JSON (keys in the order they have always had),
and every writer (``--info``, the batch records, a result layer's ``metadata["treg"]`` and the OME-TIFF
that saves it) writes that dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from napari_treg.imaging.noise import PoissonGaussian
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.conflict import TextConflict
from napari_treg.solver.noise_weights import NoiseVariance


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a result (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("napari-treg", "torch", "diffusers", "transformers", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass(frozen=True)
class Parameters:
    """What replays a run (``info["params"]``): ``restore(image, operator, **params)`` gives the same result.

    ``options`` is the run's :class:`~napari_treg.engine.restorer.RunSettings` as given (restorer.py
    imports this module, so it is not named here); ``rgb`` and ``batch_size`` are what it resolved to.
    """

    operator: str  # the operator's repr: eval it in napari_treg.operators
    prompt: str
    negative_prompt: str
    method: str
    options: Any
    rgb: bool
    batch_size: int
    intensity_range: tuple[float, float]
    config: TRegSettings

    def as_dict(self) -> dict[str, Any]:
        return {
            "operator": self.operator,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "method": self.method,
            **asdict(self.options),
            "rgb": self.rgb,
            "batch_size": self.batch_size,
            "intensity_range": list(self.intensity_range),
            **self.config.as_dict(),
        }


@dataclass(frozen=True)
class NoiseModelInfo:
    """The photon-noise model of a run (``info["noise_model"]``), in the input's units and the model's."""

    input_units: PoissonGaussian
    model_units: NoiseVariance
    source: str  # "given", or how it was estimated

    kind = "poisson-gaussian"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "input_units": self.input_units.as_dict(),
            "model_units": self.model_units.as_dict(),
            "source": self.source,
        }


@dataclass(frozen=True)
class TilingInfo:
    """How a tiled run cut the image (``info["tiling"]``): tiles and solve calls, sizes in both pixel kinds."""

    tiles: int
    calls: int
    tile_size: int  # restored pixels, as given
    tile_overlap: int
    measurement_tile: tuple[int, int]  # measurement pixels
    measurement_overlap: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "measurement_tile": list(self.measurement_tile)}


@dataclass(frozen=True)
class VolumeInfo:
    """How a stack was solved as one volume (``info["volume"]``; engine/volume.py)."""

    planes: int
    prior_planes_per_call: int
    psf_voxel_size: tuple[float, float, float] | None

    solved_as = "one volume"
    data_step = "one conjugate-gradient solve over the whole stack per data-consistency step"

    def as_dict(self) -> dict[str, Any]:
        return {
            "solved_as": self.solved_as,
            "planes": self.planes,
            "data_step": self.data_step,
            "prior_planes_per_call": self.prior_planes_per_call,
            "psf_voxel_size": self.psf_voxel_size,
        }


@dataclass(frozen=True)
class RunInfo:
    """One restore's record: every parameter that replays it, the model, versions, residual, time, checks.

    ``residual`` is ``||A x - y|| / ||y||`` in model units; ``residual_over_noise`` the RMS residual over
    the noise level (weighted per value with photon noise; None without a level). The optional parts are
    there only where the run had them. ``text_conflict`` is None only in an ensemble's ``settings``
    (its check is the ensemble's: :attr:`EnsembleInfo.text_conflict`).
    """

    params: Parameters
    model: str
    test_model: bool
    device: str
    dtype: str
    seed: int
    residual: float
    noise: float | None
    residual_over_noise: float | None
    intensity_range: tuple[float, float]
    seconds: float
    versions: dict[str, str]
    noise_model: NoiseModelInfo | None = None
    tiling: TilingInfo | None = None
    volume: VolumeInfo | None = None
    text_conflict: TextConflict | None = None

    def as_dict(self) -> dict[str, Any]:
        """``info``: plain JSON, the optional parts only where the run had them, the check last."""
        info: dict[str, Any] = {
            "params": self.params.as_dict(),
            "model": self.model,
            "test_model": self.test_model,
            "device": self.device,
            "dtype": self.dtype,
            "seed": self.seed,
            "residual": self.residual,
            "noise": self.noise,
            "residual_over_noise": self.residual_over_noise,
            "intensity_range": list(self.intensity_range),
            "seconds": self.seconds,
            "versions": dict(self.versions),
        }
        return {**info, **present(self, ("noise_model", "tiling", "volume", "text_conflict"))}


@dataclass(frozen=True)
class EnsembleInfo:
    """One ensemble's record: how its samples were drawn and ended, its checks, its mean's :class:`RunInfo`.

    ``seeds`` are each sample's first seed, ``replaced`` the method settings it ran with in place of the
    given ones (``{name: {"given", "used"}}``), ``holdout`` the held-out check's summary
    (:mod:`napari_treg.engine.holdout`), ``settings`` the record of the mean as one restore's.
    """

    samples: int
    keep_samples: bool
    seeds: list[int]
    seed_rule: str
    noise_source: str
    prior_sd_source: str
    last_step: str
    data_share_probes: int
    noise: float
    prior_sd: float
    replaced: dict[str, dict[str, Any]]
    text_influence: bool  # whether the text-free pass ran (the text_influence map)
    text_conflict: TextConflict
    model_calls: int
    seconds: float
    seconds_per_sample: float
    settings: RunInfo
    noise_model: NoiseModelInfo | None = None
    holdout: dict[str, Any] | None = None
    #: whether its steps reach those from which its spread is calibrated (napari_treg.engine.calibration)
    calibration: dict[str, Any] | None = None
    #: how the samples of a volume traded planes (napari_treg.solver.exchange), None when they did not
    plane_exchange: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """``Ensemble.info``: plain JSON, the optional parts only where the ensemble had them."""
        optional = ("noise_model", "holdout", "calibration", "plane_exchange")
        info = {f.name: json_value(getattr(self, f.name)) for f in fields(self) if f.name not in optional}
        return {**info, **present(self, optional)}

    def as_restoration(self) -> RunInfo:
        """The mean's record as a single restore's, with the ensemble's text-conflict check."""
        return replace(self.settings, text_conflict=self.text_conflict)

    def restoration_dict(self) -> dict[str, Any]:
        """:meth:`as_restoration` as JSON, with this ensemble's own record under ``"ensemble"``."""
        own = {key: value for key, value in self.as_dict().items() if key != "settings"}
        return {**self.as_restoration().as_dict(), "ensemble": own}


def present(record: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields ``names`` of ``record`` that are not None, as JSON (a sub-record by its ``as_dict``)."""
    values = ((name, getattr(record, name)) for name in names)
    return {name: json_value(value) for name, value in values if value is not None}


def json_value(value: Any) -> Any:
    """A field's JSON: a sub-record's ``as_dict()``, a copy of a dict or list, else the value."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, (dict, list)):
        return type(value)(value)
    return value
