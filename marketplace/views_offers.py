"""Storefront pages for offers: the search (public), an offer's page with live availability, the rent form and
its price estimate.

Thin: search reads through marketplace.selectors.offers_listed (free cards now, reliability, prices compared in
one currency); renting calls workloads.services.lease_create pinned to the offer, with the optional workload of
the form's workload section (without one it is the scheduler's lease as before), once per rendered form
(marketplace.forms.IdempotentForm). Prices are shown in the viewer's organisation's currency at the rates a
lease would be priced at (scheduler.pricing), with the offer's own price beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import formats, numberformat, timezone
from django.utils.cache import patch_vary_headers
from django.utils.formats import get_format
from django.utils.translation import get_language, ngettext
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.inputs import BIGINT_MAX
from accounts.models import Organization
from billing import rating
from billing.display import PLAN_LABELS, UNIT_LABELS, money
from inventory.models import PLAN_PRICE_FIELDS, Interconnect, Offer
from marketplace.forms import OfferSearchForm, RentForm, describe_errors
from marketplace.forms_workloads import WorkloadForm
from marketplace.offer_cards import CardWriter
from marketplace.selectors import ListedOffer, OfferQuery, offer_listed, offers_listed, shown_currency
from marketplace.views_rent import add_rent_errors, rent_payload, rented, renter_problem
from scheduler.models import Plan
from scheduler.pricing import PRICE_PLACES, rate_between
from workloads import services as workload_services

PAGE_SIZE = 12


# --- money ------------------------------------------------------------------------------------------------


def converted(price: Decimal | None, rate: Decimal | None) -> Decimal | None:
    """A price in the viewer's currency, rounded as scheduler.pricing rounds a lease's price book."""
    if price is None or rate is None:
        return None
    return (price * rate).quantize(PRICE_PLACES)


def viewer_currency(request: HttpRequest, wanted: str = "") -> str:
    """The currency prices are shown in: asked for, else the organisation's, else the language's usual one."""
    org: Organization | None = getattr(request, "org", None)
    return shown_currency(org, get_language() or "", wanted)


# --- what a page shows of an offer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanPrice:
    plan: str
    label: str
    unit: str
    price: str  # in the viewer's currency
    original: str  # in the offer's currency, empty when that is the viewer's
    interruptible: str  # in the viewer's currency, empty when not offered


@dataclass
class OfferView:
    offer: Offer
    currency: str
    prices: list[PlanPrice] = field(default_factory=list)
    converted: bool = False
    no_rate: bool = False

    @property
    def server(self) -> Any:
        return self.offer.server

    # What a search result's card shows more than once, made once: the card renders 12 times a page (issue 18).
    @cached_property
    def pk(self) -> str:
        return str(self.offer.pk)

    @cached_property
    def detail_url(self) -> str:
        return reverse("marketplace:offer_detail", args=[self.offer.pk])

    @cached_property
    def title(self) -> str:
        """The cards and their model: "8 × NVIDIA H100 SXM 80GB"."""
        return f"{self.gpus_total} × {self.server.gpu_model.name}"

    @property
    def gpus_free(self) -> int:
        return int(getattr(self.offer, "gpus_free", 0) or 0)

    @property
    def gpus_total(self) -> int:
        return self.offer.server.gpu_count

    @property
    def reliability_pct(self) -> float | None:
        value = getattr(self.offer, "reliability", None)
        return None if value is None else round(float(value) * 100, 1)

    @property
    def interconnect(self) -> str:
        server = self.offer.server
        return server.get_interconnect_display() if server.interconnect else server.gpu_model.get_interconnect_display()

    @property
    def has_interruptible(self) -> bool:
        return any(price.interruptible for price in self.prices)

    @property
    def rated_pflops(self) -> Decimal:
        server = self.offer.server
        return (Decimal(server.gpu_model.fp16_tflops) * server.gpu_count / 1000).quantize(Decimal("0.001"))


class PageMoney:
    """billing.display.money for a page of offers: its pattern translated and the locale's number formats read once,
    not for each of the page's 72 or more prices (a gettext through every app's catalogue and three format lookups
    each: about a third of making a page's 12 cards). The same text as money (tests/marketplace/
    test_search_page_rows.py compares them)."""

    def __init__(self) -> None:
        language = get_language()
        self.pattern = _("%(currency)s %(amount)s")
        self.formats = tuple(
            get_format(name, language, use_l10n=True)
            for name in ("DECIMAL_SEPARATOR", "NUMBER_GROUPING", "THOUSAND_SEPARATOR")
        )

    def __call__(self, amount: Decimal | None, currency: str) -> str:
        if amount is None:
            return "—"
        places = 2 if amount == amount.quantize(Decimal("0.01")) else 4
        value = Decimal(amount).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        decimal_separator, grouping, thousand_separator = self.formats
        number = numberformat.format(
            value, decimal_separator, places, grouping, thousand_separator, force_grouping=True, use_l10n=True
        )
        return self.pattern % {"currency": currency, "amount": number}


def plan_texts() -> dict[str, tuple[str, str]]:
    """Each plan's label and unit in the active language: translated once for a page of offers rather than once per
    offer and plan (Django's gettext looks through every app's catalogue on each call)."""
    return {plan: (str(PLAN_LABELS[plan]), str(UNIT_LABELS[plan])) for plan in Plan}


def _plan_prices(
    offer: Offer | ListedOffer,
    currency: str,
    texts: dict[str, tuple[str, str]],
    shown_money: Callable[[Decimal | None, str], str] = money,
) -> tuple[str, list[PlanPrice], bool]:
    """The currency an offer's prices are shown in (`currency`, else its own where no rate is set), each plan it
    prices in that currency (its own price beside a converted one), and whether a rate was missing. `offer` an Offer
    or a listed row (anything with its currency and price fields)."""
    rate = rate_between(offer.currency, currency)
    no_rate = rate is None
    shown = offer.currency if no_rate else currency
    was_converted = shown != offer.currency
    rate = rate or Decimal(1)
    prices = []
    for plan in Plan:
        firm, spot_field = PLAN_PRICE_FIELDS[plan]
        price = getattr(offer, firm)
        if price is None:
            continue
        spot = getattr(offer, spot_field)
        prices.append(
            PlanPrice(
                plan=plan.value,
                label=texts[plan][0],
                unit=texts[plan][1],
                price=shown_money(converted(price, rate), shown),
                original=shown_money(price, offer.currency) if was_converted else "",
                interruptible=shown_money(converted(spot, rate), shown) if spot is not None else "",
            )
        )
    return shown, prices, no_rate


def offer_view(offer: Offer, currency: str, texts: dict[str, tuple[str, str]] | None = None) -> OfferView:
    shown, prices, no_rate = _plan_prices(offer, currency, texts or plan_texts())
    return OfferView(offer=offer, currency=shown, prices=prices, converted=shown != offer.currency, no_rate=no_rate)


@dataclass(frozen=True)
class ResultCard:
    """What a search result's card shows (templates/marketplace/offers/_offer_card.html), made from the listed row
    the search's one statement gave (marketplace.selectors.ListedOffer): no model instances."""

    pk: str
    detail_url: str
    title: str
    provider: str
    region: str
    interconnect: str
    gpus_free: int
    gpus_total: int
    reliability_pct: float | None
    memory_gb: int
    min_gpus: int
    currency: str
    prices: list[PlanPrice]
    no_rate: bool


