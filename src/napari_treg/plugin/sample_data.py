"""Sample data: clean images with simulated measurements, nothing downloaded.

The photographs come from the images bundled in scikit-image's wheel; the
fluorescence images are synthetic (nuclei and filaments drawn in code), with a
pixel size in micrometres so that their geometry is not the trivial one.
Each sample returns napari layer-data tuples: the clean image (hidden, usable as
the reference) and the measurement, which overlays it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_treg.api import degrade
from napari_treg.noise import PoissonGaussian
from napari_treg.operators import GaussianBlur, Inpainting, LinearOperator, SuperResolution
from napari_treg.plugin.layers import measurement_geometry

LayerData = tuple[np.ndarray, dict, str]
PIXEL_UM = 0.1  # pixel size of the synthetic fluorescence images
#: the text each sample's measurement brings to the restore widget (prompt, negative prompt): what the
#: clean image shows, and what the degradation made of it, so a first Run shows what text guidance does
TEXT_PRESETS = {
    "fluorescence_blur": (
        "fluorescence microscopy image of cell nuclei and thin filaments, sharp, high detail",
        "blurry, out of focus, noisy, low contrast",
    ),
    "fluorescence_photons": (
        "fluorescence microscopy image of cell nuclei and thin filaments, sharp, high detail",
        "blurry, out of focus, noisy, grainy, low contrast",
    ),
    "photograph_sr": (
        "a sharp high-resolution portrait photograph of an astronaut in a white spacesuit",
        "blurry, pixelated, low resolution, jpeg artifacts",
    ),
    "photograph_inpainting": (
        "a photograph of a tabby cat's face, clean and sharp",
        "scratches, stains, damaged photo, blotches",
    ),
    "fluorescence_stack_sr": (
        "fluorescence microscopy image of cell nuclei, sharp, high resolution",
        "blurry, pixelated, low resolution, noisy",
    ),
}


def astronaut_face() -> np.ndarray:
    """A 256 x 256 RGB crop (uint8) of scikit-image's astronaut photograph (public domain, NASA)."""
    from skimage import data

    return data.astronaut()[0:256, 128:384].copy()


def synthetic_nuclei(shape: tuple[int, int] = (256, 256), seed: int = 1, depth: float | None = None) -> np.ndarray:
    """A widefield-like fluorescence image (uint16): textured nuclei and thin filaments.

    ``depth`` in [0, 1] picks a focal plane of a 3D scene: objects away from it are dimmer.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.zeros(shape)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture /= texture.std()
    count = max(4, h * w // 2500)
    for _ in range(count):
        r, c = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(8, 16), rng.uniform(6, 12)
        theta = rng.uniform(0, np.pi)
        z = rng.uniform(0, 1)
        dr, dc = rows - r, cols - c
        u = (dr * np.cos(theta) + dc * np.sin(theta)) / a
        v = (-dr * np.sin(theta) + dc * np.cos(theta)) / b
        inside = 1.0 / (1.0 + np.exp((np.sqrt(u**2 + v**2) - 1.0) * 12.0))
        brightness = rng.uniform(0.5, 1.0)
        if depth is not None:
            brightness *= np.exp(-0.5 * ((z - depth) / 0.2) ** 2)
        image += brightness * inside * (1.0 + 0.25 * texture)
    filaments = np.zeros(shape)
    for _ in range(max(2, count // 3)):
        r, c = rng.uniform(0, h), rng.uniform(0, w)
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(3 * max(h, w)):
            heading += rng.normal(0, 0.05)
            r, c = r + np.sin(heading), c + np.cos(heading)
            if 0 <= r < h and 0 <= c < w:
                filaments[int(r), int(c)] += 1.0
    image += 0.35 * np.minimum(ndimage.gaussian_filter(filaments, 0.7) * 3.0, 1.0)
    image = ndimage.gaussian_filter(image, 0.8)
    background = 0.04 + 0.02 * ndimage.gaussian_filter(rng.standard_normal(shape), 30) / 0.01
    image = np.clip(image + np.abs(background) * 0.5, 0, None)
    return (200 + 3000 * image / max(image.max(), 1e-9)).astype(np.uint16)


def scratch_mask(shape: tuple[int, int], seed: int = 3) -> np.ndarray:
    """Labels (uint8) marking scratches and blotches as missing (1)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    rows, cols = np.mgrid[0:h, 0:w]
    for _ in range(6):
        r0, c0, r1, c1 = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w)
        length = np.hypot(r1 - r0, c1 - c0)
        t = np.clip(((rows - r0) * (r1 - r0) + (cols - c0) * (c1 - c0)) / length**2, 0, 1)
        distance = np.hypot(rows - (r0 + t * (r1 - r0)), cols - (c0 + t * (c1 - c0)))
        mask |= distance < rng.uniform(1.5, 3.0)
    for _ in range(3):
        r, c, radius = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 14)
        mask |= np.hypot(rows - r, cols - c) < radius
    return mask.astype(np.uint8)


