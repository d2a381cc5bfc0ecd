"""Staff pages: the GPU catalogue, closing a month, and the fleet across every provider.

Only platform staff see them: an anonymous visitor is sent to the login page, anyone else is answered 403.
The fleet page reads aggregates in SQL (a handful of GROUP BY queries, whatever the number of cards), and
lists unhealthy cards a page at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, F, FloatField, Func, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop
from django.views.decorators.http import require_http_methods

from accounts.errors import Conflict, InvalidInput
from accounts.models import Organization
from accounts.permissions import staff_required
from billing.invoicing import close_period, period_containing, period_of
from billing.models import Invoice, ProviderStatement
from inventory.models import Gpu, GpuModel, Server
from inventory.services import agent_silence_limit
from marketplace.views_workloads import state_label
from workloads.selectors import stuck_workloads

SERVICE_MESSAGES = (
    gettext_noop("A period is YYYY-MM."),
    gettext_noop("Use YYYY-MM, e.g. 2026-05."),
)
UNHEALTHY_PAGE = 50
STUCK_SHOWN = 50
GROUPS_PAGE = 100


# --- the catalogue --------------------------------------------------------------------------------------


@staff_required
def catalogue(request: HttpRequest) -> HttpResponse:
    """Every GPU model (active or not) with how many servers and cards use it; edits go through the admin."""
    models = GpuModel.objects.annotate(
        server_count=Count("servers", distinct=True),
        card_count=Count("servers__gpus", distinct=True),
    ).order_by("-active", "vendor", "name")
    return render(request, "marketplace/staff/catalogue.html", {"models": models})


# --- closing a month ------------------------------------------------------------------------------------


class ClosePeriodForm(forms.Form):
    period = forms.RegexField(
        label=gettext_lazy("Month (YYYY-MM)"),
        regex=r"^\d{4}-(0[1-9]|1[0-2])$",
        error_messages={"invalid": gettext_lazy("Use YYYY-MM, e.g. 2026-05.")},
        widget=forms.TextInput(attrs={"placeholder": "2026-05", "inputmode": "numeric", "autocomplete": "off"}),
    )


def _previous_period(now: datetime) -> str:
    return period_containing(period_containing(now).start - timedelta(seconds=1)).label


def _closed_periods() -> list[dict[str, Any]]:
    """The last twelve months that have invoices or statements, with how many of each."""
    invoices = dict(
        Invoice.objects.exclude(state=Invoice.State.DRAFT)
        .values("period")
        .annotate(n=Count("id"))
        .values_list("period", "n")
    )
    statements = dict(ProviderStatement.objects.values("period").annotate(n=Count("id")).values_list("period", "n"))
    periods = sorted(set(invoices) | set(statements), reverse=True)[:12]
    return [{"period": p, "invoices": invoices.get(p, 0), "statements": statements.get(p, 0)} for p in periods]


@staff_required
@require_http_methods(["GET", "HEAD", "POST"])
def close_period_page(request: HttpRequest) -> HttpResponse:
    """Finalise a month's invoices and provider statements (idempotent: closing again makes only what is
    missing, so a second press is harmless). A month not over yet is refused beside the field."""
    now = timezone.now()
    if request.method == "POST":
        form = ClosePeriodForm(request.POST)
        if form.is_valid():
            label = form.cleaned_data["period"]
            try:
                result = close_period(label, now=now)
            except Conflict:
                ends = period_of(label).end
                form.add_error(
                    "period",
                    _("%(period)s is not over yet: it ends %(end)s UTC.")
                    % {"period": label, "end": ends.strftime("%Y-%m-%d %H:%M")},
                )
            except InvalidInput as exc:
                form.add_error("period", _(exc.message))
            else:
                messages.success(
                    request,
                    _("%(period)s is closed: %(invoices)s new invoices, %(statements)s new provider statements.")
                    % {"period": label, **result},
                )
                url = reverse("marketplace:staff_close_period")
                return HttpResponseRedirect(f"{url}?{urlencode({'closed': label})}")
    else:
        form = ClosePeriodForm(initial={"period": request.GET.get("closed") or _previous_period(now)})
    if form.errors:
        form.fields["period"].widget.attrs.update({"aria-invalid": "true", "aria-describedby": "id_period_errors"})
    context = {"form": form, "periods": _closed_periods(), "current": period_containing(now).label}
    return render(request, "marketplace/staff/close_period.html", context, status=400 if form.errors else 200)


# --- the fleet ------------------------------------------------------------------------------------------


def _utilization() -> Func:
    """A card's utilisation from its latest sample, NULL where the sample has no number for it."""
    return Func(
        F("last_sample"),
        template=(
            "CASE WHEN jsonb_typeof(%(expressions)s -> 'utilization_pct') = 'number' "
            "THEN (%(expressions)s ->> 'utilization_pct')::double precision END"
        ),
        output_field=FloatField(),
    )


