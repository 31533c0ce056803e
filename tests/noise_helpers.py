"""Helpers of the photon-noise tests: a camera, its measurement, and OME-TIFFs that record its gain and offset."""

import numpy as np
import tifffile

from napari_treg.noise import PoissonGaussian

CAMERA = PoissonGaussian(gain=2.0, read_sd=3.0, offset=100.0)
NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def attributes(values: dict) -> str:
    return "".join(f' {name}="{value}"' for name, value in values.items())


def ome_xml(channels: list[dict | None], detector: dict | None = None, size: int = 64) -> str:
    """OME-XML of one image: ``channels`` DetectorSettings attributes (None: no DetectorSettings), and the
    instrument's one Detector."""
    instrument = (
        ""
        if detector is None
        else f'<Instrument ID="Instrument:0"><Detector ID="Detector:0"{attributes(detector)}/></Instrument>'
    )
    channel_xml = "".join(
        f'<Channel ID="Channel:0:{k}" SamplesPerPixel="1">'
        + ("" if settings is None else f'<DetectorSettings ID="Detector:0"{attributes(settings)}/>')
        + "</Channel>"
        for k, settings in enumerate(channels)
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{NAMESPACE}">{instrument}<Image ID="Image:0">'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="float" SizeX="{size}" SizeY="{size}" '
        f'SizeC="{len(channels)}" SizeZ="1" SizeT="1">{channel_xml}<TiffData/></Pixels></Image></OME>'
    )


def camera_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A ramp of 5 to 500 photons in ADU of CAMERA, with its photon noise (float32)."""
    clean = CAMERA.offset + CAMERA.gain * np.tile(np.linspace(5.0, 500.0, size), (size, 1))
    return CAMERA.simulate(clean, np.random.default_rng(seed)).astype(np.float32)


def write_ome(path, image: np.ndarray, channels: list[dict | None], detector: dict | None = None) -> str:
    tifffile.imwrite(path, image, description=ome_xml(channels, detector, image.shape[-1]), metadata=None)
    return str(path)
