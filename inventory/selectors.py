"""Reads for the catalogue and a provider's servers. Tenant-owned reads always take the organisation."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from accounts.models import Organization
from accounts.tenancy import scoped
from inventory.models import Gpu, GpuModel, Server


def gpu_models_listed() -> QuerySet[GpuModel]:
    """The public catalogue: active GPU models, vendor then name."""
    return GpuModel.objects.filter(active=True).order_by("vendor", "name")


def servers_for_org(*, org: Organization | None) -> QuerySet[Server]:
    """The organisation's servers with their GPU model and cards loaded; none without an organisation."""
    return with_details(scoped(Server, org)).order_by("id")


def with_details(queryset: QuerySet[Server]) -> QuerySet[Server]:
    """`queryset` with what the server views show joined or prefetched (model, cards in index order)."""
    return queryset.select_related("gpu_model").prefetch_related(
        Prefetch("gpus", queryset=Gpu.objects.order_by("index"))
    )
