"""An exact diffusion prior: a Gaussian mixture of template images.

The data distribution is ``x0 ~ sum_k pi_k N(m_k, s^2 I)`` over RGB images in
``[-1, 1]``, one component per class, ``m_k`` the class's template image. Its
noise prediction is known in closed form for every noise level, so the TReg
sampler can be checked against exact answers (``docs/analytic.md``).

For ``z_t = sqrt(a) x0 + sqrt(1 - a) eps`` the marginal is the mixture of
``N(sqrt(a) m_k, v_k I)`` with ``v_k = a s^2 + 1 - a``, and the MMSE noise
estimate is ``eps_hat = -sqrt(1 - a) grad log p(z_t)``
``= sqrt(1 - a) sum_k r_k(z_t) (z_t - sqrt(a) m_k) / v_k``
with responsibilities ``r_k`` (a softmax over classes, computed in log space).

The autoencoder is the identity (latent = pixels), text embeddings carry class
logits, and the image embedding is the image's centred class-similarity vector,
so adaptive negation lowers the null-text weight of the class an estimate shows.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import torch

from napari_treg.models.base import DiffusionPrior, NoiseSchedule

#: names of the classes with a template, and words of a prompt that select each
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "disk": ("disk", "disks", "disc", "discs", "circle", "circles", "dot", "dots"),
    "square": ("square", "squares"),
    "ring": ("ring", "rings", "annulus"),
    "cross": ("cross", "crosses", "plus"),
}
BACKGROUND, FOREGROUND = 0.15, 0.85
TOKENS = 4  # rows of a text embedding
PROMPT_LOGIT = 30.0  # class logit of a prompt naming the class (weight of others ~ e^-30)
IMAGE_BIAS = 0.1  # constant extra component of image embeddings (keeps them unit length)


def template(name: str, shape: Sequence[int] = (32, 32)) -> np.ndarray:
    """The mean image of class ``name``, float32 in [0, 1].

    ``shape`` is ``(H, W)``, ``(3, H, W)`` or ``(H, W, 3)``. All shapes are grey,
    centred, anti-aliased and of the same area (that of a disk of radius
    ``0.18 * min(H, W)``), so that strong down-sampling cannot tell them apart.
    """
    if name not in CLASS_WORDS:
        raise ValueError(f"unknown template {name!r}; choose one of {sorted(CLASS_WORDS)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        hw = shape
    elif len(shape) == 3 and shape[0] == 3:
        hw = shape[1:]
    elif len(shape) == 3 and shape[2] == 3:
        hw = shape[:2]
    else:
        raise ValueError(f"template shape must be (H, W), (3, H, W) or (H, W, 3), got {shape}")
    coverage = np.clip(0.5 - _signed_distance(name, hw), 0.0, 1.0)
    image = (BACKGROUND + (FOREGROUND - BACKGROUND) * coverage).astype(np.float32)
    if len(shape) == 2:
        return image
    return np.stack([image] * 3, axis=0 if shape[0] == 3 else -1)


def _signed_distance(name: str, hw: tuple[int, int]) -> np.ndarray:
    """Signed distance in pixels to the shape's edge (negative inside)."""
    h, w = hw
    dy, dx = np.meshgrid(np.arange(h) + 0.5 - h / 2, np.arange(w) + 0.5 - w / 2, indexing="ij")
    radius = 0.18 * min(h, w)
    area = math.pi * radius**2
    r = np.hypot(dx, dy)
    if name == "disk":
        return r - radius
    if name == "square":
        return np.maximum(abs(dx), abs(dy)) - math.sqrt(area) / 2
    if name == "ring":
        middle = 1.3 * radius
        return abs(r - middle) - area / (2 * math.pi * middle) / 2
    # cross: two bars of length L and thickness T with 2 L T - T^2 = area
    length = 2.4 * radius
    thick = length - math.sqrt(length**2 - area)
    bar1 = np.maximum(abs(dx) - length / 2, abs(dy) - thick / 2)
    bar2 = np.maximum(abs(dy) - length / 2, abs(dx) - thick / 2)
    return np.minimum(bar1, bar2)


