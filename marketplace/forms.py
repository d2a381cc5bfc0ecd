"""Storefront forms: offer search (GET), renting from an offer, resizing and ending a lease.

Every form that changes something carries a hidden idempotency key, made fresh each time the form is rendered.
Submitting goes through scheduler.idempotency's `run_once` with that key (`IdempotentForm.submit`),
so a double click, a resubmitted POST or a retry after a lost answer does the work once and answers the same.
"""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy

from accounts.error_text import place_errors
from accounts.errors import DomainError
from accounts.formfields import AsciiDecimalField, AsciiIntegerField
from accounts.models import Organization
from billing import rating
from billing.display import PLAN_LABELS
from inventory.models import Interconnect, Offer
from inventory.selectors import gpu_models_listed
from marketplace import widget_html
from marketplace.search_page import listed_regions
from scheduler.idempotency import MAX_KEY_LENGTH, run_once
from scheduler.models import Plan
from scheduler.serializers import START_GRACE

ORDERING_CHOICES = [
    ("price", gettext_lazy("Price, lowest first")),
    ("-price", gettext_lazy("Price, highest first")),
    ("-gpus_free", gettext_lazy("Most cards free")),
    ("-reliability", gettext_lazy("Most reliable")),
    ("newest", gettext_lazy("Newest")),
]
MAX_MONTHS = 36
MAX_YEARS = 5


# --- time helpers -----------------------------------------------------------------------------------------


def add_months(start: datetime, months: int) -> datetime:
    """`start` plus `months` calendar months on the platform clock (the clock invoices count months by); a day
    past the end of the target month becomes its last day (31 January + 1 month = 28 or 29 February)."""
    zone = rating.platform_zone()
    local = start.astimezone(zone)
    years, month_index = divmod(local.month - 1 + months, 12)
    year, month = local.year + years, month_index + 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    wall = local.replace(tzinfo=None, year=year, month=month, day=day)
    return wall.replace(tzinfo=zone).astimezone(UTC)


# --- idempotent submission ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a submitted form did: `body` of the work on success, else the domain error's code, text and fields."""

    ok: bool
    body: dict[str, Any]
    code: str = ""
    message: str = ""
    fields: dict[str, Any] | None = None


class IdempotentForm(forms.Form):
    """A form with a hidden key, new on every render, that makes its submission happen at most once."""

    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=MAX_KEY_LENGTH, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["idempotency_key"].initial = uuid.uuid4().hex

    def renew_key(self) -> None:
        """Give the re-rendered form a fresh key: correcting the form and sending it again is a new request, not
        a replay of the refused one."""
        if self.is_bound:
            data = self.data.copy()
            data[self.add_prefix("idempotency_key")] = uuid.uuid4().hex
            self.data = data

    def submit(
        self, *, org: Organization, scope: str, payload: dict[str, Any], work: Callable[[], dict[str, Any]]
    ) -> Outcome:
        """Run `work` once per (organisation, scope, key), through scheduler.idempotency: a replay with the same
        key and payload answers the first outcome (success or a domain refusal such as no_capacity); the same key
        with another payload is refused. Invalid input (400) is never recorded, so a corrected form goes through.
        """
        key = (self.cleaned_data.get("idempotency_key") or "").strip() or None
        try:
            status, body = run_once(org=org, scope=scope, key=key, payload=payload, work=lambda: (200, work()))
        except DomainError as exc:
            return Outcome(ok=False, body={}, code=exc.code, message=exc.message, fields=exc.fields)
        if status >= 400:
            error = (body or {}).get("error", {})
            return Outcome(
                ok=False,
                body={},
                code=error.get("code", ""),
                message=error.get("message", ""),
                fields=error.get("fields"),
            )
        return Outcome(ok=True, body=body or {})


def describe_errors(form: forms.Form) -> None:
    """Tie each field with an error to the text beside it, for screen readers."""
    for name in form.errors:
        if name in form.fields:
            form.fields[name].widget.attrs["aria-describedby"] = f"{form[name].auto_id}_errors"
            form.fields[name].widget.attrs["aria-invalid"] = "true"


