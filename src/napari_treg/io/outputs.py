"""The output files of one run: checked before any work, written together or not at all.

Every output path of a command-line run (``-o``, ``--info``, batch outputs) goes through
:func:`check_outputs` before the run starts. An output is refused when it

- is the same file as an input or as another output (resolved paths and inodes, so
  symlinks and hard links count), which would overwrite the user's data;
- is an existing folder, lies in a folder that does not exist or where no file can be
  created (a create-and-remove probe, not just ``access()``), or is a write-protected file;
- has a format that cannot hold the result (a stack to ``.png``), as :mod:`napari_treg.io.files` decides.

:func:`write_together` then writes every output to a temporary file beside it and renames them
into place only when all are complete; if anything fails (or Ctrl-C), the outputs already
renamed are put back as they were, so a run leaves all its outputs or none.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_treg.errors import CancelSignal, InvalidInputError, cancel_checker, raise_if
from napari_treg.imaging import layout as imaging
from napari_treg.io import files as io

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Output:
    """One output file of a run: the option that named it, its path and, for an image, its shape."""

    option: str
    path: Path
    shape: tuple[int, ...] | None = None  # None: not an image (e.g. the JSON of --info)


def result_shape(
    image: np.ndarray, rgb: bool | None, plane_hw: Callable[[tuple[int, int]], tuple[int, int]]
) -> tuple[int, ...]:
    """The shape of a run's result: the input's layout with planes of ``plane_hw(input plane size)``.

    ``plane_hw`` is the operator's ``image_hw`` (restore) or ``measurement_hw`` (degrade).
    Raises InvalidInputError for an image the run would refuse.
    """
    layout = imaging.layout_of(imaging.check_image(image), rgb)
    return layout.output_shape(plane_hw(layout.hw))


def check_outputs(outputs: Sequence[Output], inputs: Iterable[PathLike | None]) -> None:
    """Raise InvalidInputError, naming the option, for any output that could lose data or fail late."""
    sources = [Path(path) for path in inputs if path is not None]
    for number, output in enumerate(outputs):
        _check_target(output)
        for source in sources:
            if same_file(output.path, source):
                raise InvalidInputError(
                    f"{output.option} {os.fspath(output.path)!r} is the input file {os.fspath(source)!r}: "
                    "choose another output path (inputs are never overwritten)"
                )
        for other in outputs[:number]:
            if same_file(output.path, other.path):
                raise InvalidInputError(
                    f"{output.option} {os.fspath(output.path)!r} and {other.option} {os.fspath(other.path)!r} "
                    "are the same file: give each output its own path"
                )


def _check_target(output: Output) -> None:
    path, option = output.path, output.option
    if output.shape is not None:
        io.check_can_hold(path, output.shape)
    if path.is_dir():
        raise InvalidInputError(f"{option} {os.fspath(path)!r} is a folder: give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise InvalidInputError(f"the folder of {option} does not exist: {os.fspath(folder)!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInputError(f"the folder of {option} is not writable: {os.fspath(folder)!r}")
    probe_folder(folder, option)  # access() says yes where no file can be made (root, special file systems)
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidInputError(f"{option} {os.fspath(path)!r} is write-protected: choose another path")


def probe_folder(folder: Path, option: str) -> None:
    """Create and remove a file in ``folder``: InvalidInputError, naming ``option``, if that fails."""
    if not folder.is_dir():
        raise InvalidInputError(f"the folder of {option} does not exist: {os.fspath(folder)!r}")
    probe = folder / f".treg-probe-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        raise InvalidInputError(
            f"the folder of {option} is not writable: {os.fspath(folder)!r} ({error.strerror or error})"
        ) from None


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks followed), or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def write_together(writers: Mapping[PathLike, Callable[[Path], object]], cancel: CancelSignal = None) -> None:
    """Write every output (``writer(temporary_path)``), then rename all into place; all or none.

    Each writer writes its file to the temporary path it is given (same folder and extension as
    the target). On any failure, including Ctrl-C, the temporaries are removed and the outputs
    already renamed are restored to what they were before. ``cancel``, when set by the time the
    temporaries are written, raises :class:`~napari_treg.errors.Cancelled` and renames nothing.
    """
    is_cancelled = cancel_checker(cancel)
    plan = {Path(target): (write, _temporary(Path(target))) for target, write in writers.items()}
    try:
        for write, temp in plan.values():
            write(temp)
        raise_if(is_cancelled)
        _commit({target: temp for target, (_, temp) in plan.items()})
    finally:
        for _, temp in plan.values():
            temp.unlink(missing_ok=True)


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.stem}.{secrets.token_hex(4)}.part{target.suffix}")


def _commit(temps: Mapping[Path, Path]) -> None:
    """Rename each temporary onto its target; on failure put every target back as it was."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for target, temp in temps.items():
            done.append((target, _backup(target)))
            os.replace(temp, target)
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _backup(target: Path) -> Path | None:
    """A second name for an existing target (a hard link, else a copy; a symlink stays a symlink)."""
    if not os.path.lexists(target):
        return None
    backup = target.with_name(f".{target.name}.{secrets.token_hex(4)}.backup")
    if target.is_symlink():
        os.symlink(os.readlink(target), backup)
    else:
        try:
            os.link(target, backup)
        except OSError:  # a file system without hard links
            shutil.copy2(target, backup)
    return backup
