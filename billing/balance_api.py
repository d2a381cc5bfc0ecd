"""The balance endpoints of API.md (Balance and spending): an organisation's money now, its top-ups and ledger, its
spend limit; and the staff's billing terms and adjustments of any organisation.

The figures come from billing/balances.py (`standing`), the writes from the services (billing/services.py); these
views only check who may ask, validate the input and shape the answer. Any member reads; top-ups and the spend
limit are the owner's, admins' and billing members' (role_required(*BILLING)); terms and adjustments are platform
staff's alone: as for approving an organisation, another tenant's organisation answers like a missing id (404) and
its own members who are not staff are refused (403).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor, access_organization
from accounts.apiviews import OrgAPIView, TenantScopedMixin
from accounts.models import Organization
from accounts.permissions import BILLING, HasOrganization, IsStaff, role_required
from billing import services
from billing.balance_serializers import (
    AdjustmentInput,
    BalanceEntryOutput,
    BalanceOutput,
    SpendLimitInput,
    SpendLimitOutput,
    TermsInput,
    TermsOutput,
    TopUpInput,
    TopUpOutput,
    TopUpStartOutput,
)
from billing.balances import standing
from billing.funds import spend_limit_of
from billing.models import BalanceEntry, TopUp
from billing.payments_api import IDEMPOTENCY_KEY
from billing.stripe_gateway import PaymentProviderError, StripeUnavailable, payments_configured_check
from billing.terms import terms_of
from scheduler.idempotency import run_idempotent
from scheduler.models import Lease
from workloads.models import Volume

_ZERO = Decimal(0)


def balance_of(org: Organization) -> dict[str, Any]:
    """GET /api/v1/balance/'s answer: the organisation's standing, with this month's spending per lease, volume
    and day."""
    money = standing(org)
    month = money.this_month
    ids = sorted(set(month.per_lease) | set(money.burn_per_lease))
    leases = Lease.objects.for_org(org).filter(pk__in=ids).order_by("pk").values("pk", "plan", "state")
    volume_ids = sorted(set(month.per_volume) | set(money.burn_per_volume))
    volumes = (
        Volume.objects.for_org(org)
        .filter(pk__in=volume_ids)
        .order_by("pk")
        .values("pk", "name", "size_gb", "state", "wipe_at")
    )
    return {
        "currency": money.currency,
        "mode": money.terms.mode,
        "balance": money.balance,
        "credit_limit": money.terms.credit_limit,
        "unpaid": money.unpaid,
        "available": money.available,
        "month_to_date": money.month_to_date,
        "burn_per_hour": money.burn_per_hour,
        "runs_out_at": money.runs_out_at,
        "monthly_cap": money.monthly_cap,
        "leases": [
            {
                "lease": lease["pk"],
                "plan": lease["plan"],
                "state": lease["state"],
                "month_to_date": month.per_lease.get(lease["pk"], _ZERO),
                "burn_per_hour": money.burn_per_lease.get(lease["pk"], _ZERO),
            }
            for lease in leases
        ],
        "volumes": [
            {
                "volume": volume["pk"],
                "name": volume["name"],
                "size_gb": volume["size_gb"],
                "state": volume["state"],
                "wipe_at": volume["wipe_at"],
                "month_to_date": month.per_volume.get(volume["pk"], _ZERO),
                "burn_per_hour": money.burn_per_volume.get(volume["pk"], _ZERO),
            }
            for volume in volumes
        ],
        "daily": [{"date": day, "amount": amount} for day, amount in sorted(month.daily.items())],
        "as_of": money.as_of,
    }


class BalanceApi(OrgAPIView):
    """The organisation's money now. Any member may read it."""

    permission_classes = [IsAuthenticated, HasOrganization]

    @extend_schema(responses={200: BalanceOutput})
    def get(self, request: Request) -> Response:
        return Response(BalanceOutput(balance_of(request.org)).data)