def interconnect_texts() -> dict[str, str]:
    """Each interconnect's label, as a server's or a model's get_interconnect_display() shows it."""
    return {value: str(label) for value, label in Interconnect.choices}


def result_card(
    row: ListedOffer,
    currency: str,
    texts: dict[str, tuple[str, str]],
    interconnects: dict[str, str],
    shown_money: Callable[[Decimal | None, str], str] = money,
) -> ResultCard:
    """A search result's card from its listed row, showing what `offer_view` of the same offer shows (`shown_money`:
    a page's PageMoney, the same text as billing.display.money)."""
    shown, prices, no_rate = _plan_prices(row, currency, texts, shown_money)
    # The server's own interconnect where it names one, else its model's (OfferView.interconnect).
    interconnect = row.interconnect or row.gpu_model_interconnect
    return ResultCard(
        pk=str(row.id),
        detail_url=reverse("marketplace:offer_detail", args=[row.id]),
        title=f"{row.gpus_total} × {row.gpu_model_name}",
        provider=row.provider,
        region=row.region,
        interconnect=interconnects.get(interconnect, interconnect),
        gpus_free=int(row.gpus_free or 0),
        gpus_total=row.gpus_total,
        reliability_pct=None if row.reliability is None else round(float(row.reliability) * 100, 1),
        memory_gb=row.gpu_memory_gb,
        min_gpus=row.min_gpus,
        currency=shown,
        prices=prices,
        no_rate=no_rate,
    )