COUNTS = (
    "total",
    "healthy",
    "degraded",
    "failed",
    "drained",
    "silent",
    "util_sum",
    "util_n",
    "idle",
    "low",
    "busy",
    "full",
)


def fleet_groups(fresh_after: datetime) -> list[dict[str, Any]]:
    """One row per provider and GPU model, from one GROUP BY over the cards (no join, no DISTINCT): cards by
    health, drained, silent, the sum and number of fresh utilisation figures and how many fall in each band.
    Utilisation counts only cards that reported since `fresh_after` (a stale sample would mislead)."""
    fresh = Q(last_sample_at__gte=fresh_after)
    rows = list(
        Gpu.objects.annotate(util=_utilization())
        .values(provider_id=F("server__organization_id"), model_id=F("server__gpu_model_id"))
        .annotate(
            total=Count("id"),
            healthy=Count("id", filter=Q(health=Gpu.Health.HEALTHY)),
            degraded=Count("id", filter=Q(health=Gpu.Health.DEGRADED)),
            failed=Count("id", filter=Q(health=Gpu.Health.FAILED)),
            drained=Count("id", filter=Q(drained=True) | Q(server__drained=True)),
            silent=Count("id", filter=~fresh),
            util_sum=Coalesce(Sum("util", filter=fresh), 0.0),
            util_n=Count("util", filter=fresh),
            idle=Count("id", filter=fresh & Q(util__lt=10)),
            low=Count("id", filter=fresh & Q(util__gte=10, util__lt=50)),
            busy=Count("id", filter=fresh & Q(util__gte=50, util__lt=90)),
            full=Count("id", filter=fresh & Q(util__gte=90)),
        )
        .order_by()
    )
    # Names and server counts come from the small tables, once per page, not per card.
    providers = dict(Organization.objects.filter(pk__in={r["provider_id"] for r in rows}).values_list("pk", "name"))
    models = dict(GpuModel.objects.filter(pk__in={r["model_id"] for r in rows}).values_list("pk", "name"))
    servers = {
        (org, model): n
        for org, model, n in Server.objects.values("organization_id", "gpu_model_id")
        .annotate(n=Count("id"))
        .values_list("organization_id", "gpu_model_id", "n")
    }
    for row in rows:
        row["provider"] = providers.get(row["provider_id"], "")
        row["model"] = models.get(row["model_id"], "")
        row["servers"] = servers.get((row["provider_id"], row["model_id"]), 0)
        row["avg_util"] = row["util_sum"] / row["util_n"] if row["util_n"] else None
    rows.sort(key=lambda r: (r["provider"].casefold(), r["provider_id"], r["model"].casefold()))
    return rows


def _summed(rows: list[dict[str, Any]], **labels: Any) -> dict[str, Any]:
    total = {name: sum(row[name] for row in rows) for name in COUNTS}
    total["avg_util"] = total["util_sum"] / total["util_n"] if total["util_n"] else None
    return {**labels, **total}


def fleet_models(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The provider-and-model rows summed per GPU model."""
    by_model: dict[int, list[dict[str, Any]]] = {}
    for row in groups:
        by_model.setdefault(row["model_id"], []).append(row)
    summed = [_summed(rows, model=rows[0]["model"]) for rows in by_model.values()]
    return sorted(summed, key=lambda r: r["model"].casefold())


def fleet_counts(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole fleet: every row summed."""
    return _summed(groups)


def unhealthy_cards(health: str = "") -> QuerySet[Gpu]:
    """Failed and degraded cards (or only one of the two), most recently changed first, with their reasons."""
    wanted = (
        [health] if health in (Gpu.Health.FAILED, Gpu.Health.DEGRADED) else [Gpu.Health.FAILED, Gpu.Health.DEGRADED]
    )
    return (
        Gpu.objects.filter(health__in=wanted)
        .select_related("server", "server__organization", "server__gpu_model")
        .only(
            "index",
            "uuid",
            "health",
            "health_reason",
            "health_changed_at",
            "drained",
            "server__name",
            "server__region",
            "server__organization__name",
            "server__gpu_model__name",
        )
        .order_by(F("health_changed_at").desc(nulls_last=True), "-id")
    )


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
    fresh_after = timezone.now() - agent_silence_limit()
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
