"""Worker threads and the GUI: one relay from a worker to the main thread, napari's progress, shutdown.

Every worker -> GUI path of the plugin's widgets goes through a :class:`Relay`: the worker
calls ``relay.sender("step")(event)``, and the handler the widget registered under
``"step"`` runs in the main thread. A handler that fails becomes a warning notification,
never an exception escaping a Qt slot. :class:`ActivityProgress` is napari's progress bar
(the activity dock) for a run; its Cancel cancels the run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_warning
from qtpy.QtCore import QEvent, QObject, Signal, Slot

from napari_treg.plugin.restoration import ModelHolder, RestoreRequest


class Relay(QObject):
    """Carries calls from a worker thread to named handlers in the main thread.

    The relay lives in the main thread, so its signal, emitted by the worker, is queued.
    """

    #: (handler name, arguments): emitted in the worker, delivered in the main thread
    called = Signal(str, object)

    def __init__(self, parent: QObject, **handlers: Callable[..., Any]):
        super().__init__(parent)
        self._handlers = handlers
        self.called.connect(self._deliver)

    def sender(self, name: str) -> Callable[..., None]:
        """A function for the worker thread: ``sender(name)(*args)`` calls handler ``name`` in the main thread."""
        if name not in self._handlers:
            raise KeyError(f"no handler {name!r}; the relay has {sorted(self._handlers)}")
        return functools.partial(self._send, name)

    def _send(self, name: str, *args: Any) -> None:
        self.called.emit(name, args)

    @Slot(str, object)
    def _deliver(self, name: str, args: Any) -> None:
        reporting_errors(self._handlers[name], *args)


def reporting_errors(callback: Callable[..., Any], *args: Any) -> None:
    """Run a GUI callback; a failure to display progress is a notification, not a crash."""
    try:
        callback(*args)
    except Exception as error:  # noqa: BLE001 - an exception escaping a Qt slot can abort the app
        show_warning(f"TReg could not show its progress: {type(error).__name__}: {error}")


def start_worker(
    function: Callable[[], Any],
    returned: Callable[[Any], None],
    errored: Callable[[BaseException], None],
    finished: Callable[[], None],
) -> Any:
    """Run ``function`` in a napari thread worker with its three outcomes connected; returns the worker."""
    worker = create_worker(
        function,
        _start_thread=False,
        _connect={"returned": returned, "errored": errored, "finished": finished},
    )
    worker.start()
    return worker


class RunProgress(cancelable_progress):
    """napari's progress for a run: its Cancel (activity dock) stops the run at once.

    ``cancelable_progress`` only calls its ``cancel_callback`` while it is iterated; a run
    reports its steps by hand, so the callback is called here, when the user cancels.
    """

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class ActivityProgress:
    """A run's bar in napari's activity dock, brought up to date step by step."""

    def __init__(self, description: str, cancel: Callable[[], None] | None = None):
        self.progress = RunProgress(total=0, desc=description, cancel_callback=cancel)
        self._updating = False

    def update(self, step: int, total: int, description: str) -> None:
        """Bring the bar to ``step`` of ``total``.

        napari's progress bar processes pending events when it changes, so later steps (even
        the end of the run) are handled inside this call: those skip the update (the outer
        call is still making it), so fast runs do not nest one call per step.
        """
        if self._updating:
            return
        self._updating = True
        try:
            if self.progress.total != total:
                self.progress.total = total
                self.progress.set_description(description)
            self.progress.update(step - self.progress.n)
        finally:
            self._updating = False

    def close(self) -> None:
        self.progress.close()


class CloseWatcher(QObject):
    """Calls ``on_close`` when the widget is taken out of its dock (napari's close button does that)."""

    def __init__(self, watched: QObject, on_close: Callable[[], None]):
        super().__init__(watched)
        self._on_close = on_close
        watched.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange and watched.parent() is None:
            self._on_close()
        return False


class RunState:
    """What outlives the widget's Python object: the model and the running request."""

    def __init__(self) -> None:
        self.holder = ModelHolder()
        self.request: RestoreRequest | None = None


def shutdown(state: RunState, *_: Any) -> None:
    """The widget is gone: stop a running request, and free the model (after that run, if any)."""
    if state.request is not None:
        state.request.cancel.set()
    state.holder.release()
