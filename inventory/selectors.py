"""Reads for the catalogue and a provider's servers. Tenant-owned reads always take the organisation."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from accounts.errors import InvalidInput
from accounts.models import Organization
from accounts.tenancy import scoped
from inventory import telemetry
from inventory.models import Gpu, GpuModel, Server


def gpu_models_listed() -> QuerySet[GpuModel]:
    """The public catalogue: active GPU models, vendor then name."""
    return GpuModel.objects.filter(active=True).order_by("vendor", "name")


def servers_for_org(*, org: Organization | None) -> QuerySet[Server]:
    """The organisation's servers with their GPU model and cards loaded; none without an organisation."""
    return with_details(scoped(Server, org)).order_by("id")


def with_details(queryset: QuerySet[Server], *, cards: QuerySet[Gpu] | None = None) -> QuerySet[Server]:
    """`queryset` with what the server views show joined or prefetched: the model, and the cards in index order
    (`cards`, when a layer above adds to them: the scheduler's `allocated`, see scheduler.selectors)."""
    return queryset.select_related("gpu_model").prefetch_related(
        Prefetch("gpus", queryset=cards if cards is not None else Gpu.objects.order_by("index"))
    )


MAX_POINTS = 2000
# Steps offered to charts; the default is the smallest that keeps a series under ~360 points.
NICE_STEPS = (10, 30, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400)


def chart_step(*, since: datetime, until: datetime, step: int | None) -> int:
    """The step (seconds) a chart over [since, until) is read at: `step` if given, else the smallest of NICE_STEPS
    that keeps a series under ~360 points. A range that ends before it starts, or over MAX_POINTS points per card
    at that step, is a 400 beside its field (the server's and the lease's charts alike)."""
    if since >= until:
        raise InvalidInput("until must be after since.", fields={"until": ["until must be after since."]})
    span = (until - since).total_seconds()
    if step is None:
        step = next((s for s in NICE_STEPS if span / s <= 360), NICE_STEPS[-1])
    if span / step > MAX_POINTS:
        raise InvalidInput(
            f"That range at that step is over {MAX_POINTS} points per card; use a larger step.",
            fields={"step": [f"At least {int(span // MAX_POINTS) + 1} seconds for this range."]},
        )
    return step


def server_telemetry(
    *, server: Server, since: datetime | None = None, until: datetime | None = None, step: int | None = None
) -> dict:
    """Per-GPU series of `server` over [since, until) at `step` seconds (default: the last hour)."""
    now = timezone.now()
    until = until or now
    since = since or until - timedelta(hours=1)
    step = chart_step(since=since, until=until, step=step)
    result = telemetry.series(server_id=server.pk, since=since, until=until, step=step, now=now)
    gpus = server.gpus.order_by("index").values_list("pk", "index", "uuid")
    return {
        "server": server.pk,
        "since": since,
        "until": until,
        "step": step,
        "source": result["source"],
        "gpus": [{"index": index, "uuid": uuid, "points": result["points"].get(pk, [])} for pk, index, uuid in gpus],
    }
