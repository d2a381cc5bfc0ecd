"""Base classes every API view of ours uses: organisation context and tenant-scoped querysets."""

from __future__ import annotations

from typing import Any

from django.db import models
from rest_framework import generics, viewsets
from rest_framework.request import Request

from accounts.context import attach, membership_for
from accounts.tenancy import TenantQuerySet, scoped

ORG_HEADER = "HTTP_X_ORGANIZATION"


class OrgContextMixin:
    """Resolve `request.org` after authentication and before permissions, from `X-Organization`."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.perform_authentication(request)
        membership = membership_for(request.user, request.META.get(ORG_HEADER))
        attach(request, membership)
        attach(request._request, membership)
        super().initial(request, *args, **kwargs)


class TenantScopedMixin(OrgContextMixin):
    """Views over a tenant-owned model: the queryset is always `Model.objects.for_org(request.org)`.

    Subclasses set `model` (and may refine with `scope_queryset`); they never build the base queryset
    themselves, so a view cannot forget the tenant filter.
    """

    model: type[models.Model]

    def scope_queryset(self, queryset: TenantQuerySet) -> models.QuerySet:
        return queryset

    def get_queryset(self) -> models.QuerySet:
        return self.scope_queryset(scoped(self.model, self.request.org))


class OrgAPIView(OrgContextMixin, generics.GenericAPIView):
    pass


class TenantViewSet(TenantScopedMixin, viewsets.GenericViewSet):
    pass
