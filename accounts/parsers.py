"""The one JSON decoder of request bodies: the API's parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES) and the agent
reports, which are verified over their raw bytes and decoded here too (inventory/ingest.py load_report).

Refused with a 400, never a traceback (API.md: Errors):
- nesting deeper than MAX_DEPTH, measured by a scan of the text before it is decoded (Python's decoder recurses, and
  a few KB of `[` would end in a RecursionError; nothing the API takes nests more than a few levels);
- NaN, Infinity and -Infinity (not JSON; no column stores them);
- bytes that are not UTF-8;
- for the API, strings with a lone surrogate (`"\\ud800"`: valid JSON syntax, but no text PostgreSQL or UTF-8 can
  hold; I-JSON, RFC 7493, refuses them too). Agent reports keep them: their free text (a workload's message) is
  cleaned instead, and their other strings are checked field by field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 64

# The next quote or bracket; and the rest of a string after its opening quote (brackets inside a string do not
# count). Each character is looked at once: the scan is linear, whatever the text.
_NEXT = re.compile(r'["\[\]{}]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# A \uD800-\uDFFF escape somewhere in the text: only then can a decoded string hold a surrogate (decoded UTF-8 never
# does), so only then are the strings walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SURROGATE = re.compile("[\ud800-\udfff]")


class MalformedJson(ValueError):
    """The body is not JSON this platform takes; the message says why, for the client."""


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    if text.count("[") + text.count("{") <= limit:
        return  # nesting needs an opening bracket per level: this text cannot go deeper (two C-speed counts)
    depth, position = 0, 0
    while match := _NEXT.search(text, position):
        char, position = match.group(), match.end()
        if char == '"':
            rest = _STRING_REST.match(text, position)
            if rest is None:
                raise MalformedJson("A string is not terminated.")
            position = rest.end()
        elif char in "[{":
            depth += 1
            if depth > limit:
                raise MalformedJson(f"JSON nested deeper than {limit} levels.")
        else:
            depth -= 1


def _refuse_constant(name: str) -> None:
    raise MalformedJson(f"{name} is not allowed.")


def has_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in decoded JSON holds a lone surrogate. Iterative: no recursion at all."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(data: bytes | str, *, allow_surrogates: bool = False) -> Any:
    """Decode a request body; MalformedJson (a ValueError) for anything refused above."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedJson("The body is not UTF-8.") from None
    else:
        text = data
    check_depth(text)
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # not reached after check_depth; kept so that no decoder path can end in a 500
        raise MalformedJson(f"JSON nested deeper than {MAX_DEPTH} levels.") from None
    except MalformedJson:
        raise
    except ValueError as exc:  # json.JSONDecodeError, and ints over Python's 4,300-digit limit
        raise MalformedJson(str(exc)) from None
    if not allow_surrogates and _SURROGATE_ESCAPE.search(text) and has_surrogate(value):
        raise MalformedJson("A string holds a lone UTF-16 surrogate (\\ud800-\\udfff).")
    return value


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with the limits above; a refused body is a ParseError (400 `malformed_request`)."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = parsers.get_encoding(parser_context or {})
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise ParseError(f"JSON parse error - the body is not {encoding}.") from None
        try:
            return loads(text)
        except MalformedJson as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
