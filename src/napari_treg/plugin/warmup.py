"""A first run's slow start, shown and shortened (no Qt here).

The first run in a napari session imports torch, transformers and diffusers (tens of seconds on a
busy machine) before it builds or loads its model. :func:`start_background_imports` begins those
imports when a dock opens, so a Run pressed a little later does not wait for them;
:func:`import_run_modules` says which one a run is still waiting for; :class:`PhaseClock` adds the
elapsed time of each loading phase to the status ("importing diffusers (12 s)") and repeats it
every second, so a long phase is seen to be alive.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from typing import Callable

#: ``status(message, fraction)``, as :mod:`.restoration` sends it
Status = Callable[[str, "float | None"], None]
#: the modules a Stable Diffusion or tiny run imports, in order (torch first: the others import it); the
#: networks' own modules, since transformers and diffusers import those lazily, on first use
RUN_IMPORTS = (
    "torch",
    "transformers.models.clip.modeling_clip",
    "diffusers.models.unets.unet_2d_condition",
    "diffusers.models.autoencoders.autoencoder_kl",
)
#: those the analytic prior needs (it has no networks)
ANALYTIC_IMPORTS = ("torch",)
#: the first tick of a phase's clock, and the time between ticks, in seconds
TICK = 1.0

#: the background imports started, by their modules (once per process)
_started: dict[tuple[str, ...], threading.Thread] = {}


def imports_for(model: str) -> tuple[str, ...]:
    """The heavy modules a run of ``model`` (a name or a path) imports before its first step."""
    return ANALYTIC_IMPORTS if model == "analytic" else RUN_IMPORTS


def is_imported(name: str) -> bool:
    """Whether ``name`` is imported completely (not merely being imported by another thread)."""
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def import_modules(names: tuple[str, ...] = RUN_IMPORTS) -> None:
    """Import ``names``; one that is missing is left for the run to report (with the model's own error)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            return


def start_background_imports(names: tuple[str, ...] = RUN_IMPORTS) -> threading.Thread | None:
    """Import ``names`` in a daemon thread, once per process; None if they are imported or being imported."""
    if names in _started or all(is_imported(name) for name in names):
        return None
    thread = threading.Thread(target=import_modules, args=(names,), name="napari-treg imports", daemon=True)
    _started[names] = thread
    thread.start()
    return thread


def import_run_modules(names: tuple[str, ...], status: Status | None) -> None:
    """Import ``names``, saying "importing <package>" for each still to come.

    The background imports are waited for first: two threads importing transformers' or diffusers'
    lazy modules at once can fail ("cannot import name 'AutoencoderKL' from 'diffusers'").
    """
    if all(is_imported(name) for name in names):
        return  # the analytic prior does not wait for the others
    said = None
    for thread in list(_started.values()):
        while thread.is_alive():
            said = say_importing(names, status, said)
            thread.join(0.1)
    for name in names:
        said = say_importing((name,), status, said)
        try:
            importlib.import_module(name)
        except ImportError:
            return  # the model's loader names what is missing


def say_importing(names: tuple[str, ...], status: Status | None, said: str | None) -> str | None:
    """Say "importing <package>" for the first of ``names`` not imported yet, if not said already."""
    waiting = next((name for name in names if not is_imported(name)), None)
    message = None if waiting is None else f"importing {waiting.split('.')[0]}"
    if message is not None and message != said and status is not None:
        status(message, None)
    return message or said


class PhaseClock:
    """A status function that adds each phase's elapsed seconds and repeats the phase every :data:`TICK` s.

    ``clock(message, fraction)`` starts a phase; ``clock.stop()`` ends the ticking (the last phase's
    text stays as last sent). Used as a context manager, it stops on exit.
    """

    def __init__(self, status: Status, tick: float = TICK):
        self._status = status
        self._tick = tick
        self._phase: tuple[str, float | None, float] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="napari-treg phase clock", daemon=True)
        self._thread.start()

    def __call__(self, message: str, fraction: float | None = None) -> None:
        with self._lock:
            self._phase = (message, fraction, time.perf_counter())
        self._status(message, fraction)

    def _run(self) -> None:
        while not self._stopped.wait(self._tick):
            with self._lock:  # held while sending: nothing is sent once stop() has returned
                if self._phase is not None and not self._stopped.is_set():
                    message, fraction, start = self._phase
                    self._status(f"{message} ({time.perf_counter() - start:.0f} s)", fraction)

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()

    def __enter__(self) -> PhaseClock:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
