"""The restore widget's progress bar and status line: what a run is doing, and why it stopped.

A failure's first sentence stays in the status line; the whole message (what to do about
it) is one click away, under **Details**, and in the line's tooltip. Warnings go to the
status line and to a napari notification. The texts come from :mod:`.messages`.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy

from napari_treg.engine.restorer import Progress
from napari_treg.plugin.messages import CANCELLED, headline, sentence_case, step_line

READY = "Ready."
#: what a warning line starts with in the status line
WARNING_MARK = "⚠ "


class StatusPanel(Container):
    """The progress bar, the status line, and the details of a failure (hidden until asked for)."""

    def __init__(self) -> None:
        progress_bar = ProgressBar(name="progress_bar", value=0, min=0, max=1, label="")
        status = Label(name="status", value=READY)
        details_button = PushButton(
            name="details_button", text="Details", visible=False, tooltip="Show or hide the whole message"
        )
        details = Label(name="details", value="", visible=False)
        super().__init__(name="status_panel", labels=False, widgets=[progress_bar, status, details_button, details])
        self.margins = (0, 0, 0, 0)
        progress_bar.native.setFormat("%v / %m steps")
        progress_bar.visible = False  # shown from the first run on
        for label in (status, details):
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            label.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        details_button.changed.connect(self.toggle_details)

    # -- the status line ---------------------------------------------------------------------

    def say(self, message: str) -> None:
        """A new status, replacing the last one and its details."""
        self.status.value = message
        self.status.tooltip = None
        self._set_details("")

    def failed(self, message: str, notify: bool = True) -> None:
        """A failure: its first sentence stays in the status line, the rest under Details; the bar is reset.

        ``notify``: also as a napari error notification.
        """
        self.reset_progress()
        first = headline(message)
        self.status.value = first
        self.status.tooltip = message
        self._set_details(message if " ".join(message.split()) != first else "")
        if notify:
            show_error(message)

    def warn(self, message: str) -> None:
        """A warning of the run: a line of the status (kept with the summary) and a napari warning notification."""
        line = WARNING_MARK + sentence_case(message)
        current = self.status.value
        self.status.value = f"{current}\n{line}" if current else line
        show_warning(f"TReg: {message}")

    def cancelled(self, reason: str | None = None) -> None:
        """The run stopped and added nothing: ``reason`` (a run stopped by itself) or the plain cancel line."""
        self.reset_progress()
        self.say(reason or CANCELLED)

    # -- the progress bar --------------------------------------------------------------------

    def busy(self, message: str, fraction: float | None) -> None:
        """``message…`` with a busy bar (``fraction`` None) or a percentage."""
        self.say(sentence_case(message) + "…")
        self.progress_bar.visible = True
        bar = self.progress_bar.native
        if fraction is None:
            bar.setRange(0, 0)  # busy indicator
        else:
            bar.setRange(0, 100)
            bar.setFormat("%p%")
            bar.setValue(int(100 * fraction))

    def step(self, event: Progress, line: str | None = None) -> None:
        """``Step 3 of 50`` (or ``line``) in the status line, and the bar."""
        bar = self.progress_bar.native
        bar.setFormat("%v / %m steps")
        bar.setRange(0, event.total)
        bar.setValue(event.step)
        self.say(line or step_line(event))

    def reset_progress(self) -> None:
        """An empty, idle bar (no busy animation)."""
        bar = self.progress_bar.native
        bar.setRange(0, 1)
        bar.setValue(0)
        bar.setFormat("")

    # -- details -----------------------------------------------------------------------------

    @property
    def details_shown(self) -> bool:
        return not self.details.native.isHidden()

    def toggle_details(self, *_: object) -> None:
        shown = not self.details_shown
        self.details.visible = shown
        self.details_button.text = "Hide details" if shown else "Details"

    def _set_details(self, text: str) -> None:
        self.details.value = text
        self.details.visible = False
        self.details_button.text = "Details"
        self.details_button.visible = bool(text)