def _pair(
    clean: np.ndarray,
    operator: LinearOperator,
    settings: dict,
    name: str,
    what: str,
    *,
    rgb: bool,
    noise: float,
    scale: tuple[float, ...],
    units: str | None = None,
    colormap: str = "gray",
    sample: str | None = None,
    noise_model: PoissonGaussian | None = None,
) -> list[LayerData]:
    """The clean layer (hidden) and its measurement, overlaid; the measurement records ``sample``'s text preset
    (and its photon noise, ``noise_model``, in place of the Gaussian ``noise``)."""
    measured = degrade(clean, operator, noise=noise, seed=0, rgb=rgb, noise_model=noise_model)
    factor = operator.factor if isinstance(operator, SuperResolution) else 1
    m_scale, m_translate = measurement_geometry(scale, [0.0] * len(scale), factor)
    common = {"units": units} if units else {}
    if not rgb:
        common["colormap"] = colormap
        limits = [float(np.percentile(clean, 0.1)), float(np.percentile(clean, 99.9))]
    else:
        limits = [0.0, 255.0]
    clean_kwargs = {
        "name": f"{name} (clean)",
        "scale": scale,
        "visible": False,
        "rgb": rgb,
        "contrast_limits": limits,
        **common,
    }
    measured_kwargs = {
        "name": f"{name} ({what})",
        "scale": m_scale,
        "translate": m_translate,
        "rgb": rgb,
        "contrast_limits": limits,
        "metadata": {
            "treg_simulation": {
                "source_layer": f"{name} (clean)",
                "operator": settings,
                "operator_repr": repr(operator),
                "noise": None if noise_model is not None else noise,
                "seed": 0,
                **({} if noise_model is None else {"noise_model": noise_model.as_dict()}),
                **text_preset(sample),
            }
        },
        **common,
    }
    return [(clean, clean_kwargs, "image"), (measured, measured_kwargs, "image")]


def text_preset(sample: str | None) -> dict[str, str]:
    """``{"prompt": ..., "negative_prompt": ...}`` of a sample (empty for None)."""
    if sample is None:
        return {}
    prompt, negative = TEXT_PRESETS[sample]
    return {"prompt": prompt, "negative_prompt": negative}


def photograph_sr() -> list[LayerData]:
    """Photograph, 4x super-resolution: a 64 x 64 measurement of a 256 x 256 face."""
    settings = {"name": "sr", "factor": 4, "filter": "bicubic"}
    return _pair(
        astronaut_face(),
        SuperResolution(4),
        settings,
        "astronaut",
        "4x downsampled",
        rgb=True,
        noise=0.01,
        scale=(1.0, 1.0),
        sample="photograph_sr",
    )


def photograph_inpainting() -> list[LayerData]:
    """Photograph with scratches: the measurement, the clean image and the mask (Labels)."""
    from skimage import data

    clean = data.chelsea()[22:278, 100:356].copy()
    mask = scratch_mask(clean.shape[:2])
    settings = {"name": "inpaint", "mask": "cat scratches (mask)"}
    layers = _pair(
        clean,
        Inpainting(mask),
        settings,
        "cat",
        "scratched",
        rgb=True,
        noise=0.01,
        scale=(1.0, 1.0),
        sample="photograph_inpainting",
    )
    layers.insert(0, (mask, {"name": settings["mask"], "opacity": 0.4, "visible": False}, "labels"))
    return layers


def fluorescence_blur() -> list[LayerData]:
    """Synthetic fluorescence (256 x 256, uint16), Gaussian blur sigma 3 px with 2 % noise."""
    clean = synthetic_nuclei()
    settings = {"name": "gauss", "sigma": 3.0}
    return _pair(
        clean,
        GaussianBlur(3.0),
        settings,
        "nuclei",
        "blurred",
        rgb=False,
        noise=0.02,
        scale=(PIXEL_UM, PIXEL_UM),
        units="um",
        colormap="green",
        sample="fluorescence_blur",
    )


def fluorescence_stack_sr() -> list[LayerData]:
    """Synthetic fluorescence Z stack (5 x 128 x 128, uint16), 2x super-resolution per plane."""
    clean = np.stack([synthetic_nuclei((128, 128), seed=5, depth=z) for z in np.linspace(0.1, 0.9, 5)])
    settings = {"name": "sr", "factor": 2, "filter": "box"}
    return _pair(
        clean,
        SuperResolution(2, filter="box"),
        settings,
        "nuclei stack",
        "2x binned",
        rgb=False,
        noise=0.01,
        scale=(0.3, PIXEL_UM, PIXEL_UM),
        units="um",
        colormap="magenta",
        sample="fluorescence_stack_sr",
    )


#: the camera of the photon-limited sample (ADU): 2 ADU per photon, read noise 3 ADU, offset 100 ADU
SAMPLE_CAMERA = PoissonGaussian(gain=2.0, read_sd=3.0, offset=100.0)
#: photons of the photon-limited sample's background and brightest pixel
SAMPLE_PHOTONS = (2.0, 60.0)


def fluorescence_photons() -> list[LayerData]:
    """Photon-limited fluorescence (256 x 256, ADU): 2-60 photons, Gaussian blur 1 px, Poisson-Gaussian noise
    of :data:`SAMPLE_CAMERA` (restore it with ``noise_model="poisson-gaussian"``)."""
    nuclei = synthetic_nuclei(seed=11).astype(np.float64)
    low, high = SAMPLE_PHOTONS
    photons = low + (high - low) * (nuclei - nuclei.min()) / (nuclei.max() - nuclei.min())
    clean = (SAMPLE_CAMERA.offset + SAMPLE_CAMERA.gain * photons).astype(np.float32)
    return _pair(
        clean,
        GaussianBlur(1.0),
        {"name": "gauss", "sigma": 1.0},
        "dim nuclei",
        "photon-limited",
        rgb=False,
        noise=0.0,
        scale=(PIXEL_UM, PIXEL_UM),
        units="um",
        colormap="green",
        sample="fluorescence_photons",
        noise_model=SAMPLE_CAMERA,
    )
