"""Settings written once: each has its default, its valid range and its help in one place.

A settings class is a frozen dataclass whose fields are made by :func:`setting`. Creating
one validates every value (:func:`validate`), so the API, the CLI, the widget, the tiler
and the batch runner all accept exactly the same values; the CLI options and the widget
fields are generated from :func:`specs`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from napari_treg.errors import InvalidInputError


@dataclass(frozen=True)
class Spec:
    """What a front end needs to offer one setting: name, default, kind, range, help."""

    name: str
    default: Any
    kind: type  # bool, int, float or str
    help: str
    label: str
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # strictly > 0 (minimum is then the smallest value a widget offers)
    choices: tuple[Any, ...] = ()
    optional: bool = False  # None is allowed (it means the help's "default" behaviour)
    auto: bool = False  # the string "auto" is allowed

    def check(self, value: Any) -> Any:
        """``value`` as this setting's kind, or :class:`InvalidInputError` naming the setting."""
        if value is None and self.optional:
            return None
        if isinstance(value, np.ndarray) and value.ndim > 0:  # one value per setting; arrays break comparisons
            raise InvalidInputError(f"{self.name} must be one value, not an array of shape {value.shape}")
        if self.auto and isinstance(value, str):
            if value == "auto":
                return "auto"
            raise InvalidInputError(f"{self.name} must be a whole number >= {self.minimum:g} or 'auto', got {value!r}")
        if self.kind is bool:
            return check_bool(value, self.name)
        if self.kind is int:
            return check_integer(value, self.name, self.minimum, self.maximum)
        if self.kind is float:
            return check_number(value, self.name, self.minimum, self.maximum, self.positive)
        return check_choice(value, self.name, self.choices)


def setting(
    default: Any,
    help: str,
    *,
    label: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    choices: Sequence[Any] = (),
    auto: bool = False,
) -> Any:
    """A dataclass field carrying its :class:`Spec` (the field's name is filled in by :func:`specs`).

    The kind of value comes from the field's annotation: ``steps: int``, ``noise: float | None``
    (None allowed), ``batch_size: int | str`` with ``auto=True`` (a number or ``"auto"``).
    """
    meta = dict(help=help, label=label, minimum=minimum, maximum=maximum, positive=positive, choices=tuple(choices))
    return dataclasses.field(default=default, metadata={"spec": {**meta, "auto": auto}})


KINDS = (bool, int, float, str)


def kind_of(annotation: Any, name: str) -> tuple[type, bool]:
    """The kind of value (bool, int, float or str) a setting's annotation names, and whether None is allowed."""
    members = typing.get_args(annotation) or (annotation,)
    kinds = [member for member in members if member in KINDS]
    if not kinds:
        raise TypeError(f"setting {name} must be annotated with bool, int, float or str (or one of them | None)")
    return kinds[0], type(None) in members


def optional_like(settings_class: type, name: str, help: str) -> Any:
    """A field like ``settings_class``'s field ``name`` (its kind and range), but optional with default None."""
    (field,) = (field for field in dataclasses.fields(settings_class) if field.name == name)
    meta = {**field.metadata["spec"], "help": help}  # None allowed: annotate the field ``float | None``
    return dataclasses.field(default=None, metadata={"spec": meta})


def specs(settings_class: type) -> tuple[Spec, ...]:
    """The :class:`Spec` of every field of a settings class, in declaration order (read once per class)."""
    if settings_class not in SPECS:
        SPECS[settings_class] = read_specs(settings_class)
    return SPECS[settings_class]


#: the specs of every settings class read so far
SPECS: dict[type, tuple[Spec, ...]] = {}


def read_specs(settings_class: type) -> tuple[Spec, ...]:
    """:func:`specs`, read from the class's fields and annotations."""
    hints = typing.get_type_hints(settings_class)
    result = []
    for field in dataclasses.fields(settings_class):
        meta = dict(field.metadata["spec"])
        label = meta.pop("label") or field.name.replace("_", " ")
        kind, optional = kind_of(hints[field.name], field.name)
        result.append(Spec(name=field.name, default=field.default, label=label, kind=kind, optional=optional, **meta))
    return tuple(result)


def spec_named(settings_class: type, name: str) -> Spec:
    """The :class:`Spec` of the field ``name`` of a settings class."""
    (spec,) = (spec for spec in specs(settings_class) if spec.name == name)
    return spec


def validate(settings: Any) -> None:
    """Check and normalise every field of a frozen settings dataclass in place (``__post_init__``)."""
    for spec in specs(type(settings)):
        object.__setattr__(settings, spec.name, spec.check(getattr(settings, spec.name)))


def from_values(settings_class: type, values: dict[str, Any], what: str) -> Any:
    """``settings_class(**values)``; an unknown name is an :class:`InvalidInputError` listing the known ones."""
    known = {spec.name for spec in specs(settings_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return settings_class(**values)


# -- value checks (one error message per kind of mistake) ---------------------------------------


def check_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidInputError(f"{name} must be True or False, got {value!r}")


def check_integer(value: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> int:
    """A whole number (int, NumPy integer or integral float) within [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    _check_range(number, name, minimum, maximum, value)
    return number


def check_number(
    value: Any, name: str, minimum: float | None = None, maximum: float | None = None, positive: bool = False
) -> float:
    """A finite real number within [minimum, maximum] (> 0 when ``positive``)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    if positive and number <= 0:
        raise InvalidInputError(f"{name} must be > 0, got {value!r}")
    _check_range(number, name, None if positive else minimum, maximum, value)
    return number


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    if choices and not any(isinstance(value, type(choice)) and value == choice for choice in choices):
        raise InvalidInputError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if not choices and not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, got {type(value).__name__}")
    return value


def check_text(value: Any, name: str) -> str:
    """A prompt as text: None is empty, UTF-8 bytes are decoded; other bytes are refused by name.

    A command-line argument in another encoding (Latin-1 from a script) reaches Python as a
    str with escaped bytes (surrogates); those are decoded as UTF-8 or refused the same way.
    """
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return decode_utf8(bytes(value), name)
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, got {type(value).__name__}")
    if value.isascii() or not any("\ud800" <= char <= "\udfff" for char in value):
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{name} holds characters that are not text (lone surrogates)") from None
    return decode_utf8(raw, name)


def decode_utf8(raw: bytes, name: str) -> str:
    """``raw`` decoded as UTF-8; InvalidInputError naming the first bad byte otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.start + 1].hex()
        raise InvalidInputError(
            f"{name} is not UTF-8 text (byte 0x{bad} at position {error.start}; Latin-1 or another "
            "8-bit encoding?): write it as UTF-8, e.g. convert a script with 'iconv -f latin1 -t utf-8'"
        ) from None


def _check_range(number: float, name: str, minimum: float | None, maximum: float | None, given: Any) -> None:
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum:g}, got {given!r}")
    if maximum is not None and number > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum:g}, got {given!r}")
