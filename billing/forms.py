"""The month picker of the staff pages that close or reconcile a month (marketplace's close page, billing's
reconciliation page): one field, YYYY-MM, defaulting to the last month that is over."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.error_text import error_text
from accounts.errors import Conflict, DomainError
from billing.invoicing import period_of


class PeriodForm(forms.Form):
    period = forms.RegexField(
        label=gettext_lazy("Month (YYYY-MM)"),
        regex=r"^\d{4}-(0[1-9]|1[0-2])$",
        error_messages={"invalid": gettext_lazy("Use YYYY-MM, e.g. 2026-05.")},
        widget=forms.TextInput(attrs={"placeholder": "2026-05", "inputmode": "numeric", "autocomplete": "off"}),
    )

    def refuse(self, label: str, exc: DomainError) -> None:
        """The month service's refusal beside the field: a month not over yet says when it ends."""
        if isinstance(exc, Conflict):
            ends = period_of(label).end
            message = _("%(period)s is not over yet: it ends %(end)s UTC.") % {
                "period": label,
                "end": ends.strftime("%Y-%m-%d %H:%M"),
            }
        else:
            message = error_text(exc.message)
        self.add_error("period", message)

    def describe_errors(self) -> None:
        """Tie the field to its error text, for screen readers."""
        if self.errors:
            self.fields["period"].widget.attrs.update({"aria-invalid": "true", "aria-describedby": "id_period_errors"})
