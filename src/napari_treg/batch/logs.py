"""The run's log file: dask's own log lines and the full detail of every failed unit, off the terminal.

During a batch run, the records of the ``distributed``, ``tornado``, ``asyncio`` and ``bokeh``
loggers of this process go to the run's log (not to stderr), and so does the traceback of
each unit that failed; the person sees one line per failed unit and the log's path. Records
are held in memory until the output (and so the log's place) exists.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

#: loggers whose records go to the run's log instead of the terminal
ROUTED = ("distributed", "tornado", "asyncio", "bokeh")
#: the log's name inside a batch output (folder or zarr store)
LOG_NAME = "treg-batch.log"


class RunLog(logging.Handler):
    """A log file that can be opened after the first records arrive (they are kept until then)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        self.path: Path | None = None
        self._stream: IO[str] | None = None
        self._pending: list[str] = []

    def open(self, path: Path) -> None:
        """Write the records kept so far, and all later ones, to ``path`` (appended)."""
        self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.path = path
        for line in self._pending:
            self._write(line)
        self._pending.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)

    def note(self, text: str) -> None:
        """A line of the run's own (the detail of a failed unit)."""
        self._write(text)

    def failure(self, name: str, error: BaseException, tb=None) -> None:
        """The full traceback of a unit that failed."""
        detail = "".join(traceback.format_exception(type(error), error, tb))
        self.note(f"unit {name} failed:\n{detail.rstrip()}")

    def _write(self, line: str) -> None:
        if self._stream is None:
            self._pending.append(line)
            return
        self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


@contextmanager
def routed_logs() -> Iterator[RunLog]:
    """Send the dask-related loggers' records to a :class:`RunLog` for the duration; then put them back."""
    log = RunLog()
    saved = {}
    for name in ROUTED:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate)
        logger.handlers = [log]
        logger.propagate = False
    try:
        yield log
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        log.close()
