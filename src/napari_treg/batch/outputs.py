"""Where a batch run writes: a folder of files, or a zarr (v3) / OME-Zarr store; written by the workers.

Every unit writes its data, then its record (a small JSON file, written to a temporary
name and renamed). The record holds a digest of the unit's input and of the stored output
(the file, or the zarr chunk): a unit counts as done only when its record exists, its input
still has that digest and its output is still there with that digest, so a unit cut short
(worker killed, client interrupted), an output deleted or damaged since, or an input changed
since is simply computed again by the next run. The run's
parameters are stored when the output is created; a later run on the same output must
have the same ones, or it is refused with the differing parameters named.

- Both: the run's log (dask's messages, each failed unit's traceback) in ``OUT/treg-batch.log``.
- Folder: ``OUT/<input file name>`` as ``napari-treg restore`` writes it, its provenance
  (``restore``'s info) in ``OUT/<name>.treg.json`` (the record), the parameters in
  ``OUT/treg-batch.json``.
- With an ensemble (``samples``): each map of :meth:`Job.map_names <napari_treg.batch.units.Job.map_names>`
  (``std``, ``data_share``, ``text_influence``) beside the output as ``napari-treg restore --samples``
  names it (``io.companion``): ``OUT/cells.std.tif``; ``OUT.std.zarr`` beside ``OUT.zarr`` (a
  plain array shaped like the main one, marked as this output's map in its attributes). Each map's
  digest is in the unit's record. :meth:`FolderOutput.check_companions` and
  :meth:`ZarrOutput.check_companions` plan every map before any work, as ``restore --samples`` does:
  a map that would be an input, a user's own file or store (one no batch run made), or the output
  of another unit is refused by name, and nothing is written; a map store left by an earlier run
  for an output that is gone is remade with the output, and one of another shape beside an output
  that stays is refused by name.
- Zarr: an array with the input's leading axes, restored planes, one chunk per unit,
  float32; for an OME-Zarr input an OME-Zarr image (level ``0``) with the input's axes and
  pixel sizes divided by the super-resolution factor. Records in ``OUT/.treg-units/``;
  the parameters and per-plane records in the attributes under ``napari_treg``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_treg.batch.logs import LOG_NAME
from napari_treg.batch.sources import SPATIAL, ArraySource, FileSource, Unit, is_zarr
from napari_treg.errors import InvalidInputError
from napari_treg.io import files as io
from napari_treg.io.files import companion

MANIFEST = "treg-batch.json"
RECORD_SUFFIX = ".treg.json"
RECORDS_DIR = ".treg-units"
ATTRIBUTE = "napari_treg"
#: the attribute that marks a map store as the map of one batch output: ``{"map": name, "of": output name}``
MAP_ATTRIBUTE = "napari_treg_map"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it: never seen half-written."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        temp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def parameter_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``name: stored -> current`` for every parameter that differs (as stored in JSON)."""
    now = json.loads(json.dumps(current, default=str))
    return [
        f"{name}: {stored.get(name)!r} -> {now.get(name)!r}"
        for name in sorted(set(stored) | set(now))
        if stored.get(name) != now.get(name)
    ]


def check_same_parameters(output: str, stored: dict[str, Any] | None, current: dict[str, Any]) -> None:
    if stored is None:
        raise InvalidInputError(f"output {output!r} exists and is not a napari-treg batch output; choose another")
    differences = parameter_differences(stored, current)
    if differences:
        raise InvalidInputError(
            f"output {output!r} was written with other parameters ({'; '.join(differences)}): "
            "rerun with the same ones to resume, or choose another output"
        )


def file_digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes, or None when it does not exist."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def maps_held(paths: dict[str, Path], record: dict) -> bool:
    """Whether every map file in ``paths`` (by name) has the digest the record gives it."""
    digests = record.get("map_digests") or {}
    return all(name in digests and file_digest(path) == digests[name] for name, path in paths.items())


