"""What a finished run's status says (issue 35, point 4): what happened and what to do, in plain words; the
method's terms and numbers are each note's details."""

from __future__ import annotations

from napari_treg.plugin.messages import (
    after_headline,
    conflict_note,
    ensemble_note,
    fit_note,
    text_check_notes,
    unchecked_note,
)

#: words of the method a microscopist cannot act on: never in a status line, only in its details
JARGON = ("data-consistency", "nats", "||", "abar", "evidence", "sigma")

FLAGGED = {
    "text_conflict": {
        "flag": True,
        "checked": True,
        "deficit_nats": 420.0,
        "units_flagged": 1,
        "units": 1,
        "noise": 0.02,
        "noise_source": "given",
    }
}
NO_EVIDENCE = {
    "text_conflict": {
        "flag": False,
        "checked": False,
        "units": 0,
        "units_unchecked": 1,
        "reason": "no evidence: the prompt did not change the estimate at the 1 data-consistency step at high noise",
    }
}


def _plain(text: str) -> bool:
    return not any(word in text for word in JARGON)


def test_the_fit_to_the_measurement_in_words_with_the_numbers_behind():
    fits = fit_note({"residual": 0.0123, "residual_over_noise": 1.04})
    assert fits.text == "The result fits the measurement to within its noise."
    assert "||Ax - y|| / ||y|| = 0.0123" in fits.details
    off = fit_note({"residual": 0.3, "residual_over_noise": 9.0})
    assert off.text.startswith("The result does not fit the measurement (9 x its noise): check the operator")
    unknown = fit_note({"residual": 0.01})
    assert "set its noise σ" in unknown.text
    assert all(_plain(note.text) for note in (fits, off, unknown))


def test_the_text_check_in_words_with_the_evidence_behind():
    warning = conflict_note(FLAGGED)
    assert warning.text.startswith("The prompt pulled the result away from the measurement:")
    assert "Check the prompt" in warning.text and "420 nats" in warning.details
    unchecked = unchecked_note(NO_EVIDENCE)
    assert unchecked.text.endswith("with more steps (50 or more) it is checked.")
    assert "The text-conflict check was not made: no evidence" in unchecked.details
    assert _plain(warning.text) and _plain(unchecked.text)
    assert conflict_note(NO_EVIDENCE) is None and unchecked_note(FLAGGED) is None


def test_a_test_model_that_reads_no_text_is_never_warned():
    note, warning = text_check_notes(FLAGGED, random_text=True)
    assert warning is None and "does not understand text" in note.text and "Text conflict" in note.details
    assert text_check_notes({"text_conflict": {"flag": False, "checked": False, "reason": "no prompt"}}, True) == (
        None,
        None,
    )


def test_the_ensemble_line_says_how_to_read_the_maps():
    text = ensemble_note(8).text
    assert "mean of 8 restorations" in text and "Ctrl+G" in text and _plain(text)


def test_details_say_what_follows_the_headline():
    assert after_headline("Cannot restore: no mask.") == ""
    assert after_headline("Cannot restore: no mask") == ""
    assert after_headline("The model could not be loaded: x.\nTo get it: hf download.") == "To get it: hf download."