def prompt_classes(prompt: str, classes: Sequence[str]) -> list[int]:
    """Indices of the classes a prompt names ("a photo of a disk" -> disk); [] if none."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    return [k for k, name in enumerate(classes) if words & set(CLASS_WORDS[name])]


class AnalyticPrior(DiffusionPrior):
    """Gaussian mixture of class templates with a closed-form noise prediction.

    Parameters
    ----------
    classes : sequence of str
        Class names (templates), equal prior weight; default disk and square.
    sigma : float
        Per-pixel standard deviation of each class around its template, in [0, 1] image units.
    image_size : int or (H, W)
        Default image size (``default_image_hw``); any other size works too, templates
        are made for the size a latent has.
    dtype : torch.dtype
        Precision the model's outputs are rounded to (float16 / bfloat16 emulate a half-precision model).
    """

    name = "analytic (exact Gaussian-mixture prior)"
    is_test_model = True

    def __init__(
        self,
        classes: Sequence[str] = ("disk", "square"),
        sigma: float = 0.1,
        image_size: int | tuple[int, int] = 32,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        unknown = [c for c in classes if c not in CLASS_WORDS]
        if unknown or not classes:
            raise ValueError(f"unknown classes {unknown}; choose from {sorted(CLASS_WORDS)}")
        self.classes = tuple(classes)
        self.sigma = float(sigma)
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.default_image_hw: tuple[int, int] = (int(hw[0]), int(hw[1]))
        self.dtype = dtype
        self.device = torch.device(device)
        self.schedule = NoiseSchedule.scaled_linear()
        self._means: dict[tuple[int, int], torch.Tensor] = {}

    # -- the distribution --------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def latent_std(self) -> float:
        """Per-pixel standard deviation of a class in latent ([-1, 1]) units."""
        return 2.0 * self.sigma

    def means(self, image_hw: tuple[int, int]) -> torch.Tensor:
        """Class means ``(K, 3, H, W)`` in [-1, 1] (cached per size)."""
        key = (int(image_hw[0]), int(image_hw[1]))
        if key not in self._means:
            stack = np.stack([template(name, (3, *key)) for name in self.classes])
            self._means[key] = (2.0 * torch.from_numpy(stack) - 1.0).to(self.device)
        return self._means[key]

    def sample(
        self,
        n: int,
        class_index: int | None = None,
        image_hw: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples ``x0`` ``(n, 3, H, W)`` in latent units, and their class indices."""
        means = self.means(image_hw or self.default_image_hw)
        if class_index is None:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        else:
            labels = torch.full((n,), class_index, dtype=torch.long)
        noise = torch.randn((n, *means.shape[1:]), generator=generator)
        return means.cpu()[labels] + self.latent_std * noise, labels

    def class_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; m_k, s^2 I)`` up to a shared constant, ``(B, K)``."""
        return self._log_gaussians(x.float(), 1.0)[0]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely class of each image ``(B, 3, H, W)`` in [-1, 1] (nearest template)."""
        return self.class_log_likelihood(x).argmax(dim=1)

    def _log_gaussians(self, z: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-class ``log N(z; sqrt(a) m_k, v I)`` (no constant), the residuals and ``v``."""
        means = self.means(tuple(z.shape[-2:])).to(z.device)
        residual = z.unsqueeze(1) - math.sqrt(a) * means.unsqueeze(0)  # (B, K, 3, H, W)
        var = a * self.latent_std**2 + (1.0 - a)
        log_p = -0.5 * residual.square().flatten(2).sum(dim=2) / var
        return log_p, residual, var

    # -- DiffusionPrior ------------------------------------------------------------------
    def latent_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        return (3, int(image_hw[0]), int(image_hw[1]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(self.dtype)

    def predict_noise(self, z: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        """The exact MMSE noise estimate for the mixture that ``text`` selects."""
        a = float(self.schedule.alphas_cumprod[int(t)])
        z = z.to(self.dtype).float()
        log_weights = self.class_log_weights(text).to(z.device)
        if log_weights.shape[0] == 1 and z.shape[0] > 1:
            log_weights = log_weights.expand(z.shape[0], -1)
        log_p, residual, var = self._log_gaussians(z, a)
        resp = torch.softmax(log_weights + log_p, dim=1)  # (B, K)
        score_term = torch.einsum("bk,bkchw->bchw", resp, residual) / var
        return (math.sqrt(1.0 - a) * score_term).to(self.dtype)

    def class_log_weights(self, text: torch.Tensor) -> torch.Tensor:
        """Log class weights ``(B, K)`` encoded in text embeddings ``(B, T, D)``."""
        logits = text.float()[..., : self.num_classes].mean(dim=1)
        return torch.log_softmax(logits, dim=1)

    @property
    def embedding_width(self) -> int:
        return self.num_classes + 1

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Rows carry class logits: ``PROMPT_LOGIT`` on each class a prompt names, else 0.

        A prompt naming no class ("", "out of focus") gives the prior mixture.
        """
        rows = torch.zeros(len(prompts), TOKENS, self.embedding_width)
        for b, prompt in enumerate(prompts):
            for k in prompt_classes(prompt, self.classes):
                rows[b, :, k] = PROMPT_LOGIT
        return rows.to(self.device, self.dtype)

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """Unit vector ``[c_k - mean(c), IMAGE_BIAS]``: ``c_k`` = cosine of ``x`` and template k
        (both about the average template)."""
        x = x.float()
        means = self.means(tuple(x.shape[-2:])).to(x.device)
        centre = means.mean(dim=0, keepdim=True)
        directions = torch.nn.functional.normalize((means - centre).flatten(1), dim=1)  # (K, d)
        cosines = torch.nn.functional.normalize((x - centre).flatten(1), dim=1) @ directions.T
        centred = cosines - cosines.mean(dim=1, keepdim=True)
        bias = torch.full_like(centred[:, :1], IMAGE_BIAS)
        return torch.nn.functional.normalize(torch.cat([centred, bias], dim=1), dim=1).to(self.dtype)

    def __repr__(self) -> str:
        return f"AnalyticPrior(classes={self.classes}, sigma={self.sigma:g}, dtype={self.dtype})"