class TopUpsApi(TenantScopedMixin, generics.ListAPIView):
    """The organisation's top-ups, newest first (any member); POST starts one (owner, admin, billing)."""

    model = TopUp
    serializer_class = TopUpOutput
    permission_classes = [IsAuthenticated, HasOrganization, role_required(*BILLING)]
    filterset_fields = ["state", "currency"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return TopUp.objects.none()
        return super().get_queryset().order_by("-created_at", "-id")

    @extend_schema(
        request=TopUpInput,
        responses={
            201: TopUpStartOutput,
            502: OpenApiResponse(description="Stripe could not be reached or refused"),
            503: OpenApiResponse(description="Online payments are not configured on this site"),
        },
        parameters=[IDEMPOTENCY_KEY],
    )
    def post(self, request: Request) -> Response:
        """Start a top-up: a Stripe PaymentIntent's client secret for Stripe.js. The balance rises when Stripe says
        the payment succeeded (the webhook), once. Retries with the same Idempotency-Key answer the same intent."""
        # Checked before the Idempotency-Key record, so that a site configured later is not answered 503 again.
        payments_configured_check()
        data = TopUpInput(data=request.data)
        data.is_valid(raise_exception=True)

        def work():
            start = services.top_up_start(org=request.org, by=request.user, **data.validated_data)
            return status.HTTP_201_CREATED, TopUpStartOutput(start).data

        try:
            code, body = run_idempotent(request, scope="balance.top_up", work=work)
        except StripeUnavailable as exc:
            # Not a DomainError, so the idempotency record rolled back with it: a retry asks Stripe again.
            raise PaymentProviderError(str(exc)) from exc
        return Response(body, status=code)


class BalanceEntriesApi(TenantScopedMixin, generics.ListAPIView):
    """The organisation's ledger, newest first: every movement of its balance. Any member may read it."""

    model = BalanceEntry
    serializer_class = BalanceEntryOutput
    permission_classes = [IsAuthenticated, HasOrganization]
    filterset_fields = ["kind", "currency"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return BalanceEntry.objects.none()
        return super().get_queryset().order_by("-created_at", "-id")


def _spend_limit(org: Organization) -> dict[str, Any]:
    cap, shares = spend_limit_of(org)
    return {"monthly_cap": cap, "currency": terms_of(org).currency, "alert_at": [float(share) for share in shares]}


class SpendLimitApi(OrgAPIView):
    """The organisation's monthly spend cap and the shares of it at which it is e-mailed. Any member reads; owner,
    admin and billing members set it (a lease that would take the month past the cap is refused, 402)."""

    permission_classes = [IsAuthenticated, HasOrganization, role_required(*BILLING)]

    @extend_schema(responses={200: SpendLimitOutput})
    def get(self, request: Request) -> Response:
        return Response(SpendLimitOutput(_spend_limit(request.org)).data)

    @extend_schema(request=SpendLimitInput, responses={200: SpendLimitOutput})
    def put(self, request: Request) -> Response:
        data = SpendLimitInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.spend_limit_set(
            org=request.org,
            monthly_cap=data.validated_data["monthly_cap"],
            alert_at=data.validated_data.get("alert_at"),
        )
        return Response(SpendLimitOutput(_spend_limit(request.org)).data)


# --- staff ----------------------------------------------------------------------------------------------------


def _staff_org(view: OrgAPIView, request: Request, pk: int) -> Organization:
    """Any organisation, for staff; as org approval does (accounts/api.py), another tenant's organisation answers
    like a missing id (404) and a member of it who is not staff is refused (403)."""
    org = access_organization(Actor.of(request, staff_action=True), pk)
    IsStaff().has_permission(request, view) or view.permission_denied(request, IsStaff.message)
    return org


def _terms(org: Organization) -> dict[str, Any]:
    terms = terms_of(org)
    return {"organization": org.pk, "mode": terms.mode, "credit_limit": terms.credit_limit, "currency": terms.currency}


class OrgBillingTermsApi(OrgAPIView):
    """Staff: how an organisation pays (prepaid or postpaid, its credit limit). A PUT adds a BillingTerms row;
    the old ones stay as its history."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: TermsOutput})
    def get(self, request: Request, pk: int) -> Response:
        return Response(TermsOutput(_terms(_staff_org(self, request, pk))).data)

    @extend_schema(request=TermsInput, responses={200: TermsOutput})
    def put(self, request: Request, pk: int) -> Response:
        org = _staff_org(self, request, pk)
        data = TermsInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.terms_set(org=org, by=request.user, **data.validated_data)
        return Response(TermsOutput(_terms(org)).data)


class OrgBalanceAdjustmentsApi(OrgAPIView):
    """Staff: record a bank transfer received (a positive amount with the bank's reference, once per reference) or
    adjust a balance with a reason (a goodwill credit; a negative amount takes money off)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=AdjustmentInput,
        responses={
            201: BalanceEntryOutput,
            200: OpenApiResponse(BalanceEntryOutput, description="This bank reference was recorded already"),
            409: OpenApiResponse(description="duplicate_reference: the reference was recorded for another amount"),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        org = _staff_org(self, request, pk)
        data = AdjustmentInput(data=request.data)
        data.is_valid(raise_exception=True)
        entry, created = services.adjustment_record(org=org, by=request.user, **data.validated_data)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(BalanceEntryOutput(entry).data, status=code)