def read_record(path: Path) -> dict | None:
    """One unit record, or None when it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_records(folder: Path, suffix: str) -> dict[str, dict]:
    """The unit records in ``folder`` by unit key (unreadable ones count as not done)."""
    records = {}
    for path in folder.glob(f"*{suffix}") if folder.is_dir() else ():
        if path.name.startswith("."):
            continue
        record = read_record(path)
        if record is not None:
            records[str(record.get("key", path.name[: -len(suffix)]))] = record
    return records


# --------------------------------------------------------------------------- folder


@dataclass(frozen=True)
class FolderOutput:
    """One output file per input file, with the same name, plus its provenance JSON (and its maps)."""

    path: str
    maps: tuple[str, ...] = ()  # the ensemble maps written beside each file

    def planned(self, source: FileSource) -> list[tuple[Path, str]]:
        """Every file the run writes, and what it is (``"the output of x.tif"``, ``"the std map of x.tif"``)."""
        folder = Path(self.path)
        written = []
        for path in source.paths:
            name = Path(path).name
            written.append((folder / name, f"the output of {name}"))
            written += [(companion(folder / name, m), f"the {m} map of {name}") for m in self.maps]
        return written

    def check_companions(self, source: FileSource) -> None:
        """Refuse, naming the file, an output or map that is an input or that two units would both write."""
        sources = {Path(p).resolve() for p in source.paths}
        seen: dict[Path, str] = {}
        for path, what in self.planned(source):
            resolved = path.resolve()
            if resolved in sources:
                raise InvalidInputError(
                    f"{what} would be written to {os.fspath(path)!r}, which is an input file: "
                    "choose another output folder (inputs are never overwritten)"
                )
            if resolved in seen:
                raise InvalidInputError(
                    f"{seen[resolved]} and {what} would both be written to {os.fspath(path)!r}: "
                    "rename one of the inputs, or restore them in separate runs"
                )
            seen[resolved] = what

    def prepare(self, source: FileSource, params: dict[str, Any]) -> dict[str, dict]:
        """Create the folder (or check an existing one's parameters); returns the records of done units."""
        folder = Path(self.path)
        self.check_companions(source)
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"output {self.path!r} exists and is not a folder")
        manifest = folder / MANIFEST
        if folder.is_dir() and any(folder.iterdir()):
            stored = json.loads(manifest.read_text()).get("params") if manifest.is_file() else None
            check_same_parameters(self.path, stored, params)
        else:
            if not folder.parent.is_dir():
                raise InvalidInputError(f"output folder's parent does not exist: {str(folder.parent)!r}")
            folder.mkdir(exist_ok=True)
            write_json_atomic(manifest, {"params": params})
        return self.records()

    def records(self) -> dict[str, dict]:
        """The records of the units done so far, by unit key."""
        return read_records(Path(self.path), RECORD_SUFFIX)

    def log_path(self) -> Path:
        return Path(self.path) / LOG_NAME

    def record(self, unit: Unit) -> dict | None:
        """The record of ``unit``, if it has one."""
        return read_record(Path(self.path) / f"{unit.key}{RECORD_SUFFIX}")

    def holds(self, unit: Unit, record: dict) -> bool:
        """Whether the unit's output file is there, exactly as its record says it was written."""
        target = Path(self.path) / unit.key
        return (
            record.get("output_digest") is not None
            and file_digest(target) == record["output_digest"]
            and maps_held({name: companion(target, name) for name in self.maps}, record)
        )

    def write(
        self, unit: Unit, image: np.ndarray, restored: np.ndarray, info: dict, record: dict, maps: dict | None = None
    ) -> dict:
        """Write the unit's file and its maps, then its record (with their digests); returns the record."""
        target = Path(self.path) / unit.key
        paths = {name: companion(target, name) for name in self.maps}
        for name, path in paths.items():  # the data share is in [0, 1]: not in the input's dtype
            io.write_image(path, (maps or {})[name], like=None if name == "data_share" else image)
        io.write_image(target, restored, like=image)
        record = {**record, "output_digest": file_digest(target)}
        if paths:
            record["map_digests"] = {name: file_digest(path) for name, path in paths.items()}
        write_json_atomic(Path(self.path) / f"{unit.key}{RECORD_SUFFIX}", {**info, **record})
        return record

    def finish(self, records: dict[str, dict], complete: bool) -> None:
        manifest = Path(self.path) / MANIFEST
        data = json.loads(manifest.read_text())
        data.update(complete=complete, units={key: r.get("residual") for key, r in sorted(records.items())})
        write_json_atomic(manifest, data)


# --------------------------------------------------------------------------- zarr


