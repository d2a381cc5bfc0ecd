"""Staff pages: the staff home, the GPU catalogue, closing a month, and the fleet across every provider.

Only platform staff see them: an anonymous visitor is sent to the login page, anyone else is answered 403.
The fleet page reads through inventory.fleet (aggregates in SQL, whatever the number of cards) and lists
unhealthy cards a page at a time.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from accounts.access import STAFF_READS
from accounts.errors import Conflict, InvalidInput
from accounts.permissions import staff_required
from accounts.selectors import pending_providers
from billing.forms import PeriodForm
from billing.invoicing import close_period, closed_periods, period_containing, previous_period
from billing.models import ProviderStatement
from inventory.fleet import fleet_counts, fleet_groups, fleet_models, gpu_models_in_use, stale_before, unhealthy_cards
from marketplace.views_workloads import state_label
from workloads.selectors import stuck_workloads

UNHEALTHY_PAGE = 50
STUCK_SHOWN = 50
GROUPS_PAGE = 100


# --- the staff home -------------------------------------------------------------------------------------


@staff_required
def staff_home(request: HttpRequest) -> HttpResponse:
    """Where staff land (the dashboard sends staff without an organisation here): what waits for them (providers to
    approve, statements to pay out, the last closed month) and a way to every staff page."""
    now = timezone.now()
    closed = closed_periods(most=1)
    context = {
        "pending_providers": pending_providers(),
        "unpaid_statements": ProviderStatement.objects.unscoped(STAFF_READS)
        .exclude(state=ProviderStatement.State.PAID)
        .count(),
        "last_closed": closed[0] if closed else None,
        "to_close": previous_period(now).label,
    }
    return render(request, "marketplace/staff/home.html", context)


# --- the catalogue --------------------------------------------------------------------------------------


@staff_required
def catalogue(request: HttpRequest) -> HttpResponse:
    """Every GPU model (active or not) with how many servers and cards use it; edits go through the admin."""
    return render(request, "marketplace/staff/catalogue.html", {"models": gpu_models_in_use()})


# --- closing a month ------------------------------------------------------------------------------------


@staff_required
@require_http_methods(["GET", "HEAD", "POST"])
def close_period_page(request: HttpRequest) -> HttpResponse:
    """Finalise a month's invoices and provider statements (idempotent: closing again makes only what is
    missing, so a second press is harmless). A month not over yet is refused beside the field."""
    now = timezone.now()
    if request.method == "POST":
        form = PeriodForm(request.POST)
        if form.is_valid():
            label = form.cleaned_data["period"]
            try:
                result = close_period(label, now=now)
            except (Conflict, InvalidInput) as exc:
                form.refuse(label, exc)
            else:
                messages.success(
                    request,
                    _("%(period)s is closed: %(invoices)s new invoices, %(statements)s new provider statements.")
                    % {"period": label, **result},
                )
                url = reverse("marketplace:staff_close_period")
                return HttpResponseRedirect(f"{url}?{urlencode({'closed': label})}")
    else:
        form = PeriodForm(initial={"period": request.GET.get("closed") or previous_period(now).label})
    form.describe_errors()
    context = {"form": form, "periods": closed_periods(), "current": period_containing(now).label}
    return render(request, "marketplace/staff/close_period.html", context, status=400 if form.errors else 200)


# --- the fleet ------------------------------------------------------------------------------------------


HEALTH_FILTERS = {
    "": gettext_lazy("Failed and degraded"),
    "failed": gettext_lazy("Failed"),
    "degraded": gettext_lazy("Degraded"),
}


def _stacked(bars: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bars with where each starts (percent) along the stacked bar: the page draws them as SVG rects, whose
    x and width are attributes (a style="width: ..." would need 'unsafe-inline' in the Content-Security-Policy)."""
    start = 0.0
    for bar in bars:
        bar["start"] = start
        start += bar["pct"]
    return bars


@staff_required
def fleet(request: HttpRequest) -> HttpResponse:
    """Cards by health and utilisation across all providers, per provider and model, the unhealthy ones, and the
    workloads stuck in a passing state or not cleaned after their lease."""
    fresh_after = stale_before()
    health = request.GET.get("health", "")
    health = health if health in HEALTH_FILTERS else ""
    rows = fleet_groups(fresh_after)
    groups = Paginator(rows, GROUPS_PAGE).get_page(request.GET.get("groups"))
    cards = Paginator(unhealthy_cards(health), UNHEALTHY_PAGE).get_page(request.GET.get("page"))
    counts = fleet_counts(rows)
    total = counts["total"] or 1
    bars = [
        {"key": key, "label": label, "count": counts[key], "pct": 100 * counts[key] / total}
        for key, label in (
            ("healthy", _("Healthy")),
            ("degraded", _("Degraded")),
            ("failed", _("Failed")),
        )
    ]
    reporting = counts["idle"] + counts["low"] + counts["busy"] + counts["full"]
    util_bars = [
        {"key": key, "label": label, "count": counts[key], "pct": 100 * counts[key] / (reporting or 1)}
        for key, label in (
            ("idle", _("Under 10%")),
            ("low", _("10–50%")),
            ("busy", _("50–90%")),
            ("full", _("90% and over")),
        )
    ]
    context = {
        "counts": counts,
        "bars": _stacked(bars),
        "util_bars": _stacked(util_bars),
        "groups": groups,
        "models": fleet_models(rows),
        "cards": cards,
        "health": health,
        "health_filters": HEALTH_FILTERS,
        "fresh_after": fresh_after,
        "stuck": [{"workload": w, "label": state_label(w.state)} for w in stuck_workloads()[:STUCK_SHOWN]],
        "stuck_total": stuck_workloads().count(),
    }
    return render(request, "marketplace/staff/fleet.html", context)
