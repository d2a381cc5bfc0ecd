"""The one mechanism that scopes tenant-owned rows to the caller's organisation.

A tenant-owned model names the path to its organisation in `TENANT_FIELD` ("organization",
"server__organization", ...) and uses `TenantQuerySet` as its default manager. Every API view, page and
admin view reaches such rows only through `for_org(org)` (or the per-entity `access_<entity>` lookups built on it);
a row of another tenant is simply not in the queryset, so lookups answer 404. A model without `TENANT_FIELD` cannot
be scoped and raises, so a forgotten declaration fails closed instead of leaking.

While a request is being handled (`TenantGuardMiddleware`), a tenant-owned queryset refuses to run unless it is
scoped: by `for_org`/`for_orgs`, through a related manager of an object already reached (`lease.workloads.all()`),
or by `unscoped(why)`, where the caller says why it may see every tenant's rows (the staff policy, the platform's
own bookkeeping, an agent's own server). A query that forgot its scope raises `UnscopedQuery` (a 500 and a
traceback in tests), instead of quietly reaching another tenant's rows. Jobs and commands run outside requests.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    from accounts.models import Organization

_guarded: contextvars.ContextVar[bool] = contextvars.ContextVar("suanli_tenant_guard", default=False)


class UnscopedQuery(ImproperlyConfigured):
    """A tenant-owned queryset ran during a request without a tenant scope or a stated reason."""


def tenant_field(model: type[models.Model]) -> str:
    field = getattr(model, "TENANT_FIELD", None)
    if not field:
        raise ImproperlyConfigured(f"{model.__name__} has no TENANT_FIELD: it cannot be scoped to a tenant")
    return field


class TenantQuerySet(models.QuerySet):
    """A queryset of a tenant-owned model; it knows whether (and how) it was scoped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tenant_scope: str | None = None

    def _clone(self) -> TenantQuerySet:
        clone = super()._clone()
        clone._tenant_scope = self._tenant_scope
        return clone

    def _scoped_as(self, scope: str) -> TenantQuerySet:
        clone = self._chain()
        clone._tenant_scope = scope
        return clone

    def for_org(self, org: Organization | None) -> TenantQuerySet:
        """Rows owned by `org`; none at all when there is no organisation."""
        if org is None:
            return self.none()._scoped_as("no organisation")
        return self.filter(**{tenant_field(self.model): org.pk})._scoped_as(f"organisation {org.pk}")

    def for_orgs(self, org_ids: Any) -> TenantQuerySet:
        return self.filter(**{f"{tenant_field(self.model)}__in": org_ids})._scoped_as("organisations")

    def for_user(self, user: Any) -> TenantQuerySet:
        """Rows that belong to `user` themselves (a model naming `USER_FIELD`: their memberships, their
        organisations); none for an anonymous user."""
        field = getattr(self.model, "USER_FIELD", None)
        if not field:
            raise ImproperlyConfigured(f"{self.model.__name__} has no USER_FIELD: it cannot be scoped to a user")
        if not getattr(user, "is_authenticated", False):
            return self.none()._scoped_as("no user")
        return self.filter(**{field: user.pk})._scoped_as(f"user {user.pk}")

    def for_provider(self, org: Organization | None) -> TenantQuerySet:
        """Rows whose provider side is `org` (a model naming `PROVIDER_FIELD`, e.g. usage of its cards)."""
        field = getattr(self.model, "PROVIDER_FIELD", None)
        if not field:
            raise ImproperlyConfigured(f"{self.model.__name__} has no PROVIDER_FIELD")
        if org is None:
            return self.none()._scoped_as("no organisation")
        return self.filter(**{field: org.pk})._scoped_as(f"provider {org.pk}")

    def unscoped(self, why: str) -> TenantQuerySet:
        """Every tenant's rows, for a caller that says why it may see them (kept for the reader, not checked)."""
        if not why or not why.strip():
            raise ImproperlyConfigured("unscoped() needs the reason why this caller may see every tenant's rows")
        return self._scoped_as(why)

    def _check_scope(self) -> None:
        if self._tenant_scope is None and _guarded.get() and "instance" not in self._hints:
            raise UnscopedQuery(
                f"{self.model.__name__} queried without a tenant scope during a request: use for_org(), an "
                f"access_<entity>() lookup, or unscoped(why)"
            )

    # Every way a queryset reaches the database.
    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._check_scope()
        super()._fetch_all()

    def iterator(self, *args: Any, **kwargs: Any) -> Any:
        self._check_scope()
        return super().iterator(*args, **kwargs)

    def count(self) -> int:
        if self._result_cache is None:
            self._check_scope()
        return super().count()

    def exists(self) -> bool:
        if self._result_cache is None:
            self._check_scope()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._check_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        self._check_scope()
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._check_scope()
        return super().delete()


def tenant_models() -> list[type[models.Model]]:
    """Every installed model that is tenant-owned (used by the tenancy tests and the admin)."""
    return [m for m in apps.get_models() if getattr(m, "TENANT_FIELD", None)]


def scoped(model: type[models.Model], org: Organization | None) -> TenantQuerySet:
    manager = model._default_manager
    if not isinstance(manager.get_queryset(), TenantQuerySet):
        raise ImproperlyConfigured(f"{model.__name__}'s default manager is not a TenantQuerySet")
    return manager.get_queryset().for_org(org)


class TenantGuardMiddleware:
    """While a request is handled, unscoped tenant-owned querysets refuse to run (see the module's docstring)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _guarded.set(True)
        try:
            return self.get_response(request)
        finally:
            _guarded.reset(token)


class platform_work(contextlib.ContextDecorator):  # noqa: N801 - a decorator and context manager, like atomic
    """Platform work across tenants inside a request, with the reason why: the scheduler placing a lease on any
    provider's cards, metering, an agent's report on its own server. Services that the request layer calls with
    objects it already reached through the access layer declare it; their queries then run unguarded.
    """

    def __init__(self, why: str):
        if not why or not why.strip():
            raise ImproperlyConfigured("platform_work() needs the reason why this work spans tenants")
        self.why = why
        self._token: contextvars.Token[bool] | None = None

    def _recreate_cm(self) -> platform_work:
        return platform_work(self.why)  # a fresh one per call: calls may nest and run in several threads

    def __enter__(self) -> platform_work:
        self._token = _guarded.set(False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _guarded.reset(self._token)
