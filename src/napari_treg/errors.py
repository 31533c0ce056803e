"""Exceptions raised by napari-treg; every message names the problem and the fix."""

from __future__ import annotations


class TRegError(Exception):
    """Base class of all napari-treg errors."""


class InvalidInputError(TRegError, ValueError):
    """An image, mask, kernel or parameter that cannot be used as given."""


class ModelNotFoundError(TRegError, FileNotFoundError):
    """Model weights are missing, unreachable or not a model at all."""


class DivergenceError(TRegError, RuntimeError):
    """The sampler produced NaN or inf values."""


class Cancelled(TRegError):
    """A run was cancelled by the user; nothing was returned."""


class OutOfMemoryError(TRegError, MemoryError):
    """The accelerator (or host) ran out of memory; its memory was released before raising."""
