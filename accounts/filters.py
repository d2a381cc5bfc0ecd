"""The list endpoints' filters (`filterset_fields`): django-filter's backend, with numbers held to the same rule as
every other input (accounts/inputs.py): ASCII digits only. Django's form fields take "１" for 1, as int() does."""

from __future__ import annotations

import django_filters
from django_filters.rest_framework import DjangoFilterBackend

from accounts.errors import InvalidInput
from accounts.inputs import ASCII_DIGITS, BIGINT_MAX, ascii_int, ascii_number


class FilterBackend(DjangoFilterBackend):
    def filter_queryset(self, request, queryset, view):
        filterset_class = self.get_filterset_class(view, queryset)
        for name, spec in filterset_class.base_filters.items() if filterset_class else ():
            value = request.query_params.get(name)
            if value in (None, ""):
                continue
            if isinstance(spec, django_filters.ModelChoiceFilter):
                sound = ascii_int(value, 1, BIGINT_MAX) is not None
            elif isinstance(spec, django_filters.NumberFilter):
                sound = ascii_number(value)
            else:
                continue
            if not sound:
                raise InvalidInput(f"{name}: {ASCII_DIGITS}", fields={name: [ASCII_DIGITS]})
        return super().filter_queryset(request, queryset, view)
