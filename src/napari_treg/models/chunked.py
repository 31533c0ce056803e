"""A prior that runs a volume's planes through the model a few planes at a time.

When a z-stack is solved as one volume, the sampler holds all ``D`` planes in one batch (the
data-consistency step needs them together), but the model must still see at most
``batch_size`` planes per call, so memory stays bounded in z. :class:`PlaneChunks` wraps a prior
and splits every call into chunks of ``batch_size`` planes. A classifier-free-guidance call
(``k`` copies of the ``D`` planes, ``k * D`` latents) is split by plane, each chunk keeping its
``k`` copies together: the model calls are exactly those of a plane-by-plane run with the same
``batch_size``, ``ceil(D / batch_size)`` per step, each of the same batch.
"""

from __future__ import annotations

import torch

from napari_treg.models.base import DiffusionPrior


class PlaneChunks(DiffusionPrior):
    """``prior`` seen through chunks of ``batch_size`` planes of a ``planes``-plane volume."""

    def __init__(self, prior: DiffusionPrior, batch_size: int, planes: int):
        self.prior = prior
        self.batch_size = int(batch_size)
        self.planes = int(planes)
        self.name = prior.name
        self.is_test_model = prior.is_test_model
        self.device = prior.device
        self.dtype = prior.dtype
        self.schedule = prior.schedule

    @property
    def size_multiple(self) -> int:
        return self.prior.size_multiple

    def latent_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        return self.prior.latent_shape(image_hw)

    def predict_noise(self, z: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        copies = len(z) // self.planes
        if copies * self.planes != len(z) or len(text) != len(z):
            return self.prior.predict_noise(z, t, text)
        z_k = z.reshape(copies, self.planes, *z.shape[1:])
        text_k = text.reshape(copies, self.planes, *text.shape[1:])
        parts = []
        for first in range(0, self.planes, self.batch_size):
            chunk = slice(first, first + self.batch_size)
            eps = self.prior.predict_noise(z_k[:, chunk].flatten(0, 1), t, text_k[:, chunk].flatten(0, 1))
            parts.append(eps.reshape(copies, -1, *eps.shape[1:]))
        return torch.cat(parts, dim=1).flatten(0, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._in_chunks(self.prior.encode, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._in_chunks(self.prior.decode, z)

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        return self._in_chunks(self.prior.embed_image, x)

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        return self.prior.embed_text(prompts)

    def release(self) -> None:
        self.prior.release()

    def _in_chunks(self, call, batch: torch.Tensor) -> torch.Tensor:
        if len(batch) <= self.batch_size:
            return call(batch)
        return torch.cat(
            [call(batch[first : first + self.batch_size]) for first in range(0, len(batch), self.batch_size)]
        )

    def __repr__(self) -> str:
        return f"PlaneChunks({self.prior!r}, batch_size={self.batch_size}, planes={self.planes})"
