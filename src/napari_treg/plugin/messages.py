"""What the widgets say, without Qt: failures, progress and the summary of a run.

Failures come from the one error mapping every front end shares
(:func:`napari_treg.failures.describe_failure`); a widget adds only what to do in the widget.
A finished run's status lines (:class:`Note`) follow one rule: what happened, and what the user
can do about it, in plain words; the method's terms and numbers are the note's details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_treg.engine.restorer import SAMPLING
from napari_treg.failures import Failure, describe_failure, first_sentence
from napari_treg.solver.conflict import TextConflict, conflict_message, unchecked_message

if TYPE_CHECKING:
    from napari_treg.engine.restorer import Progress
    from napari_treg.plugin.restoration import Outcome

CANCELLED = "Cancelled: nothing was added."


def input_removed_line(name: str) -> str:
    """Why a run stopped by itself when its input layer was removed, and what to do."""
    return (
        f"Stopped: the input layer '{name}' was removed from the viewer; nothing was added. Add it again to restore it."
    )


#: how a widget starts a failure's message, by :attr:`Failure.kind`
LEADS = {
    "cancelled": "Restoration cancelled",
    "input": "Cannot restore",
    "model": "The model could not be loaded",
    "memory": "Out of memory",
    "diverged": "The restoration diverged",
    "failed": "Cannot restore",
}
#: what to do about it in the widget, after the engine's own advice, by :attr:`Failure.kind`
WIDGET_ADVICE = {
    "model": "To try the plugin without weights, choose the tiny test model under Model.",
    "memory": "Restore the current plane instead of the whole stack, or under Advanced turn on "
    "the low-memory mode, set a tile size (e.g. 512), choose float16 precision, or run on another device.",
}


def explain_error(error: BaseException) -> str:
    """What went wrong and what to do, no traceback: the command line's text, led and completed for the widget.

    Its first sentence (:func:`first_sentence`) is what a status line shows.
    """
    failure = describe_failure(error)
    if failure is None:  # not one of ours: a bug, or a library failing in a way nobody foresaw
        text = str(error).strip() or type(error).__name__
        return f"Restoration failed ({type(error).__name__}: {text}). Check the inputs and settings, then try again."
    return failure_text(failure)


def failure_text(failure: Failure) -> str:
    """``"Cannot restore: <the CLI's message>"`` and, on a new line, the widget's advice for that kind."""
    if failure.kind == "cancelled":
        return LEADS["cancelled"] + "."
    message = failure.message
    if failure.kind == "memory" and message.lower().startswith("out of"):
        text = message[:1].upper() + message[1:]  # "Out of accelerator memory (...)": it leads itself
    else:
        text = f"{LEADS[failure.kind]}: {message}"
    advice = WIDGET_ADVICE.get(failure.kind)
    if not advice:
        return text
    return f"{text}{'' if text.endswith(('.', '!', '?')) else '.'}\n{advice}"


def headline(text: str) -> str:
    """The first sentence of a message, ended with a full stop."""
    first = first_sentence(text)
    return first if first.endswith((".", "!", "?")) else first + "."


def after_headline(text: str) -> str:
    """What ``text`` says after its first sentence (the status line's :func:`headline`); "" if nothing."""
    text = text.strip()
    return text[len(first_sentence(text)) :].strip()


def sentence_case(message: str) -> str:
    return message[:1].upper() + message[1:]


def step_line(event: Progress) -> str:
    """``"Step 3 of 50 (plane 2 of 5, tile 1 of 4)"``."""
    where = [f"plane {event.plane} of {event.planes}"] if event.planes > 1 else []
    where += [f"tile {event.tile} of {event.tiles}"] if event.tiles > 1 else []
    return f"Step {event.step} of {event.total}" + (f" ({', '.join(where)})" if where else "")


def ensemble_step_line(event: Progress, samples: int) -> str:
    """``"Step 30 of 320 (ensemble of 8 samples)"``: the steps of all samples (and of their text-free pass);
    then ``"Data share: solve 2 of 64 (ensemble of 8 samples)"`` while the data share's probes are solved."""
    if event.phase == SAMPLING:
        return f"Step {event.step} of {event.total} (ensemble of {samples} samples)"
    where = f", plane {event.plane} of {event.planes}" if event.planes > 1 else ""
    return f"{sentence_case(event.phase)}: solve {event.step} of {event.total} (ensemble of {samples} samples{where})"


def data_consistency_line(info: dict, constant: bool = False) -> str:
    """How well the result explains the measurement, in words a user can judge.

    For a ``constant`` measurement ``||A x - y|| / ||y||`` means nothing (the engine works on
    the image minus its level, which is then zero): only the residual in noise units is given.
    """
    ratio = info.get("residual_over_noise")
    if constant:
        line = "The measurement is constant: there is no structure to restore"
        if ratio is not None:
            line += f"; the result differs from it by {ratio:.2g} x the noise level (RMS)"
        return line + "."
    line = f"Data consistency ||Ax - y|| / ||y|| = {info.get('residual', 0.0):.3g}"
    if ratio is not None:
        line += f", {ratio:.2g} x the noise level (about 1 = consistent)"
    return line + "."


