"""Customer pages for the organisation's money, mounted at /balance/ (billing/urls_balance_pages.py): what it has
paid in and may still spend, what it spends this month (per lease, per day, as CSV) and an hour, when it runs out,
its ledger, a top-up through Stripe and its monthly spend cap.

Thin: every figure is `billing.balances.standing` (the same reading as GET /api/v1/balance/ and as admission and
the funds job), the per-day rows `billing.selectors.spending_by_day`; a top-up is `top_up_start` and a cap
`spend_limit_set`, the services the API calls. Any member of a customer organisation may read the page; topping up
and setting the cap are for the roles that may pay (accounts.permissions.BILLING), as paying an invoice is. A
provider-only organisation has no balance page (403).

A top-up form posts here, not to the API: the page makes the PaymentIntent with the session and answers with the
Stripe.js payment element (static/js/balance_top_up.js), or with the form's errors; the balance rises only when
Stripe's webhook says the payment succeeded (billing/topups.py).
"""

from __future__ import annotations

import calendar
import csv
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST, require_safe

from accounts.error_text import place_errors
from accounts.errors import InvalidInput
from accounts.formfields import AsciiDecimalField
from accounts.inputs import ascii_number
from accounts.models import Organization
from accounts.permissions import BILLING, has_role
from billing import rating, services
from billing.balances import Standing, standing
from billing.display import PLAN_LABELS, money_text
from billing.funds import spend_limit_of
from billing.invoicing import period_containing
from billing.models import BalanceEntry
from billing.selectors import spending_by_day
from billing.stripe_gateway import PaymentsNotConfigured, StripeUnavailable
from billing.terms import Terms, terms_of
from scheduler.models import Lease
from workloads.models import Volume

LEDGER_ROWS = 50
CSV_HEADER = ["date", "lease", "plan", "amount", "currency", "volume"]

MODE_TEXT = {"prepaid": gettext_lazy("Prepaid"), "postpaid": gettext_lazy("Postpaid (monthly invoice)")}
NOT_CONFIGURED = gettext_lazy("Online payment is not configured on this site. Please contact us to pay.")
# What Stripe.js appends to the return URL after confirming a top-up (redirect_status), said to the customer.
RETURN_TEXT = {
    "succeeded": gettext_lazy(
        "Thank you: your payment went through. Your balance rises as soon as Stripe confirms it to us."
    ),
    "processing": gettext_lazy("Your payment is being processed. Your balance rises once it has gone through."),
    "failed": gettext_lazy("The payment did not go through. You can try again with another payment method."),
}


# --- forms --------------------------------------------------------------------------------------------------


class _Described(forms.Form):
    def describe_errors(self) -> None:
        """Tie each field with an error to the text beside it, for screen readers."""
        for name in self.errors:
            if name in self.fields:
                self.fields[name].widget.attrs["aria-invalid"] = "true"
                self.fields[name].widget.attrs["aria-describedby"] = f"{self[name].auto_id}_errors"