def _listed_offer(offer_id: int, currency: str, now: datetime | None = None) -> Offer:
    """A listed offer (live, on an online server of an approved provider) with its free cards and reliability."""
    offer = offer_listed(offer_id, currency=currency, now=now)
    if offer is None:
        raise Http404
    return offer


# --- search -----------------------------------------------------------------------------------------------


def _page_number(value: str | None) -> int | None:
    """The page Paginator.get_page will show for `value` where it is in range: a whole number from 1, the first
    page for what is not a number; None where it cannot be a page (beyond what an OFFSET takes: the last page)."""
    try:
        number = int(value or 1)
    except ValueError:
        return 1
    if number * PAGE_SIZE > BIGINT_MAX:
        return None
    return number if number >= 1 else 1


@require_GET
def offer_search(request: HttpRequest) -> HttpResponse:
    """Offers matching the filters, a page at a time; htmx asks for just the results as the filters change."""
    params = request.GET.copy()
    if not params.get("currency"):
        # Show (and keep in the links) the currency the prices are in.
        params["currency"] = viewer_currency(request)
    form = OfferSearchForm(params)
    form.is_valid()
    data: dict[str, Any] = form.cleaned_data
    currency = viewer_currency(request, data.get("currency") or "")
    reliability = data.get("min_reliability")
    query = OfferQuery(
        gpu_model=data["gpu_model"].pk if data.get("gpu_model") else None,
        min_gpus=data.get("min_gpus"),
        region=data.get("region") or "",
        plan=data.get("plan") or "",
        interruptible=bool(data.get("interruptible")),
        max_price=data.get("max_price"),
        interconnect=data.get("interconnect") or "",
        min_reliability=None if reliability is None else reliability / 100,
        ordering=data.get("ordering") or "price",
        currency=currency,
        min_price=data.get("min_price"),
    )
    # The count and the asked page in one statement, each offer a row joined to what its card shows (as the API
    # reads its page): the page the paginator will cut, where the number is one (out of range, it counts again).
    offers = offers_listed(query, rows=True)
    number = _page_number(request.GET.get("page"))
    if number is not None:
        offers.expect((number - 1) * PAGE_SIZE, number * PAGE_SIZE)
    page = Paginator(offers, PAGE_SIZE).get_page(request.GET.get("page"))
    texts, interconnects = plan_texts(), interconnect_texts()
    describe_errors(form)
    shown_money = PageMoney()
    results = [result_card(row, currency, texts, interconnects, shown_money) for row in page.object_list]
    context = {
        "form": form,
        "page": page,
        "results": results,
        "cards": CardWriter().cards(results),
        "currency": currency,
        "price_plan": PLAN_LABELS.get(query.plan or Plan.CARD_HOUR),
    }
    partial = request.headers.get("HX-Request") and request.headers.get("HX-Target") == "offer-results"
    template = "marketplace/offers/_results.html" if partial else "marketplace/offers/search.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request", "HX-Target"])
    return response


# --- the estimate -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """The price estimate beside the rent form. `amount` is the figure (None while the form lacks something)."""

    amount: Decimal | None = None
    total: str = ""
    breakdown: str = ""
    message: str = ""
    per_second: bool = False
    note: str = ""


