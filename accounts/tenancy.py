"""The one mechanism that scopes tenant-owned rows to the caller's organisation.

A tenant-owned model names the path to its organisation in `TENANT_FIELD` ("organization",
"server__organization", ...) and uses `TenantQuerySet` as its manager. Every API view, page and
non-superuser admin reaches such rows only through `for_org(org)`; a row of another tenant is simply not
in the queryset, so lookups answer 404. A model without `TENANT_FIELD` cannot be scoped and raises,
so a forgotten declaration fails closed instead of leaking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models

if TYPE_CHECKING:
    from accounts.models import Organization


def tenant_field(model: type[models.Model]) -> str:
    field = getattr(model, "TENANT_FIELD", None)
    if not field:
        raise ImproperlyConfigured(f"{model.__name__} has no TENANT_FIELD: it cannot be scoped to a tenant")
    return field


class TenantQuerySet(models.QuerySet):
    def for_org(self, org: Organization | None) -> TenantQuerySet:
        """Rows owned by `org`; none at all when there is no organisation."""
        if org is None:
            return self.none()
        return self.filter(**{tenant_field(self.model): org.pk})

    def for_orgs(self, org_ids: Any) -> TenantQuerySet:
        return self.filter(**{f"{tenant_field(self.model)}__in": org_ids})


def tenant_models() -> list[type[models.Model]]:
    """Every installed model that is tenant-owned (used by the tenancy tests and the admin)."""
    return [m for m in apps.get_models() if getattr(m, "TENANT_FIELD", None)]


def scoped(model: type[models.Model], org: Organization | None) -> TenantQuerySet:
    manager = model._default_manager
    if not isinstance(manager.get_queryset(), TenantQuerySet):
        raise ImproperlyConfigured(f"{model.__name__}'s default manager is not a TenantQuerySet")
    return manager.get_queryset().for_org(org)