def done_line(name: str, outcome: Outcome) -> str:
    """``Done in 8.6 s (+ 25.1 s loading the model): added 'x'.``"""
    loading = f" (+ {outcome.load_seconds:.1f} s loading the model)" if outcome.load_seconds >= 0.05 else ""
    return f"Done in {outcome.info.get('seconds', 0.0):.1f} s{loading}: added '{name}'."


def is_constant(data: np.ndarray) -> bool:
    """Whether every value of ``data`` is the same (then there is nothing to restore)."""
    values = np.asarray(data)
    return values.size > 0 and bool(np.all(values == values.flat[0]))


# -- a finished run, in plain words ----------------------------------------------------------

#: a result within this many times the noise level of the measurement fits it (``residual_over_noise``)
FITS_WITHIN_NOISE = 2.0


@dataclass(frozen=True)
class Note:
    """One status line of a finished run: what happened and what to do; ``details``: the evidence behind it."""

    text: str
    details: str = ""


def fit_note(info: dict, constant: bool = False) -> Note:
    """Whether the result explains the measurement (data consistency), and what to do if it does not."""
    details = data_consistency_line(info, constant)
    ratio = info.get("residual_over_noise")
    if constant:
        return Note("The measurement has one value everywhere: there was nothing to restore.", details)
    if ratio is None:
        return Note("To see whether the result fits the measurement, set its noise σ under Measurement.", details)
    if ratio <= FITS_WITHIN_NOISE:
        return Note("The result fits the measurement to within its noise.", details)
    return Note(
        f"The result does not fit the measurement ({ratio:.2g} x its noise): check the operator and its "
        "settings, or set a higher noise σ if the measurement is noisier.",
        details,
    )


def conflict_note(info: dict) -> Note | None:
    """The text-conflict warning in plain words (None when the prompt fits the measurement)."""
    details = conflict_message(info)
    if details is None:
        return None
    conflict = TextConflict.of(info)
    units = conflict.units or 1
    where = "" if units == 1 else f" (in {conflict.units_flagged} of {units} planes/tiles)"
    return Note(
        f"The prompt pulled the result away from the measurement{where}: some of what it shows may come "
        "from the text, not the sample. Check the prompt, or compare with a run without one.",
        details,
    )


def unchecked_note(info: dict) -> Note | None:
    """Why the prompt was not checked against the measurement, and how to have it checked (None if it was)."""
    details = unchecked_message(info)
    if details is None:
        return None
    if "no noise level" in (TextConflict.of(info).reason or ""):
        advice = "set the measurement's noise σ to have it checked"
    else:
        advice = "the run had too few steps to tell; with more steps (50 or more) it is checked"
    return Note(f"Whether the prompt fits the measurement was not checked: {advice}.", details)


def text_check_notes(info: dict, random_text: bool = False) -> tuple[Note | None, Note | None]:
    """``(status note, warning)`` of the text-conflict check: why it was not made, or that the prompt conflicts.

    ``random_text``: a test model whose text encoder has random weights; the prompt means nothing to it, so
    the check's verdict is no warning, only a note (else every such run would warn, and teach to ignore it).
    """
    if random_text:
        details = conflict_message(info) or unchecked_message(info)
        if details is None:
            return None, None
        return Note("The tiny test model does not understand text, so the prompt was not checked.", details), None
    return unchecked_note(info), conflict_note(info)


def ensemble_note(samples: int, info: dict | None = None) -> Note:
    """What an ensemble added, and how to see one map at a time; with the ensemble's ``info``, also whether
    it had too few steps for its spread to be relied on (``info["calibration"]``; details: the engine's note)."""
    text = (
        f"Added the mean of {samples} restorations with their spread (std: where they disagree) and where the "
        "result comes from the measurement (data share: green) or was invented (pink), side by side; "
        "Ctrl+G (or the grid button, bottom left) shows one at a time."
    )
    calibration = (info or {}).get("calibration") or {}
    if not calibration.get("below"):
        return Note(text)
    return Note(f"{text} {few_steps_line(calibration)}", sentence_case(calibration["note"]) + ".")


def few_steps_line(calibration: dict) -> str:
    """What an ensemble below the calibrated steps (``info["calibration"]`` with ``below``) means, in plain words."""
    return (
        f"With only {calibration['steps']} steps the spread is likely too small: use "
        f"{calibration['calibrated_from_steps']} or more steps to rely on the std and intervals."
    )