def estimate_for(form: RentForm, currency: str) -> Estimate:
    """Price × quantity × duration (billing.rating.estimate), from the offer's price for the plan in `currency` at
    the lease's FX rate.

    Uses whatever fields validated: a half-filled form gets a prompt instead of a figure. The quantity of a
    server-month is counted as billing counts it (each second against its own calendar month).
    """
    offer = form.offer
    if not form.is_bound:
        # The page as first shown: estimate what the form's initial values would rent.
        initial = {name: field.initial for name, field in form.fields.items() if field.initial is not None}
        form = RentForm(initial, offer=offer, now=form.now)
        form.is_valid()
    data = getattr(form, "cleaned_data", {})
    plan = data.get("plan") or form.chosen_plan
    if not plan:
        return Estimate(message=_("Choose a plan to see an estimate."))
    price = offer.price(plan, interruptible=bool(data.get("interruptible")))
    if price is None:
        return Estimate(message=_("This offer has no interruptible price for this plan."))
    unit, currency, note = _unit_price(offer, price, currency)
    start, end = data.get("start") or form.now, data.get("end")
    if plan == Plan.CARD_HOUR:
        cards = data.get("gpu_count")
        if cards is None:
            return Estimate(message=_("Enter the number of cards to see an estimate."))
        if end is None or end <= start:
            return _per_hour(unit, cards, currency, start=start, note=note)
        figure = rating.estimate(plan=plan, unit_price=unit, units=Decimal(cards), start=start, end=end)
        breakdown = ngettext(
            "%(price)s × %(count)s card × %(hours)s h", "%(price)s × %(count)s cards × %(hours)s h", cards
        ) % {"price": money(unit, currency), "count": cards, "hours": _number(figure.duration, 2)}
    elif plan == Plan.SERVER_MONTH:
        months = data.get("months")
        if months is None or end is None:
            return Estimate(message=_("Enter the number of months to see an estimate."))
        figure = rating.estimate(plan=plan, unit_price=unit, units=Decimal(1), start=start, end=end)
        breakdown = _("%(price)s × %(quantity)s server-months (%(months)s calendar months from the start)") % {
            "price": money(unit, currency),
            "quantity": _number(figure.duration, 3),
            "months": months,
        }
    else:
        pflops, years = data.get("pflops"), data.get("term_years")
        if pflops is None or years is None or end is None:
            return Estimate(message=_("Enter the PFLOPS and the term to see an estimate."))
        figure = rating.estimate(plan=plan, unit_price=unit, units=pflops, start=start, end=end)
        breakdown = _("%(price)s × %(pflops)s PFLOPS × %(years)s years of 365 days") % {
            "price": money(unit, currency),
            "pflops": _number(pflops, 3),
            "years": _number(figure.duration, 3),
        }
    return Estimate(amount=figure.amount, total=money(figure.amount, currency), breakdown=breakdown, note=note)


def _unit_price(offer: Offer, price: Decimal, currency: str) -> tuple[Decimal, str, str]:
    """The offer's price in `currency` at the lease's FX rate (in the offer's own currency where no rate is set),
    that currency, and a note saying how it was converted."""
    rate = rate_between(offer.currency, currency)
    note = ""
    if rate is None:
        currency, rate = offer.currency, Decimal(1)
    elif currency != offer.currency:
        note = _("Converted from %(price)s at %(rate)s, the rate your lease is priced at.") % {
            "price": money(price, offer.currency),
            "rate": formats.number_format(rate, use_l10n=True),
        }
    return converted(price, rate) or Decimal(0), currency, note


def _per_hour(unit: Decimal, cards: int, currency: str, *, start: datetime, note: str) -> Estimate:
    """An open-ended card-hour lease: what an hour of its cards costs, billed per second until it ends."""
    figure = rating.estimate(
        plan=Plan.CARD_HOUR, unit_price=unit, units=Decimal(cards), start=start, end=start + timedelta(hours=1)
    )
    return Estimate(
        amount=figure.amount,
        total=_("%(amount)s per hour") % {"amount": money(figure.amount, currency)},
        breakdown=ngettext("%(price)s × %(count)s card", "%(price)s × %(count)s cards", cards)
        % {"price": money(unit, currency), "count": cards},
        message=_("No end chosen: billed per second while the lease runs, until you end it."),
        per_second=True,
        note=note,
    )


