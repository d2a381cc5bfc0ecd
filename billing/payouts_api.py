"""Provider payouts (API.md: Billing).

- `GET /api/v1/payouts/`, `GET /api/v1/payouts/{id}/`: the caller's provider statements (gross, commission, credits,
  net, state) with their payouts; staff may read any statement by id.
- `POST /api/v1/payouts/{id}/pay/` (staff): send the statement's net by Stripe Connect transfer, or, with
  `{"bank_reference": "..."}`, record that it was settled by bank. Another tenant's statement is 404 for
  non-staff, and one's own is 403 (only staff pay).
"""

from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.apiviews import TenantViewSet
from accounts.errors import DomainError, NotAllowed, NotFound
from accounts.permissions import HasOrganization, IsStaff
from billing import payouts
from billing.models import Payout, ProviderStatement
from billing.stripe_gateway import StripeUnavailable


class PaymentProviderError(DomainError):
    status_code = status.HTTP_502_BAD_GATEWAY
    code = "payment_provider_error"


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


class PayInput(serializers.Serializer):
    bank_reference = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Record a bank settlement under this reference instead of sending a Stripe Connect transfer.",
    )


def _statement_id(value: object) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        raise NotFound("Unknown statement.") from None


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
        live = Payout.objects.order_by("id")
        return queryset.prefetch_related(Prefetch("payouts", live)).order_by("-period", "-id")

    def get_permissions(self):
        if self.action == "pay":
            return [IsAuthenticated()]  # the statement's owner is checked first, so a foreign one is 404
        return super().get_permissions()

    def get_object(self) -> ProviderStatement:
        """Own statements; any for staff (a foreign or unknown id is 404 either way for everyone else)."""
        pk = _statement_id(self.kwargs["pk"])
        if self.request.user.is_staff:
            queryset = ProviderStatement.objects.prefetch_related(Prefetch("payouts", Payout.objects.order_by("id")))
        else:
            queryset = self.get_queryset()
        statement = queryset.filter(pk=pk).first()
        if statement is None:
            raise NotFound("Unknown statement.")
        return statement

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
        if not request.user.is_staff:
            raise NotAllowed(IsStaff.message)
        data = PayInput(data=request.data)
        data.is_valid(raise_exception=True)
        reference = data.validated_data.get("bank_reference")
        try:
            if reference is not None:
                payouts.payout_record_bank(statement=statement, reference=reference, by=request.user)
            else:
                payouts.payout_send(statement=statement, by=request.user)
        except StripeUnavailable as exc:
            raise PaymentProviderError(str(exc)) from exc
        return Response(self.get_serializer(self.get_object()).data)
