"""Noise models of a measurement: photon noise (Poisson-Gaussian), and its estimate from the image.

The public face of :mod:`napari_treg.imaging.noise`, where the implementation lives::

    from napari_treg.noise import PoissonGaussian, estimate_poisson_gaussian

``restore``, ``ensemble``, ``degrade`` and ``restore_many`` take ``noise_model=PoissonGaussian(...)``
(or ``"poisson-gaussian"``: estimated from the image); see docs/api.md. :class:`NoiseDefaults` holds the
camera values a file records (``napari_treg.io.files.read_noise_defaults``: an OME file's Detector gain
and offset), the defaults of a model asked for without them (``noise_defaults=``).
"""

from __future__ import annotations

from napari_treg.imaging.noise import NoiseDefaults, PoissonGaussian, estimate_noise, estimate_poisson_gaussian

__all__ = ["NoiseDefaults", "PoissonGaussian", "estimate_noise", "estimate_poisson_gaussian"]
