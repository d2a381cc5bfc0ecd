"""Provider pages for offers and earnings: list, create, edit and delist offers; statements, payouts, this month.

Thin: offers are written through marketplace.services (the same calls as the API) and read through
marketplace.selectors; money comes from billing's statements, payouts and usage records, always filtered by the
caller's organisation. Another tenant's offer is 404 like an unknown one; a customer organisation has no
provider pages (403). Reading needs any membership of a provider organisation; changing an offer needs one of
the roles that may operate servers (accounts.permissions.OPERATE), like the API.

A form is sent once: each rendered form carries a random key, claimed in the cache (an atomic add) when it is
sent, so a double click or a resent POST never lists a server twice; the database's one-live-offer rule stays
the last word and is answered as an error beside the server field.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db.models import Case, Exists, OuterRef, Value, When
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from accounts.access import Actor
from accounts.error_text import error_text
from accounts.errors import Conflict, InvalidInput, NotFound
from accounts.formfields import AsciiDecimalField, AsciiIntegerField
from accounts.models import Organization
from accounts.permissions import can_operate, provider_org, require_operate
from accounts.tenancy import scoped
from billing.display import price_text
from billing.invoicing import period_containing, take_rate_of
from billing.models import MeterRun, Payout
from billing.selectors import provider_month_so_far, provider_statement_totals, provider_statements
from inventory.access import access_offer
from inventory.models import LIVE_OFFER, PLAN_PRICE_FIELDS, Offer, Server
from marketplace import selectors, services
from scheduler.models import Plan

FORM_KEY_TTL = 6 * 3600  # long enough for a form left open a while; a key is random, never reused


# --- access ---------------------------------------------------------------------------------------------


def _offer(org: Organization, offer_id: int) -> Offer:
    """The organisation's offer `offer_id` (inventory.access); another tenant's id is a 404 page like an unknown one."""
    try:
        return access_offer(Actor.for_org(org), offer_id)
    except NotFound:
        raise Http404 from None


# --- sending a form once --------------------------------------------------------------------------------


def _form_key_claim(request: HttpRequest, key: str) -> bool:
    """Claim the form key of this POST; False when it was already sent (a double click, a resend)."""
    try:
        uuid.UUID(key)
    except ValueError:
        return True  # no key (an old page, a script): the database constraint still guards
    return cache.add(f"suanli:form-sent:{request.user.pk}:{key}", "1", FORM_KEY_TTL)


def _form_key_release(request: HttpRequest, key: str) -> None:
    """The POST was refused (field errors): the same form may be sent again once corrected."""
    cache.delete(f"suanli:form-sent:{request.user.pk}:{key}")


# --- the offer form -------------------------------------------------------------------------------------


def _price_field(label: str) -> AsciiDecimalField:
    return AsciiDecimalField(
        label=label,
        required=False,
        max_digits=14,
        decimal_places=4,
        min_value=Decimal("0.0001"),
        widget=forms.NumberInput(attrs={"step": "0.0001", "min": "0", "inputmode": "decimal"}),
    )


def _server_label(server: Server) -> str:
    label = f"{server.name} · {server.gpu_count}× {server.gpu_model.name}"
    if getattr(server, "listed", False):
        label += " · " + _("already listed")
    return label


class OfferForm(forms.Form):
    """Prices per plan (blank = not offered), interruptible prices below them, min cards, end, currency and the
    price of volumes per GB-month (blank = no volumes on the server).

    The form checks what it can say beside a field (an interruptible price without an on-demand one above
    it, more cards than the server has); the service checks again and its verdict wins.
    """

    form_key = forms.CharField(widget=forms.HiddenInput, required=False)
    server = forms.ModelChoiceField(label=gettext_lazy("Server"), queryset=Server.objects.none(), empty_label=None)
    card_hour_price = _price_field(gettext_lazy("On-demand, per card-hour"))
    server_month_price = _price_field(gettext_lazy("On-demand, per server-month"))
    pflops_year_price = _price_field(gettext_lazy("On-demand, per PFLOPS-year"))
    card_hour_interruptible_price = _price_field(gettext_lazy("Interruptible, per card-hour"))
    server_month_interruptible_price = _price_field(gettext_lazy("Interruptible, per server-month"))
    pflops_year_interruptible_price = _price_field(gettext_lazy("Interruptible, per PFLOPS-year"))
    min_gpus = AsciiIntegerField(label=gettext_lazy("Minimum cards per lease"), min_value=1, max_value=16, initial=1)
    available_until = forms.DateTimeField(
        label=gettext_lazy("Available until (UTC, optional)"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
    )
    currency = forms.ChoiceField(label=gettext_lazy("Currency"), choices=Organization.Currency.choices)
    # Volumes on the server (its disk for volumes), per GB per month; blank: no volumes there.
    storage_gb_month_price = _price_field(gettext_lazy("Volumes, per GB-month (optional)"))

    def __init__(self, *args: Any, org: Organization, offer: Offer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offer = offer
        self.group_errors: dict[str, list[str]] = {}
        if offer is None:
            # Servers still to be listed first; a listed one stays choosable (the error says what to do).
            self.fields["server"].queryset = (
                scoped(Server, org)
                .select_related("gpu_model")
                .annotate(listed=Exists(Offer.objects.direct().live().filter(server_id=OuterRef("pk"))))
                .order_by("listed", "name", "id")
            )
            self.fields["server"].label_from_instance = _server_label
            self.fields["currency"].initial = org.currency
        else:
            del self.fields["server"]
        if not self.is_bound:
            self.fields["form_key"].initial = str(uuid.uuid4())

    def server_of(self) -> Server | None:
        if self.offer is not None:
            return self.offer.server
        return self.cleaned_data.get("server")

    def clean_available_until(self) -> datetime | None:
        until = self.cleaned_data.get("available_until")
        unchanged = self.offer is not None and until == self.offer.available_until
        if until is not None and not unchanged and until <= timezone.now():
            raise forms.ValidationError(_("Pick a time in the future, or leave it empty."))
        return until

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not any(data.get(firm) for firm, _spot in PLAN_PRICE_FIELDS.values()) and not any(
            name in self.errors for pair in PLAN_PRICE_FIELDS.values() for name in pair
        ):
            self.group_errors.setdefault("prices", []).append(_("Price at least one plan."))
            self.add_error(None, _("Price at least one plan."))
        for firm, spot in PLAN_PRICE_FIELDS.values():
            on_demand, interruptible = data.get(firm), data.get(spot)
            if interruptible is not None and (on_demand is None or interruptible >= on_demand):
                self.add_error(spot, _("An interruptible price needs an on-demand price above it."))
        server, min_gpus = self.server_of(), data.get("min_gpus")
        if server is not None and min_gpus is not None and min_gpus > server.gpu_count:
            self.add_error("min_gpus", _("At most %(count)s: the server's cards.") % {"count": server.gpu_count})
        return data

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "prices": {plan: data.get(firm) for plan, (firm, _spot) in PLAN_PRICE_FIELDS.items()},
            "interruptible_prices": {plan: data.get(spot) for plan, (_firm, spot) in PLAN_PRICE_FIELDS.items()},
            "min_gpus": data["min_gpus"],
            "available_until": data.get("available_until"),
            "currency": data["currency"],
            "storage_gb_month_price": data.get("storage_gb_month_price"),
        }

    def add_service_errors(self, exc: InvalidInput | Conflict) -> None:
        """Put the service's verdict beside its field: a price problem beside the prices, a second live offer
        beside the server; whatever has no field goes above the form."""
        if isinstance(exc, Conflict):
            self.add_error("server" if "server" in self.fields else None, error_text(exc.message))
            return
        placed = False
        for field, problems in (exc.fields or {}).items():
            for problem in problems if isinstance(problems, list) else [problems]:
                if field in self.fields:
                    self.add_error(field, error_text(problem))
                elif field in ("prices", "interruptible_prices"):
                    self.group_errors.setdefault(field, []).append(error_text(problem))
                    self.add_error(None, error_text(problem))
                else:
                    self.add_error(None, error_text(problem))
                placed = True
        if not placed:
            self.add_error(None, error_text(exc.message))

    def describe_errors(self) -> None:
        """Tie each field with an error to the text beside it, for screen readers."""
        for name in self.errors:
            if name in self.fields:
                self.fields[name].widget.attrs["aria-invalid"] = "true"
                self.fields[name].widget.attrs["aria-describedby"] = f"{self[name].auto_id}_errors"

    def price_rows(self) -> list[dict[str, Any]]:
        """The price inputs as one row per plan (on-demand beside interruptible), for the template."""
        return [
            {"plan": plan, "label": Plan(plan).label, "firm": self[firm], "spot": self[spot]}
            for plan, (firm, spot) in PLAN_PRICE_FIELDS.items()
        ]


def _offer_initial(offer: Offer) -> dict[str, Any]:
    initial: dict[str, Any] = {name: getattr(offer, name) for pair in PLAN_PRICE_FIELDS.values() for name in pair}
    initial.update(
        min_gpus=offer.min_gpus,
        available_until=offer.available_until,
        currency=offer.currency,
        storage_gb_month_price=offer.storage_gb_month_price,
    )
    return initial


def _offer_prices(offer: Offer) -> list[dict[str, Any]]:
    return [
        {
            "plan": plan,
            "label": Plan(plan).label,
            "firm": price_text(getattr(offer, firm)),
            "spot": price_text(getattr(offer, spot)),
        }
        for plan, (firm, spot) in PLAN_PRICE_FIELDS.items()
    ]


def _form_page(request: HttpRequest, form: OfferForm, *, offer: Offer | None, org: Organization) -> HttpResponse:
    form.describe_errors()
    # A price problem shows inside the prices fieldset; only what belongs nowhere else goes above the form.
    beside_prices = [e for errors in form.group_errors.values() for e in errors]
    context = {
        "org": org,
        "form": form,
        "offer": offer,
        "price_rows": form.price_rows(),
        "price_errors": beside_prices,
        "top_errors": [e for e in form.non_field_errors() if e not in beside_prices],
    }
    return render(request, "marketplace/provider/offer_form.html", context, status=400 if form.errors else 200)


# --- offer pages ----------------------------------------------------------------------------------------


@login_required
def offer_list(request: HttpRequest) -> HttpResponse:
    """The organisation's offers, live first, then delisted ones (newest first within each)."""
    org = provider_org(request)
    offers = list(
        selectors.offers_of(org)
        .annotate(delisted=Case(When(LIVE_OFFER, then=Value(0)), default=Value(1)))
        .order_by("delisted", "-id")[:500]
    )
    rows = [{"offer": offer, "prices": _offer_prices(offer)} for offer in offers]
    unlisted = (
        scoped(Server, org)
        .filter(~Exists(Offer.objects.direct().live().filter(server_id=OuterRef("pk"))))
        .order_by("name", "id")
        .values("pk", "name")
    )
    context = {
        "org": org,
        "rows": rows,
        "live": sum(1 for offer in offers if offer.delisted_at is None),
        "unlisted": list(unlisted[:50]),
        "has_servers": scoped(Server, org).exists(),
        "can_operate": can_operate(request),
    }
    return render(request, "marketplace/provider/offer_list.html", context)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def offer_new(request: HttpRequest) -> HttpResponse:
    """The form that lists one of the organisation's servers."""
    org = provider_org(request)
    require_operate(request)
    if request.method != "POST":
        initial = {}
        if (wanted := request.GET.get("server", "")).isascii() and wanted.isdigit():
            initial["server"] = wanted
        return _form_page(request, OfferForm(org=org, initial=initial), offer=None, org=org)
    form = OfferForm(request.POST, org=org)
    key = request.POST.get("form_key", "")
    if not form.is_valid():
        return _form_page(request, form, offer=None, org=org)
    if not _form_key_claim(request, key):
        messages.info(request, _("That form was already sent; your offers are below."))
        return HttpResponseRedirect(reverse("marketplace:provider_offers"))
    try:
        offer = services.offer_create(org=org, server=form.cleaned_data["server"], **form.service_arguments())
    except (InvalidInput, Conflict) as exc:
        _form_key_release(request, key)
        form.add_service_errors(exc)
        return _form_page(request, form, offer=None, org=org)
    messages.success(request, _("%(server)s is listed.") % {"server": offer.server.name})
    return HttpResponseRedirect(reverse("marketplace:provider_offers"))


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def offer_edit(request: HttpRequest, offer_id: int) -> HttpResponse:
    """New prices, minimum, end or currency for a live offer. Running leases keep the prices they started at."""
    org = provider_org(request)
    offer = _offer(org, offer_id)
    require_operate(request)
    if offer.delisted_at is not None:
        messages.error(request, _("A delisted offer cannot change."))
        return HttpResponseRedirect(reverse("marketplace:provider_offers"))
    if request.method != "POST":
        return _form_page(request, OfferForm(org=org, offer=offer, initial=_offer_initial(offer)), offer=offer, org=org)
    form = OfferForm(request.POST, org=org, offer=offer)
    if not form.is_valid():
        return _form_page(request, form, offer=offer, org=org)
    # Sending the same prices twice changes nothing, so an edit needs no key; the row is re-read to change it.
    try:
        services.offer_update(offer=offer, **form.service_arguments())
    except (InvalidInput, Conflict) as exc:
        form.add_service_errors(exc)
        return _form_page(request, form, offer=offer, org=org)
    messages.success(request, _("The offer for %(server)s is updated.") % {"server": offer.server.name})
    return HttpResponseRedirect(reverse("marketplace:provider_offers"))


