"""Provider payouts and the staff reconciliation report (API.md: Billing).

- `GET /api/v1/payouts/`, `GET /api/v1/payouts/{id}/`: the caller's provider statements (gross, commission, credits,
  net, state) with their payouts; staff may read any statement by id.
- `POST /api/v1/payouts/{id}/pay/` (staff): send the statement's net by Stripe Connect transfer, or, with
  `{"bank_reference": "..."}`, record that it was settled by bank. Another tenant's statement is 404 for
  non-staff, and one's own is 403 (only staff pay).
- `GET /api/v1/admin/reconciliation/?period=YYYY-MM` (staff): totals and mismatches; `?format=csv` or
  `Accept: text/csv` for the mismatches as CSV.
- `POST /api/v1/admin/close-period/` `{"period": "YYYY-MM"}` (staff): what /staff/close-period/ does, for scripts and
  the `suanli close-period` command: finalise the month's invoices and provider statements (idempotent), 409
  `period_open` for a month not over yet.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, renderers, serializers
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor, is_platform_staff
from accounts.apiviews import OrgAPIView, TenantViewSet
from accounts.errors import NotAllowed
from accounts.permissions import HasOrganization, IsStaff
from accounts.serializers import StrictSerializer
from billing import reconciliation, services
from billing.access import access_statement, statements_with_payouts
from billing.invoicing import close_period
from billing.models import Payout, ProviderStatement
from billing.stripe_gateway import PaymentProviderError, StripeUnavailable


class PayoutOutput(serializers.ModelSerializer):
    class Meta:
        model = Payout
        fields = [
            "id",
            "method",
            "amount",
            "currency",
            "state",
            "reference",
            "failure_message",
            "created_at",
            "paid_at",
        ]


class StatementOutput(serializers.ModelSerializer):
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    payouts = PayoutOutput(many=True, read_only=True)

    class Meta:
        model = ProviderStatement
        fields = [
            "id",
            "organization",
            "period",
            "currency",
            "gross",
            "take_rate",
            "commission",
            "credits",
            "net",
            "state",
            "payouts",
            "created_at",
        ]


class PayInput(StrictSerializer):
    bank_reference = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Record a bank settlement under this reference instead of sending a Stripe Connect transfer.",
    )


class PayoutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """A provider's monthly statements, newest first, with what was paid out for each. Any member may read."""

    model = ProviderStatement
    serializer_class = StatementOutput
    permission_classes = [IsAuthenticated, HasOrganization]
    filterset_fields = ["state", "period", "currency"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ProviderStatement.objects.none()
        return super().get_queryset()

    def scope_queryset(self, queryset):
        return statements_with_payouts(queryset)

    def get_permissions(self):
        if self.action == "pay":
            return [IsAuthenticated()]  # the statement's owner is checked first, so a foreign one is 404
        return super().get_permissions()

    def get_object(self) -> ProviderStatement:
        """Own statements; any for staff reading or paying one (a foreign or unknown id is 404 alike for everyone
        else)."""
        return access_statement(Actor.of(self.request, staff_action=self.action == "pay"), self.kwargs["pk"])

    @extend_schema(
        request=PayInput,
        responses={
            200: StatementOutput,
            409: OpenApiResponse(description="Already paid, nothing to pay, or bank settlement required"),
            502: OpenApiResponse(description="Stripe refused the transfer or could not be reached"),
        },
    )
    @action(detail=True, methods=["post"])
    def pay(self, request: Request, pk: str) -> Response:
        """Staff: pay the statement's net (Stripe Connect transfer, or a bank settlement with `bank_reference`)."""
        statement = self.get_object()
        if not is_platform_staff(request.user):
            raise NotAllowed(IsStaff.message)
        data = PayInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            services.statement_pay(
                statement=statement, by=request.user, bank_reference=data.validated_data.get("bank_reference")
            )
        except StripeUnavailable as exc:
            raise PaymentProviderError(str(exc)) from exc
        return Response(self.get_serializer(self.get_object()).data)


# --- reconciliation ------------------------------------------------------------------------------------------


class CSVRenderer(renderers.BaseRenderer):
    """The reconciliation's mismatches as CSV (the view hands it the CSV text)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if isinstance(data, str):
            return data.encode()
        out = io.StringIO()  # anything else (never reached by the view's own answers): one row per key
        writer = csv.writer(out)
        for key, value in (data or {}).items():
            writer.writerow([key, value])
        return out.getvalue().encode()


class MismatchOutput(serializers.Serializer):
    kind = serializers.CharField()
    message = serializers.CharField()
    currency = serializers.CharField()
    objects = serializers.DictField(child=serializers.ListField(), help_text="Ids or numbers of the rows behind it")


class ReconciliationResaleOutput(serializers.Serializer):
    organization = serializers.IntegerField(help_text="The reseller")
    currency = serializers.CharField()
    resold_card_seconds = serializers.DecimalField(max_digits=24, decimal_places=6)
    resale_revenue = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="What renters were charged")
    take_rate = serializers.DecimalField(max_digits=5, decimal_places=4)
    commission = serializers.DecimalField(max_digits=18, decimal_places=2)
    resale_net = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="Revenue less commission")
    contract_cost = serializers.DecimalField(
        max_digits=18, decimal_places=2, help_text="The month's cost of its contracts that back resale offers"
    )
    margin = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="Net less contract cost")


class ReconciliationOutput(serializers.Serializer):
    period = serializers.CharField()
    ok = serializers.BooleanField()
    checked_at = serializers.DateTimeField()
    totals = serializers.DictField(
        child=serializers.DictField(child=serializers.DecimalField(max_digits=18, decimal_places=2)),
        help_text="Per currency: metered, invoiced, paid, open, void, provider gross/commission/net, paid out, ...",
    )
    counts = serializers.DictField(child=serializers.IntegerField())
    stripe = serializers.DictField(child=serializers.IntegerField(), help_text="How payments were matched")
    mismatches = MismatchOutput(many=True)
    resale = ReconciliationResaleOutput(many=True, help_text="Per reseller and currency: its month of resale added up")


class ReconciliationApi(OrgAPIView):
    """Staff: reconcile a closed month (billing/reconciliation/). JSON, or CSV of the mismatches."""

    permission_classes = [IsAuthenticated, IsStaff]
    renderer_classes = [renderers.JSONRenderer, CSVRenderer]

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        # Errors are JSON whatever was asked for (API.md: Errors).
        if response.status_code >= 400 and isinstance(response, Response):
            request.accepted_renderer = renderers.JSONRenderer()
            request.accepted_media_type = "application/json"
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        parameters=[
            OpenApiParameter("period", OpenApiTypes.STR, required=True, description="YYYY-MM"),
            OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], required=False),
        ],
        responses={200: ReconciliationOutput, (200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request: Request) -> Response:
        period = request.query_params.get("period", "")
        result = reconciliation.reconcile(period)
        if request.accepted_renderer.format == "csv":
            filename = f"reconciliation-{result.period}.csv"
            return Response(
                reconciliation.mismatches_csv(result),
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        return Response(result.as_dict())


class ClosePeriodInput(StrictSerializer):
    period = serializers.CharField(max_length=7, help_text="YYYY-MM, a month that is over")


class ClosePeriodOutput(serializers.Serializer):
    period = serializers.CharField()
    invoices = serializers.IntegerField(help_text="Invoices made by this close (0 when it was closed before)")
    statements = serializers.IntegerField(help_text="Provider statements made by this close")


class ClosePeriodApi(OrgAPIView):
    """Staff: close a month (billing.invoicing.close_period), as the staff page does."""

    permission_classes = [IsAuthenticated, IsStaff]

    @extend_schema(request=ClosePeriodInput, responses={200: ClosePeriodOutput})
    def post(self, request: Request) -> Response:
        data = ClosePeriodInput(data=request.data)
        data.is_valid(raise_exception=True)
        label = data.validated_data["period"]
        made = close_period(label)  # period_of checks the label (400) and refuses an open month (409)
        return Response(ClosePeriodOutput({"period": label, **made}).data)