# --- search -------------------------------------------------------------------------------------------------


def _regions() -> list[tuple[str, str]]:
    regions = listed_regions()
    return [("", _("Any region")), *((r, r) for r in regions)]


class _LoadedChoices(forms.models.ModelChoiceIterator):
    """The choices from the field's queryset loaded once (its result cache) instead of read again with a server-side
    cursor (DECLARE, FETCH, CLOSE) each time the select renders."""

    def __iter__(self):
        if self.field.empty_label is not None:
            yield ("", self.field.empty_label)
        for obj in self.queryset:
            yield self.choice(obj)

    def __len__(self) -> int:
        return len(self.queryset) + (1 if self.field.empty_label is not None else 0)


class CatalogueChoiceField(forms.ModelChoiceField):
    """A choice of a small table's rows (the GPU catalogue) read in one statement per form: validating a value looks
    it up among the rows the select shows, as ModelChoiceField's own `get` would find it (the same key conversion,
    the same error), so the page's select and its validation never disagree and cost one query together."""

    iterator = _LoadedChoices

    def to_python(self, value: Any) -> Any:
        if value in self.empty_values:
            return None
        self.validate_no_null_characters(value)
        model = self.queryset.model
        try:
            if isinstance(value, model):
                value = value.pk
            key = model._meta.pk.get_prep_value(value)
        except (ValueError, TypeError):
            key = None
        for obj in self.queryset if key is not None else ():
            if obj.pk == key:
                return obj
        raise forms.ValidationError(
            self.error_messages["invalid_choice"], code="invalid_choice", params={"value": value}
        )