def _number(value: Decimal, places: int) -> str:
    value = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP).normalize()
    return formats.number_format(value, use_l10n=True, force_grouping=True)


# --- the offer page ---------------------------------------------------------------------------------------


def _page(
    request: HttpRequest,
    offer: Offer,
    form: RentForm,
    currency: str,
    workload_form: WorkloadForm,
    *,
    estimate: Estimate | None = None,
    status=200,
) -> HttpResponse:
    describe_errors(form)
    describe_errors(workload_form)
    context = {
        "view": offer_view(offer, currency),
        "offer": offer,
        "form": form,
        "workload_form": workload_form,
        "plan": form.chosen_plan,
        "estimate": estimate or estimate_for(form, currency),
        "renter_problem": renter_problem(request) if request.user.is_authenticated else "",
        "now": form.now,
    }
    return render(request, "marketplace/offers/detail.html", context, status=status)


@require_http_methods(["GET", "HEAD", "POST"])
def offer_detail(request: HttpRequest, offer_id: int) -> HttpResponse:
    """An offer: hardware, free cards now, prices, and the rent form (POST rents, once per rendered form)."""
    now = timezone.now()
    currency = viewer_currency(request)
    offer = _listed_offer(offer_id, currency, now)
    if request.method != "POST":
        workload_form = WorkloadForm(offer=offer, org=getattr(request, "org", None), user=request.user)
        return _page(request, offer, RentForm(offer=offer, now=now), currency, workload_form)
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if renter_problem(request):
        raise PermissionDenied
    org: Organization = request.org
    form = RentForm(request.POST, offer=offer, now=now)
    workload_form = WorkloadForm(request.POST, offer=offer, org=org, user=request.user)
    valid = form.is_valid() & workload_form.is_valid()  # both, so that every field's errors show
    if request.POST.get("action") == "estimate" or not valid:
        # "Update the estimate" without JavaScript, or a form to correct: render, rent nothing.
        form.renew_key()
        status = 200 if request.POST.get("action") == "estimate" else 400
        return _page(request, offer, form, currency, workload_form, status=status)
    arguments = form.lease_arguments()
    workload = workload_form.workload(arguments["plan"])
    outcome = form.submit(
        org=org,
        scope=f"web.offer.{offer.pk}.rent",
        payload=rent_payload(offer, form, workload),
        work=lambda: {
            "lease": workload_services.lease_create(
                org=org, user=request.user, workload=workload, offer=offer, now=now, **arguments
            ).pk
        },
    )
    if outcome.ok:
        return rented(request, outcome.body["lease"], workload)
    status = add_rent_errors(form, workload_form, outcome)
    form.renew_key()
    return _page(request, offer, form, currency, workload_form, status=status)


@require_POST
def offer_estimate(request: HttpRequest, offer_id: int) -> HttpResponse:
    """The estimate for the rent form as it is now (htmx posts the form here as it changes)."""
    now = timezone.now()
    currency = viewer_currency(request)
    offer = _listed_offer(offer_id, currency, now)
    form = RentForm(request.POST, offer=offer, now=now)
    form.is_valid()
    return render(request, "marketplace/offers/_estimate.html", {"estimate": estimate_for(form, currency)})


@require_GET
def offer_availability(request: HttpRequest, offer_id: int) -> HttpResponse:
    """Cards free now, for htmx to swap in every 30 seconds; an offer that went away says so."""
    try:
        offer = _listed_offer(offer_id, viewer_currency(request))
    except Http404:
        return render(request, "marketplace/offers/_availability.html", {"gone": True, "offer_id": offer_id})
    return render(
        request,
        "marketplace/offers/_availability.html",
        {"view": offer_view(offer, viewer_currency(request)), "offer": offer, "now": timezone.now()},
    )
