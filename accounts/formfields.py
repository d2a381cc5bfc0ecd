"""Form fields for the pages: numbers in ASCII digits only, as in the API (accounts/inputs.py).

Python's int() and Decimal() read any Unicode digit ("１２.５０", "١٢"), so Django's own number fields accept them;
a price or a count a provider typed with a full-width keyboard must be refused, not silently read.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy

from accounts.inputs import ascii_number

ASCII_DIGITS = gettext_lazy("Use ASCII digits (0-9).")


def _ascii(value: Any) -> None:
    if isinstance(value, str) and value.strip() and not ascii_number(value):
        raise forms.ValidationError(ASCII_DIGITS, code="invalid")


class AsciiIntegerField(forms.IntegerField):
    def to_python(self, value: Any) -> int | None:
        _ascii(value)
        return super().to_python(value)


class AsciiDecimalField(forms.DecimalField):
    def to_python(self, value: Any) -> Any:
        _ascii(value)
        return super().to_python(value)
