"""The widget does not offer float16 on the CPU (issue 33 item 8): torch runs its convolutions there in a slow
generic kernel (benchmarks/cpu_precision.py); the reason is in the precision's tooltip and in the refusal."""

from __future__ import annotations

import pytest

from napari_treg.errors import InvalidInputError
from napari_treg.plugin.choices import CPU_FLOAT16_REASON, PRECISIONS, check_precision, precisions_for


def test_float16_is_offered_everywhere_but_on_the_cpu():
    assert "float16" in [value for _, value in PRECISIONS]
    assert [value for _, value in precisions_for("cpu")] == [None, "float32", "bfloat16"]
    assert "float16" in [value for _, value in precisions_for("cuda:7")]  # not a CPU (refused later if not here)
    check_precision("cpu", "bfloat16")
    check_precision("cpu", None)
    with pytest.raises(InvalidInputError, match="float16 is not offered on the CPU: torch runs its convolutions"):
        check_precision("cpu", "float16")


def test_the_restore_widget_on_the_cpu_has_no_float16_and_says_why(restore_widget):
    assert restore_widget.device.value == "cpu"
    assert tuple(restore_widget.dtype.choices) == (None, "float32", "bfloat16")
    assert restore_widget.dtype.tooltip == f"F{CPU_FLOAT16_REASON[1:]}."
    with pytest.raises(ValueError):
        restore_widget.dtype.value = "float16"