class OfferSearchForm(forms.Form):
    """The search filters; every field optional, and a bad value is reported beside its field."""

    gpu_model = CatalogueChoiceField(
        label=gettext_lazy("GPU model"),
        queryset=gpu_models_listed(),
        required=False,
        widget=widget_html.Select,
        empty_label=gettext_lazy("Any model"),
    )
    min_gpus = AsciiIntegerField(
        label=gettext_lazy("Cards free now, at least"),
        min_value=1,
        max_value=16,
        required=False,
        widget=widget_html.NumberInput,
    )
    region = forms.ChoiceField(label=gettext_lazy("Region"), required=False, widget=widget_html.Select)
    plan = forms.ChoiceField(
        label=gettext_lazy("Plan"),
        required=False,
        choices=[("", gettext_lazy("Any plan")), *PLAN_LABELS.items()],
        widget=widget_html.Select,
    )
    interruptible = forms.BooleanField(
        label=gettext_lazy("Interruptible prices"), required=False, widget=widget_html.CheckboxInput
    )
    min_price = AsciiDecimalField(
        label=gettext_lazy("Price from"),
        min_value=0,
        max_digits=20,
        decimal_places=6,
        required=False,
        widget=widget_html.NumberInput,
    )
    max_price = AsciiDecimalField(
        label=gettext_lazy("Price up to"),
        min_value=0,
        max_digits=20,
        decimal_places=6,
        required=False,
        widget=widget_html.NumberInput,
    )
    interconnect = forms.ChoiceField(
        label=gettext_lazy("Interconnect"),
        required=False,
        choices=[("", gettext_lazy("Any interconnect")), *Interconnect.choices],
        widget=widget_html.Select,
    )
    min_reliability = AsciiDecimalField(
        label=gettext_lazy("Reliability at least (%)"),
        min_value=0,
        max_value=100,
        max_digits=6,
        decimal_places=3,
        required=False,
        widget=widget_html.NumberInput,
    )
    currency = forms.ChoiceField(
        label=gettext_lazy("Currency"), choices=Organization.Currency.choices, required=False, widget=widget_html.Select
    )
    ordering = forms.ChoiceField(
        label=gettext_lazy("Sort by"), choices=ORDERING_CHOICES, required=False, widget=widget_html.Select
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["region"].choices = _regions()
        for name in ("min_gpus", "min_price", "max_price", "min_reliability"):
            self.fields[name].widget.attrs["inputmode"] = "numeric" if name == "min_gpus" else "decimal"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            self.add_error("max_price", _("Must not be below the lowest price."))
        return data


# --- renting ------------------------------------------------------------------------------------------------

DATETIME_WIDGET = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class RentForm(IdempotentForm):
    """Rent from one offer. The fields of the chosen plan are required; the others are ignored.

    Times are UTC (the pages say so). `end_at` is computed: card_hour takes an optional end, server_month a number
    of calendar months, pflops_year a term in years, all from the start (a reservation) or now.
    """

    # The page shows the chosen plan's fields (data-show-when, static/js/suanli.js); without JavaScript, every plan's.
    plan = forms.ChoiceField(label=gettext_lazy("Plan"), widget=forms.RadioSelect)
    gpu_count = AsciiIntegerField(label=gettext_lazy("Cards"), min_value=1, max_value=16, required=False)
    end_at = forms.DateTimeField(label=gettext_lazy("End (optional, UTC)"), required=False, widget=DATETIME_WIDGET)
    months = AsciiIntegerField(label=gettext_lazy("Months"), min_value=1, max_value=MAX_MONTHS, required=False)
    pflops = AsciiDecimalField(
        label=gettext_lazy("PFLOPS"), min_value=Decimal("0.001"), max_digits=12, decimal_places=3, required=False
    )
    term_years = AsciiIntegerField(
        label=pgettext_lazy("contract term", "Term (years)"), min_value=1, max_value=MAX_YEARS, required=False
    )
    start_at = forms.DateTimeField(
        label=gettext_lazy("Start (optional, UTC): reserve for later"), required=False, widget=DATETIME_WIDGET
    )
    interruptible = forms.BooleanField(label=gettext_lazy("Interruptible (cheaper, may be preempted)"), required=False)

    # Which field a service error about a plan's quantity or end belongs beside.
    QUANTITY_FIELD = {Plan.CARD_HOUR: "gpu_count", Plan.SERVER_MONTH: "months", Plan.PFLOPS_YEAR: "pflops"}
    END_FIELD = {Plan.CARD_HOUR: "end_at", Plan.SERVER_MONTH: "months", Plan.PFLOPS_YEAR: "term_years"}

    def __init__(self, *args: Any, offer: Offer, now: datetime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offer = offer
        self.now = now
        plans = [plan for plan in Plan if offer.price(plan) is not None]
        self.fields["plan"].choices = [(plan.value, PLAN_LABELS[plan]) for plan in plans]
        if plans:
            self.fields["plan"].initial = plans[0].value
        gpus = self.fields["gpu_count"]
        gpus.widget.attrs.update({"min": offer.min_gpus, "max": offer.server.gpu_count, "inputmode": "numeric"})
        gpus.initial = offer.min_gpus
        self.fields["months"].initial = 1
        self.fields["term_years"].initial = 1
        self.fields["pflops"].widget.attrs.update({"step": "0.001", "inputmode": "decimal"})

    @property
    def chosen_plan(self) -> str:
        """The plan asked for, even on a form that is not valid (to show its fields)."""
        if self.is_bound:
            value = self.data.get(self.add_prefix("plan"))
            if value in dict(self.fields["plan"].choices):
                return str(value)
        return str(self.fields["plan"].initial or "")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        plan = data.get("plan")
        if not plan:
            return data
        interruptible = data.get("interruptible", False)
        if interruptible and self.offer.price(plan, interruptible=True) is None:
            self.add_error("interruptible", _("This offer has no interruptible price for this plan."))
        needed = {
            Plan.CARD_HOUR: ["gpu_count"],
            Plan.SERVER_MONTH: ["months"],
            Plan.PFLOPS_YEAR: ["pflops", "term_years"],
        }[plan]
        for name in needed:
            if data.get(name) is None and name not in self.errors:
                self.add_error(name, _("Required for this plan."))
        gpu_count = data.get("gpu_count")
        if plan == Plan.CARD_HOUR and gpu_count is not None:
            least, most = self.offer.min_gpus, self.offer.server.gpu_count
            if gpu_count < least:
                self.add_error("gpu_count", _("This offer rents at least %(count)s cards.") % {"count": least})
            elif gpu_count > most:
                self.add_error("gpu_count", _("This server has %(count)s cards.") % {"count": most})
        start_at = data.get("start_at")
        horizon = settings.SUANLI_RESERVATION_HORIZON_DAYS
        if start_at is not None:
            if start_at < self.now - START_GRACE:
                self.add_error("start_at", _("Must not be in the past."))
            elif start_at > self.now + timedelta(days=horizon):
                self.add_error("start_at", _("Reservations can start at most %(days)s days ahead.") % {"days": horizon})
        start = start_at if start_at and start_at > self.now else self.now
        data["start"] = start
        end = self.end_for(plan, start, data)
        data["end"] = end
        end_field = self.END_FIELD[plan]
        if plan == Plan.CARD_HOUR and end is not None and end <= start:
            self.add_error("end_at", _("Must be after the start (and in the future)."))
        until = self.offer.available_until
        if until is not None and end_field not in self.errors:
            if end is None:
                self.add_error(
                    end_field,
                    _("This offer ends at %(until)s UTC: choose an end no later than that.")
                    % {"until": until.strftime("%Y-%m-%d %H:%M")},
                )
            elif end > until:
                self.add_error(
                    end_field,
                    _("This offer ends at %(until)s UTC, before this lease would.")
                    % {"until": until.strftime("%Y-%m-%d %H:%M")},
                )
        return data

    @staticmethod
    def end_for(plan: str, start: datetime, data: dict[str, Any]) -> datetime | None:
        if plan == Plan.CARD_HOUR:
            return data.get("end_at")
        if plan == Plan.SERVER_MONTH:
            months = data.get("months")
            return add_months(start, months) if months else None
        years = data.get("term_years")
        return add_months(start, 12 * years) if years else None

    def lease_arguments(self) -> dict[str, Any]:
        """scheduler.services.lease_create's arguments (less org and offer) from a valid form."""
        data = self.cleaned_data
        plan = data["plan"]
        return {
            "plan": plan,
            "gpu_count": data["gpu_count"] if plan == Plan.CARD_HOUR else None,
            "servers": 1 if plan == Plan.SERVER_MONTH else None,
            "pflops": data["pflops"] if plan == Plan.PFLOPS_YEAR else None,
            "start_at": data["start_at"],
            "end_at": data["end"],
            "interruptible": data["interruptible"],
        }

    def add_service_errors(self, fields: dict[str, Any] | None, message: str) -> None:
        """Put the scheduler's field errors beside our fields (its `servers` and `end_at` are ours by plan)."""
        plan = self.cleaned_data.get("plan", Plan.CARD_HOUR)
        names = {
            "servers": "months",
            "end_at": self.END_FIELD[plan],
            "pflops": "pflops",
            "gpu_count": "gpu_count",
            "start_at": "start_at",
        }
        place_errors(self, fields, message, names=names)


# --- a lease ------------------------------------------------------------------------------------------------


class ResizeForm(IdempotentForm):
    gpu_count = AsciiIntegerField(label=gettext_lazy("Cards"), min_value=1, max_value=256)

    def __init__(self, *args: Any, current: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["gpu_count"].initial = current
        self.fields["gpu_count"].widget.attrs["inputmode"] = "numeric"


class EndForm(IdempotentForm):
    """Ending asks first: in the browser (a confirm dialog, which then sends `confirm`), or, without JavaScript, on
    the page that a POST without `confirm` renders."""

    confirm = forms.BooleanField(required=False, widget=forms.HiddenInput)
