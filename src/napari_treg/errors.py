"""Exceptions raised by napari-treg; every message names the problem and the fix."""

from __future__ import annotations

import threading
from typing import Callable

#: what a run accepts as its cancel signal: an Event, a callable returning True to cancel, or None
CancelSignal = threading.Event | Callable[[], bool] | None


class TRegError(Exception):
    """Base class of all napari-treg errors."""


class InvalidInputError(TRegError, ValueError):
    """An image, mask, kernel or parameter that cannot be used as given."""


class ModelNotFoundError(TRegError, FileNotFoundError):
    """Model weights are missing, unreachable or not a model at all."""


class UnknownModelError(InvalidInputError, ModelNotFoundError):
    """A model name that is no known model, hub id or path: a bad value (the CLI exits 2, as for any)."""


class DivergenceError(TRegError, RuntimeError):
    """The sampler produced NaN or inf values."""


class Cancelled(TRegError):
    """A run was cancelled by the user; nothing was returned."""


class OutOfMemoryError(TRegError, MemoryError):
    """The accelerator (or host) ran out of memory; its memory was released before raising."""


class UnitOutOfMemory(TRegError):
    """A batch unit ran out of memory on the dask worker ``worker``: the client retries it on another worker.

    Not a MemoryError subclass, so that it travels from the worker to the client intact.
    """

    def __init__(self, message: str, worker: str | None):
        super().__init__(message)
        self.worker = worker

    def __reduce__(self):  # sent from the worker to the client with its worker address
        return (type(self), (str(self), self.worker))


def cancel_checker(cancel: CancelSignal) -> Callable[[], bool]:
    """A function telling whether ``cancel`` (Event, callable or None) is set."""
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise InvalidInputError(f"cancel must be a threading.Event or a callable, got {type(cancel).__name__}")


def raise_if(is_cancelled: Callable[[], bool]) -> None:
    """Raise :class:`Cancelled` when ``is_cancelled()`` says so."""
    if is_cancelled():
        raise Cancelled("the restoration was cancelled; nothing was returned")