@require_POST
@login_required
def offer_delist(request: HttpRequest, offer_id: int) -> HttpResponse:
    """Take the offer off the storefront; running leases go on. Idempotent, so a second press changes nothing."""
    org = provider_org(request)
    offer = _offer(org, offer_id)
    require_operate(request)
    services.offer_delist(offer=offer)
    messages.success(
        request,
        _("The offer for %(server)s is delisted; leases already running on it go on.") % {"server": offer.server.name},
    )
    return HttpResponseRedirect(reverse("marketplace:provider_offers"))


# --- earnings -------------------------------------------------------------------------------------------


PAYOUT_LABELS = {
    None: gettext_lazy("Not paid yet"),
    Payout.State.PENDING: gettext_lazy("Payout pending"),
    Payout.State.PAID: gettext_lazy("Paid"),
    Payout.State.FAILED: gettext_lazy("Payout failed"),
}


@login_required
def earnings(request: HttpRequest) -> HttpResponse:
    """Per month: gross, commission, SLA credits charged back, net and the payout; then this month so far."""
    org = provider_org(request)
    now = timezone.now()
    statements = list(provider_statements(org=org)[:240])
    for statement in statements:
        statement.payout_label = PAYOUT_LABELS.get(statement.payout_state, statement.payout_state)
    last_meter = MeterRun.objects.order_by("-until").values_list("until", flat=True).first()
    context = {
        "org": org,
        "statements": statements,
        "totals": provider_statement_totals(org=org),
        "this_month": provider_month_so_far(org=org, now=now),
        "this_period": period_containing(now).label,
        "metered_until": last_meter,
        "take_rate_pct": take_rate_of(org.pk) * 100,
    }
    return render(request, "marketplace/provider/earnings.html", context)
