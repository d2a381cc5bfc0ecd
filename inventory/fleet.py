"""What the fleet's cards show: the one state each card's tile shows (provider pages), and the staff's fleet page
reads across every provider (cards by health and utilisation, per provider and GPU model, the unhealthy ones, the
catalogue's use). The fleet page reads aggregates in SQL: a handful of GROUP BY queries, whatever the number of
cards. Staff reads run inside the staff policy (accounts.permissions.staff_required)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, F, FloatField, Func, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Organization
from inventory.models import Gpu, GpuModel, Server
from inventory.services import agent_silence_limit


def stale_before(now: datetime | None = None) -> datetime:
    """A card whose last sample is older than this has a silent agent: its figures would mislead."""
    return (now or timezone.now()) - agent_silence_limit()


def card_state(gpu: Gpu, *, fresh_after: datetime) -> str:
    """Which one state a card shows: healthy, degraded, failed, drained or nodata.

    Health wins over everything (a failed card is also drained, and it must show red); then a card the provider
    drained, then a card with no sample since `fresh_after`, whose last figures would mislead."""
    if gpu.health in (Gpu.Health.FAILED, Gpu.Health.DEGRADED):
        return gpu.health
    if gpu.drained:
        return "drained"
    if gpu.last_sample_at is None or gpu.last_sample_at < fresh_after:
        return "nodata"
    return "healthy"


def gpu_models_in_use() -> QuerySet[GpuModel]:
    """Every GPU model (active or not) with how many servers and cards use it, active ones first."""
    return GpuModel.objects.annotate(
        server_count=Count("servers", distinct=True),
        card_count=Count("servers__gpus", distinct=True),
    ).order_by("-active", "vendor", "name")


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


FLEET_COUNTS = (
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
    total = {name: sum(row[name] for row in rows) for name in FLEET_COUNTS}
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
