"""The restore widget's progress bar and status line: what a run is doing, and why it stopped.

A failure's first sentence stays in the status line; the whole message (what to do about
it) is one click away, under **Details**, and in the line's tooltip. A finished run's lines
are plain words; the numbers behind them are under Details too. Warnings go to the status
line and to a napari notification. The status and its details scroll inside a box of
bounded height (:data:`STATUS_HEIGHT`), so a long message never squeezes the form above
it. The texts come from :mod:`.messages`.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from napari_treg.engine.restorer import SAMPLING, Progress
from napari_treg.plugin.messages import CANCELLED, after_headline, headline, sentence_case, step_line

READY = "Ready."
#: what a warning line starts with in the status line
WARNING_MARK = "⚠ "
#: the most pixels the status and its details take (they scroll inside); the form above keeps the rest
STATUS_HEIGHT = 180


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
        self.text_area = bounded_scroll(self.native.layout(), (status.native, details.native), STATUS_HEIGHT)

    # -- the status line ---------------------------------------------------------------------

    def say(self, message: str, details: str = "") -> None:
        """A new status, replacing the last one; ``details``: what is behind it (under Details)."""
        self.status.value = message
        self.status.tooltip = None
        self._set_details(details)
        self.text_area.updateGeometry()

    def failed(self, message: str, notify: bool = True) -> None:
        """A failure: its first sentence stays in the status line, the rest (if any) under Details; the bar is reset.

        ``notify``: also as a napari error notification.
        """
        self.reset_progress()
        self.status.value = headline(message)
        self.status.tooltip = message
        self._set_details(after_headline(message))
        self.text_area.updateGeometry()
        if notify:
            show_error(message)

    def warn(self, message: str, details: str = "") -> None:
        """A warning of the run: a line of the status (kept with the summary) and a napari warning notification.

        ``details`` (the evidence behind it) are added under Details.
        """
        line = WARNING_MARK + sentence_case(message)
        current = self.status.value
        self.status.value = f"{current}\n{line}" if current else line
        if details:
            self._set_details("\n\n".join(text for text in (self.details.value, details) if text))
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
        bar.setFormat("%v / %m steps" if event.phase == SAMPLING else "%v / %m solves")
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
        self.text_area.updateGeometry()

    def _set_details(self, text: str) -> None:
        self.details.value = text
        self.details.visible = False
        self.details_button.text = "Details"
        self.details_button.visible = bool(text)


class BoundedScroll(QScrollArea):
    """A scroll area as high as its content, up to its maximum height (then its content scrolls)."""

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        content = self.widget()
        if content is None:
            return hint
        width = self.viewport().width()
        wanted = content.heightForWidth(width) if content.hasHeightForWidth() else content.sizeHint().height()
        return QSize(hint.width(), min(max(wanted, 0), self.maximumHeight()))


def bounded_scroll(layout: QVBoxLayout, widgets: tuple[QWidget, ...], height: int) -> QScrollArea:
    """Move ``widgets`` (in ``layout``) into a frameless vertical scroll area at most ``height`` pixels high,
    where the first of them was."""
    index = layout.indexOf(widgets[0])
    content = QWidget()
    column = QVBoxLayout(content)
    column.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.removeWidget(widget)
        column.addWidget(widget)
    column.addStretch(1)
    scroll = BoundedScroll()
    scroll.setWidget(content)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setMaximumHeight(height)
    scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
    layout.insertWidget(index, scroll)
    return scroll