class TopUpForm(_Described):
    """How much to pay in, in the organisation's currency (the site's minimum to maximum)."""

    prefix = "top_up"
    # One key per rendered form: posting it twice (a double click, a reload) starts one payment (top_up_start).
    attempt = forms.RegexField(
        regex=r"\A[0-9a-f]{32}\Z", required=False, widget=forms.HiddenInput, initial=lambda: uuid.uuid4().hex
    )
    amount = AsciiDecimalField(
        label=gettext_lazy("Amount"),
        max_digits=15,
        decimal_places=2,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        low, high = settings.SUANLI_TOP_UP_MIN, settings.SUANLI_TOP_UP_MAX
        if not low <= amount <= high:
            raise forms.ValidationError(
                _("A top-up is from %(low)s to %(high)s.") % {"low": low, "high": high}, code="range"
            )
        return amount


class SpendLimitForm(_Described):
    """A monthly cap (empty: none) and the percentages of it at which the organisation is e-mailed."""

    prefix = "limit"
    monthly_cap = AsciiDecimalField(
        label=gettext_lazy("Monthly cap"),
        required=False,
        min_value=Decimal(0),
        max_digits=15,
        decimal_places=2,
        help_text=gettext_lazy("Leases that would pass it are refused. Leave it empty for no cap."),
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    alert_at = forms.CharField(
        label=gettext_lazy("E-mail alerts at (percent of the cap)"),
        required=False,
        max_length=60,
        help_text=gettext_lazy("One to five percentages, e.g. 50, 90. Empty: 50 and 90."),
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )

    def clean_alert_at(self) -> list[Decimal] | None:
        """'50, 90' -> [0.5, 0.9]; empty -> None (the site's default shares)."""
        text = self.cleaned_data["alert_at"].replace("%", " ").replace(",", " ")
        parts = text.split()
        if not parts:
            return None
        message = _("One to five percentages, each above 0 and at most 100 (e.g. 50, 90).")
        if len(parts) > 5 or not all(ascii_number(part) for part in parts):
            raise forms.ValidationError(message, code="invalid")
        try:
            shares = sorted({Decimal(part) / 100 for part in parts})
        except InvalidOperation:
            raise forms.ValidationError(message, code="invalid") from None
        if not all(share.is_finite() and 0 < share <= 1 for share in shares):
            raise forms.ValidationError(message, code="invalid")
        return shares


def _percent_text(shares: list[Decimal]) -> str:
    return ", ".join(f"{(share * 100).normalize():f}" for share in shares)


# --- what the page shows --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRow:
    lease: Lease
    plan: str
    state: str
    month_to_date: str
    per_hour: str


@dataclass(frozen=True)
class VolumeRow:
    volume: Volume
    state: str
    wipe_at: datetime | None  # in grace: when its data is wiped unless the organisation pays
    wipe_text: str
    month_to_date: str
    per_hour: str


@dataclass(frozen=True)
class DayBar:
    day: date
    label: str
    amount: str
    spent: bool
    x: str
    y: str
    height: str


@dataclass(frozen=True)
class LedgerRow:
    entry: BalanceEntry
    kind: str
    amount: str
    reference: str


def _customer_org(request: HttpRequest) -> Organization:
    """The caller's customer organisation; a provider-only organisation (or none) has no balance page (403)."""
    org: Organization | None = getattr(request, "org", None)
    if org is None or not org.is_customer:
        raise PermissionDenied
    return org


def _runs_out_text(money: Standing) -> tuple[str, datetime | None]:
    """When the organisation's money runs out at its burn, in words, and the instant when there is one."""
    if money.available is None:
        return _("Never: no credit limit"), None
    at = money.runs_out_at
    if at is None:
        return _("Never at this rate"), None
    if at <= money.as_of:
        return _("Now: nothing is left to spend"), at
    return formats.date_format(at, "DATETIME_FORMAT", use_l10n=True) + " UTC", at


def _lease_rows(org: Organization, money: Standing) -> list[LeaseRow]:
    """This month's leases and the running ones: what each cost this month and costs an hour."""
    spent = money.this_month.per_lease
    ids = set(spent) | set(money.burn_per_lease)
    currency = money.currency
    return [
        LeaseRow(
            lease=lease,
            plan=str(PLAN_LABELS.get(lease.plan, lease.plan)),
            state=lease.get_state_display(),
            month_to_date=money_text(rating.to_money(spent.get(lease.pk, Decimal(0))), currency),
            per_hour=money_text(rating.to_money(money.burn_per_lease.get(lease.pk, Decimal(0))), currency),
        )
        for lease in Lease.objects.for_org(org).filter(pk__in=ids).order_by("-pk")
    ]


def _volume_rows(org: Organization, money: Standing) -> list[VolumeRow]:
    """This month's volumes and those not wiped yet: what each cost this month and costs an hour, and for one in
    grace when it is wiped."""
    spent = money.this_month.per_volume
    ids = set(spent) | set(money.burn_per_volume)
    currency = money.currency
    return [
        VolumeRow(
            volume=volume,
            state=volume.get_state_display(),
            wipe_at=volume.wipe_at,
            wipe_text=formats.date_format(volume.wipe_at, "DATETIME_FORMAT", use_l10n=True) + " UTC"
            if volume.wipe_at
            else "",
            month_to_date=money_text(rating.to_money(spent.get(volume.pk, Decimal(0))), currency),
            per_hour=money_text(rating.to_money(money.burn_per_volume.get(volume.pk, Decimal(0))), currency),
        )
        for volume in Volume.objects.for_org(org).filter(pk__in=ids).order_by("-pk")
    ]


def _day_bars(money: Standing) -> list[DayBar]:
    """Every day of this month as a bar of the chart: x, y and height in the SVG's 10-per-day, 100-high box."""
    zone = rating.platform_zone()
    local = money.as_of.astimezone(zone)
    days = calendar.monthrange(local.year, local.month)[1]
    daily = money.this_month.daily
    top = max(daily.values(), default=Decimal(0))
    bars = []
    for number in range(1, days + 1):
        day = date(local.year, local.month, number)
        amount = daily.get(day, Decimal(0))
        height = float(amount / top * 95) if top > 0 else 0.0
        bars.append(
            DayBar(
                day=day,
                label=formats.date_format(day, "MONTH_DAY_FORMAT", use_l10n=True),
                amount=money_text(amount, money.currency),
                spent=amount != 0,
                x=f"{(number - 1) * 10 + 1:.0f}",
                y=f"{100 - height:.3f}",
                height=f"{height:.3f}",
            )
        )
    return bars


def _ledger_rows(org: Organization) -> list[LedgerRow]:
    entries = BalanceEntry.objects.for_org(org).select_related("invoice", "credit_note")[:LEDGER_ROWS]
    rows = []
    for entry in entries:
        reference = entry.reference or entry.reason
        if entry.invoice is not None:
            reference = entry.invoice.number
        elif entry.credit_note is not None:
            reference = entry.credit_note.number
        rows.append(
            LedgerRow(
                entry=entry,
                kind=entry.get_kind_display(),
                amount=money_text(entry.amount, entry.currency),
                reference=reference,
            )
        )
    return rows


def _stripe_locale() -> str:
    return "zh" if (get_language() or "").startswith("zh") else "en"


def _page(
    request: HttpRequest,
    *,
    top_up_form: TopUpForm | None = None,
    limit_form: SpendLimitForm | None = None,
    top_up_problem: str = "",
    status: int = 200,
) -> HttpResponse:
    org = _customer_org(request)
    money = standing(org)
    terms: Terms = money.terms
    pays = has_role(request, BILLING)
    cap, shares = spend_limit_of(org)
    if limit_form is None:
        limit_form = SpendLimitForm(initial={"monthly_cap": cap, "alert_at": _percent_text(shares)})
    top_up_form = top_up_form or TopUpForm()
    for form in (top_up_form, limit_form):
        form.describe_errors()
    runs_out, runs_out_at = _runs_out_text(money)
    currency = money.currency
    bars = _day_bars(money)
    context: dict[str, Any] = {
        "org": org,
        "currency": currency,
        "mode": terms.mode,
        "mode_label": MODE_TEXT.get(terms.mode, terms.mode),
        "balance": money_text(money.balance, currency),
        "credit_limit": money_text(terms.credit_limit, currency) if terms.credit_limit is not None else "",
        "available": money_text(money.available, currency) if money.available is not None else "",
        "unpaid": money_text(money.unpaid, currency) if money.unpaid else "",
        "month_to_date": money_text(money.month_to_date, currency),
        "burn_per_hour": money_text(rating.to_money(money.burn_per_hour), currency),
        "runs_out": runs_out,
        "runs_out_at": runs_out_at,
        "monthly_cap": money_text(cap, currency) if cap is not None else "",
        "alert_at": _percent_text(shares),
        "this_period": period_containing(money.as_of).label,
        "leases": _lease_rows(org, money),
        "volumes": (volumes := _volume_rows(org, money)),
        "volumes_in_grace": [row for row in volumes if row.wipe_at is not None],
        "bars": bars,
        "spent_days": [bar for bar in bars if bar.spent],
        "chart_width": len(bars) * 10,
        "ledger": _ledger_rows(org),
        "can_pay": pays,
        "payments_configured": bool(settings.STRIPE_PUBLISHABLE_KEY),
        "top_up_form": top_up_form,
        "top_up_problem": top_up_problem,
        "limit_form": limit_form,
        "top_up_range": {"low": settings.SUANLI_TOP_UP_MIN, "high": settings.SUANLI_TOP_UP_MAX},
        "return_text": RETURN_TEXT.get(request.GET.get("redirect_status", "")),
        "not_configured_text": str(NOT_CONFIGURED),
    }
    return render(request, "billing/balance.html", context, status=status)


def _require_billing(request: HttpRequest) -> Organization:
    org = _customer_org(request)
    if not has_role(request, BILLING):
        raise PermissionDenied
    return org


# --- pages ------------------------------------------------------------------------------------------------


@login_required
@require_safe
def balance(request: HttpRequest) -> HttpResponse:
    """The organisation's money now, this month's spending, its ledger, and the top-up and cap forms."""
    return _page(request)


@require_POST
@login_required
def top_up(request: HttpRequest) -> HttpResponse:
    """Start a top-up: a Stripe PaymentIntent for the amount, then the payment element to confirm it."""
    org = _require_billing(request)
    form = TopUpForm(request.POST)
    if not form.is_valid():
        return _page(request, top_up_form=form, status=400)
    currency = terms_of(org).currency
    try:
        started = services.top_up_start(
            org=org,
            amount=form.cleaned_data["amount"],
            currency=currency,
            by=request.user,
            attempt=form.cleaned_data["attempt"],
        )
    except InvalidInput as exc:
        place_errors(form, exc.fields, exc.message)
        return _page(request, top_up_form=form, status=400)
    except PaymentsNotConfigured:
        return _page(request, top_up_form=form, top_up_problem=str(NOT_CONFIGURED), status=503)
    except StripeUnavailable:
        return _page(
            request,
            top_up_form=form,
            top_up_problem=_("The payment could not be started. Please try again in a moment."),
            status=503,
        )
    context = {
        "org": org,
        "amount": money_text(started.amount, started.currency),
        "publishable_key": started.publishable_key,
        "client_secret": started.client_secret,
        "return_url": request.build_absolute_uri(reverse("balance:balance")),
        "stripe_locale": _stripe_locale(),
        "pay_text": {
            "ready": _("Enter your payment details, then confirm."),
            "confirming": _("Confirming your payment…"),
            "not_configured": str(NOT_CONFIGURED),
            "failed": _("The payment could not be started. Please try again in a moment."),
        },
    }
    response = render(request, "billing/balance_top_up.html", context)
    # The page carries the intent's client secret: never cached.
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@login_required
def spend_limit(request: HttpRequest) -> HttpResponse:
    """Set the monthly cap and its alert shares."""
    org = _require_billing(request)
    form = SpendLimitForm(request.POST)
    if not form.is_valid():
        return _page(request, limit_form=form, status=400)
    try:
        services.spend_limit_set(
            org=org, monthly_cap=form.cleaned_data["monthly_cap"], alert_at=form.cleaned_data["alert_at"]
        )
    except InvalidInput as exc:
        place_errors(form, exc.fields, exc.message)
        return _page(request, limit_form=form, status=400)
    messages.success(request, _("Your spend limit is saved."))
    return HttpResponseRedirect(reverse("balance:balance"))


@login_required
@require_safe
def spending_csv(request: HttpRequest) -> HttpResponse:
    """This month's spending as CSV: one row per day and lease (date, lease, plan, amount, currency), then per day
    and volume for storage (lease empty, plan `storage`, the volume's id last), before tax."""
    org = _customer_org(request)
    now = timezone.now()
    currency = terms_of(org).currency
    period = period_containing(now)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="spending-{period.label}.csv"'
    response["Cache-Control"] = "private"
    writer = csv.writer(response)
    writer.writerow(CSV_HEADER)
    for row in spending_by_day(org=org, currency=currency, now=now):
        lease = "" if row.lease_id is None else row.lease_id
        volume = "" if row.volume_id is None else row.volume_id
        writer.writerow([row.day.isoformat(), lease, row.plan, f"{row.amount:.2f}", row.currency, volume])
    return response
