"""One mapping from an error to what the user is told and the command line's exit status.

The command line (``cli.main``), the restore widget and the batch widget all ask
:func:`describe_failure`, so a failure reads the same everywhere: the CLI prints
:attr:`Failure.message` and exits with :attr:`Failure.exit_status`; the widgets show its
first sentence (:attr:`Failure.headline`) in their status line and the whole text a click away.

===========================================================  ==========  ===========
error                                                        kind        exit status
===========================================================  ==========  ===========
KeyboardInterrupt, :class:`~napari_treg.errors.Cancelled`      cancelled   130
:class:`~napari_treg.errors.InvalidInputError`                 input       2
:class:`~napari_treg.errors.ModelNotFoundError`                model       1
:class:`~napari_treg.errors.OutOfMemoryError`, any allocation  memory      1
failure (:func:`napari_treg.memory.is_out_of_memory`), a batch
unit's :class:`~napari_treg.errors.UnitOutOfMemory`
:class:`~napari_treg.errors.DivergenceError`                   diverged    1
any other :class:`~napari_treg.errors.TRegError`               failed      1
ValueError                                                   input       2
OSError, ImportError (a broken install)                      failed      1
anything else                                                None: a bug, not explained
===========================================================  ==========  ===========
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from napari_treg.errors import (
    Cancelled,
    DivergenceError,
    InvalidInputError,
    ModelNotFoundError,
    OutOfMemoryError,
    TRegError,
    UnitOutOfMemory,
)
from napari_treg.memory import is_out_of_memory, out_of_memory_error

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: what a sentence ends with: a full stop, then white space and a capital (or the end), outside brackets
SENTENCE_END = re.compile(r"\.(?=\s+[A-Z]|\s*$)")


@dataclass(frozen=True)
class Failure:
    """What went wrong, in the words every front end uses."""

    #: cancelled, input, model, memory, diverged or failed
    kind: str
    #: what went wrong and what to do (the command line prints it after ``error:``)
    message: str
    exit_status: int

    @property
    def headline(self) -> str:
        """The message's first sentence (for a status line)."""
        return first_sentence(self.message)


def describe_failure(error: BaseException) -> Failure | None:
    """The :class:`Failure` for ``error``, or None for an error that is not napari-treg's to explain (a bug)."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, (KeyboardInterrupt, Cancelled)):
        return Failure("cancelled", "interrupted; no output written", EXIT_INTERRUPTED)
    if isinstance(error, InvalidInputError):
        return Failure("input", text, EXIT_BAD_INPUT)
    if isinstance(error, ModelNotFoundError):
        return Failure("model", text, EXIT_FAILURE)
    if isinstance(error, (OutOfMemoryError, UnitOutOfMemory)):
        return Failure("memory", text, EXIT_FAILURE)
    if isinstance(error, DivergenceError):
        return Failure("diverged", text, EXIT_FAILURE)
    if isinstance(error, TRegError):
        return Failure("failed", text, EXIT_FAILURE)
    if isinstance(error, ValueError):
        return Failure("input", text, EXIT_BAD_INPUT)
    if isinstance(error, (OSError, ImportError)):
        return Failure("failed", text, EXIT_FAILURE)
    if isinstance(error, (MemoryError, RuntimeError)) and is_out_of_memory(error):
        return Failure("memory", str(out_of_memory_error(error)), EXIT_FAILURE)
    return None


def first_sentence(text: str) -> str:
    """The first sentence of ``text``.

    A sentence ends with a full stop followed by a capital, or with a line; a full stop inside
    brackets, as in "(CUDA out of memory. Tried ...)", ends none.
    """
    depth = 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and (char == "\n" or (char == "." and SENTENCE_END.match(text, index))):
            return text[: index + 1].strip()
    return text.strip()
