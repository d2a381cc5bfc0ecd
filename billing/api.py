"""The billing endpoints of API.md: invoices (customers) and a lease's cost so far."""

from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import mixins
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.apiviews import OrgAPIView, TenantViewSet
from accounts.permissions import HasOrganization
from billing.metering import lease_usage
from billing.models import Invoice, InvoiceLine
from billing.serializers import InvoiceOutput, InvoiceSummary, UsageOutput
from scheduler.access import access_lease


class InvoiceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """The organisation's finalised invoices, newest month first. Any member may read them."""

    model = Invoice
    permission_classes = [IsAuthenticated, HasOrganization]
    filterset_fields = ["state", "period", "currency", "overdue"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invoice.objects.none()
        return super().get_queryset()

    def scope_queryset(self, queryset):
        queryset = queryset.exclude(state=Invoice.State.DRAFT).order_by("-period", "-id")
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(Prefetch("lines", InvoiceLine.objects.order_by("id")), "credit_notes")
        return queryset

    def get_serializer_class(self):
        return InvoiceSummary if self.action == "list" else InvoiceOutput


class LeaseUsageApi(OrgAPIView):
    """Cost so far of a lease, live: metered hours plus the part since the meter last ran, rated the same way."""

    permission_classes = [IsAuthenticated, HasOrganization]

    @extend_schema(responses={200: UsageOutput})
    def get(self, request: Request, pk: str) -> Response:
        lease = access_lease(request.org, pk, staff=bool(request.user.is_staff))
        return Response(UsageOutput(lease_usage(lease=lease)).data)
