"""The bounds of everything a client can send, in one place (API.md: Errors, "never 500 for anything a client can
send"). A value outside them is a 400 naming the field, before any arithmetic or any query sees it.

- Numbers are ASCII digits only: Python's int(), float() and Decimal() also take "１２.５０" (full-width), "١٢"
  (Arabic-Indic) and "1_000"; a price or a card count in those is refused, not guessed at.
- Integers fit PostgreSQL's `integer` unless a field says otherwise (min_value/max_value), so 2**31 cards is a 400,
  not a DataError; ids (a related field's primary key) fit `bigint`.
- Times lie within the platform's calendar, [EARLIEST, LATEST): a window subtracted from "0001-01-01" or a UTC
  offset applied to "9999-12-31" cannot overflow.
- Text is what PostgreSQL can store: no NUL, no lone surrogate (DRF's CharField checks its own value; here also
  the keys of a DictField and every string inside a JSONField).

Every input serializer is a `StrictSerializer` (accounts/serializers.py), whose fields `harden` walks when they are
bound, so a new field gets these bounds without anyone remembering to add them. Query parameters outside a
serializer and the agent reports, which are not serializers, use the same helpers (`query_int`, `ascii_int`,
`within_platform_time`, `storable`, `clean_text`).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from rest_framework import relations, serializers

from accounts.errors import InvalidInput

INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # PostgreSQL integer
BIGINT_MAX = 2**63 - 1  # PostgreSQL bigint: every primary key
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

_ASCII_INT = re.compile(r"[ \t]*[+-]?[0-9]+(?:\.0*)?[ \t]*")
_ASCII_DECIMAL = re.compile(r"[ \t]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?[ \t]*")
_DIGITS = re.compile(r"[0-9]{1,19}")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")

ASCII_DIGITS = "Use ASCII digits (0-9)."
UNSTORABLE = "NUL characters and lone surrogates are not allowed."
OUT_OF_TIME = f"Must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}."


# --- the helpers -----------------------------------------------------------------------------------------------


def storable(text: str) -> bool:
    """Whether PostgreSQL can store `text` (and UTF-8 encode it): no NUL, no lone surrogate."""
    return not _UNSTORABLE.search(text)


def clean_text(text: str) -> str:
    """Free text made storable, for what is better kept than refused (an agent's message): NUL dropped, a lone
    surrogate replaced with U+FFFD."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def storable_json(value: Any) -> bool:
    """Whether every string (key or value) of decoded JSON is `storable`. Iterative: no recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def within_platform_time(value: datetime | date) -> bool:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        try:
            return EARLIEST <= value < LATEST
        except OverflowError:  # comparing converts to UTC, which can itself overflow at the calendar's ends
            return False
    return EARLIEST.date() <= value < LATEST.date()


def ascii_int(value: object, low: int = INT_MIN, high: int = INT_MAX) -> int | None:
    """An int from a JSON int or a string of ASCII digits (with an optional sign) in [low, high]; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip(" \t")
        sign = -1 if text[:1] == "-" else 1
        text = text[1:] if text[:1] in "+-" else text
        if not _DIGITS.fullmatch(text):
            return None
        value = sign * int(text)
    if not isinstance(value, int):
        return None
    return value if low <= value <= high else None


def ascii_number(text: str) -> bool:
    """Whether `text` is a number in ASCII digits (sign, decimal point and exponent allowed)."""
    return bool(_ASCII_DECIMAL.fullmatch(text))


def query_int(params: Any, name: str, *, low: int = 1, high: int = INT_MAX, default: int | None = None) -> int | None:
    """Query parameter `name` as an int in [low, high]; absent or empty is `default`; anything else is a 400."""
    raw = params.get(name)
    if raw in (None, ""):
        return default
    value = ascii_int(raw, low, high)
    if value is None:
        raise InvalidInput(
            f"{name} must be a whole number from {low} to {high}.",
            fields={name: [f"A whole number from {low} to {high}, in ASCII digits."]},
        )
    return value


# --- the fields: mixins `harden` puts in front of a bound field's class ---------------------------------------


class AsciiNumber:
    """Numbers given as strings must be ASCII digits (a JSON number always is)."""

    ascii_pattern = _ASCII_DECIMAL

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and not self.ascii_pattern.fullmatch(data):
            raise serializers.ValidationError(ASCII_DIGITS, code="invalid")
        return super().to_internal_value(data)


class AsciiInteger(AsciiNumber):
    ascii_pattern = _ASCII_INT


class PlatformTime:
    """A date or time in ASCII within [EARLIEST, LATEST)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and not data.isascii():
            raise serializers.ValidationError(ASCII_DIGITS, code="invalid")
        value = super().to_internal_value(data)
        if isinstance(value, date) and not within_platform_time(value):
            raise serializers.ValidationError(OUT_OF_TIME, code="out_of_range")
        return value


class StorableKeys:
    """A DictField's keys are text too."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and not all(storable(str(key)) for key in data):
            raise serializers.ValidationError(UNSTORABLE, code="null_characters_not_allowed")
        return super().to_internal_value(data)


class StorableJson:
    """Every string inside a JSONField."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not storable_json(value):
            raise serializers.ValidationError(UNSTORABLE, code="null_characters_not_allowed")
        return value


class BoundedPrimaryKey:
    """A related object's id: a JSON int or ASCII digits, 1..BIGINT_MAX, before any query sees it."""

    def to_internal_value(self, data: Any) -> Any:
        if ascii_int(data, 1, BIGINT_MAX) is None:
            if isinstance(data, bool) or not isinstance(data, int | str):
                self.fail("incorrect_type", data_type=type(data).__name__)
            self.fail("does_not_exist", pk_value=str(data)[:40])
        return super().to_internal_value(data)


_MIXINS: list[tuple[type, type]] = [
    (serializers.IntegerField, AsciiInteger),
    (serializers.DecimalField, AsciiNumber),
    (serializers.FloatField, AsciiNumber),
    (serializers.DateTimeField, PlatformTime),
    (serializers.DateField, PlatformTime),
    (serializers.DictField, StorableKeys),
    (serializers.JSONField, StorableJson),
    (relations.PrimaryKeyRelatedField, BoundedPrimaryKey),
]


@cache
def _hardened_class(cls: type, mixin: type) -> type:
    return type(cls.__name__, (mixin, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


def _bound_integer(field: serializers.IntegerField) -> None:
    if field.min_value is None:
        field.min_value = INT_MIN
        message = field.error_messages["min_value"].format(min_value=INT_MIN)
        field.validators.append(MinValueValidator(INT_MIN, message=message))
    if field.max_value is None:
        field.max_value = INT_MAX
        message = field.error_messages["max_value"].format(max_value=INT_MAX)
        field.validators.append(MaxValueValidator(INT_MAX, message=message))


def harden(field: serializers.Field) -> serializers.Field:
    """Give a bound input field the bounds above (in place; returns it). Read-only fields take no input."""
    if field.read_only:
        return field
    if isinstance(field, serializers.ListField | serializers.DictField) and field.child is not None:
        harden(field.child)
    if isinstance(field, serializers.ManyRelatedField):
        harden(field.child_relation)
    if isinstance(field, serializers.IntegerField):
        _bound_integer(field)
    for base, mixin in _MIXINS:
        if isinstance(field, base) and not isinstance(field, mixin):
            field.__class__ = _hardened_class(type(field), mixin)
            break
    return field