@dataclass(frozen=True)
class ZarrOutput:
    """A zarr v3 array (or OME-Zarr image) of the restored planes, one chunk per unit."""

    path: str
    array_path: str  # "" for a plain array, "0" for OME-Zarr
    maps: tuple[str, ...] = ()  # the ensemble maps, each a plain array in its own store beside this one

    def prepare(self, source: ArraySource, params: dict[str, Any], image_hw: tuple[int, int]) -> dict[str, dict]:
        """Create the store (or check an existing one's parameters); returns the records of done units."""
        import zarr

        stale = self.check_companions(source, image_hw)
        if os.path.exists(self.path):
            stored = None
            if is_zarr(self.path):
                stored = dict(zarr.open(self.path, mode="r").attrs).get(ATTRIBUTE, {}).get("params")
            check_same_parameters(self.path, stored, params)
        else:
            if not Path(self.path).resolve().parent.is_dir():
                raise InvalidInputError(f"output's folder does not exist: {str(Path(self.path).parent)!r}")
            self.create(source, params, image_hw)
        self.create_maps(source, image_hw, stale)
        return self.records()

    def map_path(self, name: str) -> Path:
        """The store of the map ``name``: ``OUT.zarr`` -> ``OUT.std.zarr``."""
        return companion(Path(self.path), name)

    def check_companions(self, source: ArraySource, image_hw: tuple[int, int], inputs: Any = ()) -> list[str]:
        """Refuse, naming the store, a map store that is an input or a user's own store (not made as this
        output's map by a batch run), or one of another shape beside an output that is kept; returns the maps
        whose stores are stale (an earlier run's, for an output that is gone): :meth:`prepare` remakes them."""
        fresh = not os.path.exists(self.path)
        expected = array_options(source, image_hw)
        stale = []
        for name in self.maps:
            path = self.map_path(name)
            what = f"the {name} map store {os.fspath(path)!r} beside {os.fspath(self.path)!r}"
            if any(overlaps(path, Path(other)) for other in inputs):
                raise InvalidInputError(
                    f"{what} is an input: choose another output path (inputs are never overwritten)"
                )
            if not path.exists():
                continue
            shape = map_store_shape(path, name, Path(self.path).name)
            if shape is None:
                raise InvalidInputError(
                    f"{what} exists and no napari-treg batch run made it: move it, or choose another output path"
                )
            if fresh:
                stale.append(name)
            elif shape != tuple(expected["shape"]):
                raise InvalidInputError(
                    f"{what} holds {'x'.join(map(str, shape))} planes from another run, not the "
                    f"{'x'.join(map(str, expected['shape']))} of this output: remove it, or choose another output path"
                )
        return stale

    def create_maps(self, source: ArraySource, image_hw: tuple[int, int], stale: Any = ()) -> None:
        """Create each map's store that is not there yet (a deleted one is made again: its units recompute);
        a ``stale`` one (an earlier run's, for an output that is gone) is made again, empty."""
        import shutil

        import zarr

        for name in self.maps:
            path = self.map_path(name)
            if name in stale:
                shutil.rmtree(path)
            if not path.exists():
                attributes = {MAP_ATTRIBUTE: {"map": name, "of": Path(self.path).name}}
                zarr.create_array(str(path), **array_options(source, image_hw), attributes=attributes)

    def records(self) -> dict[str, dict]:
        """The records of the units done so far, by unit key."""
        return read_records(Path(self.path) / RECORDS_DIR, ".json")

    def log_path(self) -> Path:
        return Path(self.path) / LOG_NAME

    def create(self, source: ArraySource, params: dict[str, Any], image_hw: tuple[int, int]) -> None:
        import zarr

        options = array_options(source, image_hw)
        if not self.array_path:
            zarr.create_array(self.path, **options, attributes={ATTRIBUTE: {"params": params}})
            return
        group = zarr.open_group(self.path, mode="w-")
        group.create_array(self.array_path, **options)
        write_ome_metadata(group, self.array_path, source, image_hw[0] // source.layout.hw[0])
        group.attrs[ATTRIBUTE] = {"params": params}

    def record(self, unit: Unit) -> dict | None:
        """The record of ``unit``, if it has one."""
        return read_record(Path(self.path) / RECORDS_DIR / f"{unit.key}.json")

    def chunk_path(self, unit: Unit, store: str | Path | None = None) -> Path:
        """The file of the unit's chunk (one chunk per unit; zarr writes no chunk that is all fill value).

        ``store``: a map's store (a plain array) instead of the main array.
        """
        import zarr

        array_dir = Path(self.path, self.array_path) if store is None else Path(store)
        array = zarr.open_array(str(array_dir), mode="r")
        spatial = (0,) * (array.ndim - len(unit.index))
        return array_dir / array.metadata.encode_chunk_key((*unit.index, *spatial))

    def holds(self, unit: Unit, record: dict) -> bool:
        """Whether the unit's chunks (its plane's and its maps') are there, exactly as its record says."""
        return (
            "output_digest" in record
            and file_digest(self.chunk_path(unit)) == record["output_digest"]
            and maps_held({name: self.chunk_path(unit, self.map_path(name)) for name in self.maps}, record)
        )

    def write(
        self, unit: Unit, image: np.ndarray, restored: np.ndarray, info: dict, record: dict, maps: dict | None = None
    ) -> dict:
        """Write the unit's plane and its maps, then its record (with their chunks' digests); returns the record."""
        import zarr

        for name in self.maps:
            zarr.open_array(str(self.map_path(name)), mode="r+")[unit.index] = (maps or {})[name]
        array = zarr.open_array(os.path.join(self.path, self.array_path), mode="r+")
        array[unit.index] = restored
        record = {**record, "output_digest": file_digest(self.chunk_path(unit))}
        if self.maps:
            record["map_digests"] = {n: file_digest(self.chunk_path(unit, self.map_path(n))) for n in self.maps}
        folder = Path(self.path) / RECORDS_DIR
        folder.mkdir(exist_ok=True)
        write_json_atomic(folder / f"{unit.key}.json", record)
        return record

    def finish(self, records: dict[str, dict], complete: bool) -> None:
        """Copy the unit records into the attributes (only the client writes attributes)."""
        import zarr

        node = zarr.open(self.path, mode="r+")
        entry: dict[str, Any] = dict(node.attrs.get(ATTRIBUTE) or {})  # type: ignore[arg-type]
        entry.update(complete=complete, planes={key: records[key] for key in sorted(records)})
        node.attrs[ATTRIBUTE] = entry


def overlaps(a: Path, b: Path) -> bool:
    """Whether two paths are the same, or one lies inside the other (symlinks followed)."""
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or a in b.parents or b in a.parents


def map_store_shape(path: Path, name: str, output_name: str) -> tuple[int, ...] | None:
    """The shape of the map store at ``path`` if a batch run made it as ``output_name``'s map ``name``, else None."""
    import zarr

    if not is_zarr(path):
        return None
    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - unreadable metadata: not a store we made
        return None
    mark = dict(node.attrs).get(MAP_ATTRIBUTE)
    if not isinstance(node, zarr.Array) or mark != {"map": name, "of": output_name}:
        return None
    return tuple(node.shape)


def array_options(source: ArraySource, image_hw: tuple[int, int]) -> dict[str, Any]:
    """The zarr array of a stack's restored planes: float32, one chunk per plane."""
    shape = source.layout.output_shape(image_hw)
    leading = len(source.layout.leading)
    return dict(
        shape=shape,
        chunks=(1,) * leading + tuple(shape[leading:]),
        dtype="float32",
        fill_value=0.0,
        dimension_names=source.axis_names,
    )


def write_ome_metadata(group, array_path: str, source: ArraySource, factor: int) -> None:
    """OME-Zarr multiscales for one level: the input's axes, pixel sizes divided by ``factor`` in y, x."""
    from ome_zarr.writer import write_multiscales_metadata

    names, axes = source.axis_names or (), source.axes or ()
    scale = list(source.scale or [1.0] * len(names))
    translation = list(source.translation or [0.0] * len(names))
    for axis, name in enumerate(names):
        if name in SPATIAL:  # pixel centres of the finer grid: the first one moves up-left
            translation[axis] += (scale[axis] / factor - scale[axis]) / 2
            scale[axis] /= factor
    transforms = [{"type": "scale", "scale": scale}]
    if source.translation is not None or factor != 1:
        transforms.append({"type": "translation", "translation": translation})
    write_multiscales_metadata(
        group,
        datasets=[{"path": array_path, "coordinateTransformations": transforms}],
        axes=list(axes),
        name=source.name,
    )


def open_output(path: str, source: FileSource | ArraySource, maps: tuple[str, ...] = ()) -> FolderOutput | ZarrOutput:
    """The output matching the source: a folder for files, a zarr store for arrays (``maps`` beside each unit)."""
    path = os.fspath(path)
    if isinstance(source, FileSource):
        if path.rstrip("/").endswith(".zarr"):
            raise InvalidInputError("output: image files are restored into a folder, not a .zarr store")
        return FolderOutput(path, maps)
    if not path.rstrip("/").endswith(".zarr"):
        raise InvalidInputError(f"output must be a .zarr path for an array or zarr source, got {path!r}")
    return ZarrOutput(path, "0" if source.axes is not None else "", maps)
