"""The billing endpoints of API.md: invoices (customers) and a lease's cost so far."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor
from accounts.apiviews import OrgAPIView, TenantViewSet
from accounts.permissions import HasOrganization
from billing import pdf
from billing.access import access_invoice, invoices_visible, with_lines
from billing.metering import lease_usage
from billing.models import Invoice
from billing.serializers import InvoiceOutput, InvoiceSummary, UsageOutput
from billing.views_invoices import invoice_view
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
        queryset = invoices_visible(queryset)
        if self.action == "retrieve":
            queryset = with_lines(queryset)
        return queryset

    def get_object(self) -> Invoice:
        """The organisation's finalised invoice (any one for a staff read); a draft, another tenant's and an unknown
        id are all 404."""
        return access_invoice(Actor.of(self.request), self.kwargs["pk"])

    def get_serializer_class(self):
        return InvoiceSummary if self.action == "list" else InvoiceOutput

    @extend_schema(responses={(200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, "The invoice as A4 PDF")})
    @action(detail=True, methods=["get"])
    def pdf(self, request: Request, pk: str) -> HttpResponse:
        """The invoice as the same A4 PDF as its page's (for scripts and the `suanli` command line). Send
        `Accept: application/pdf, application/json` (errors are JSON)."""
        invoice = self.get_object()
        response = HttpResponse(pdf.invoice_pdf(invoice_view(invoice)), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
        response["Cache-Control"] = "private"
        return response


class LeaseUsageApi(OrgAPIView):
    """Cost so far of a lease, live: metered hours plus the part since the meter last ran, rated the same way."""

    permission_classes = [IsAuthenticated, HasOrganization]

    @extend_schema(responses={200: UsageOutput})
    def get(self, request: Request, pk: str) -> Response:
        lease = access_lease(Actor.of(request), pk)
        return Response(UsageOutput(lease_usage(lease=lease)).data)
