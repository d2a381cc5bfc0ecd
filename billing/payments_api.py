"""`POST /api/v1/invoices/{id}/pay/`: start paying an open invoice with Stripe (Idempotency-Key supported)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor
from accounts.apiviews import OrgAPIView
from accounts.parsers import JSONParser
from accounts.permissions import BILLING, HasOrganization, role_required
from accounts.tenancy import scoped
from billing import payments, services
from billing.access import access_invoice
from billing.models import Invoice
from billing.stripe_gateway import PaymentProviderError, StripeUnavailable
from scheduler.idempotency import HEADER, run_idempotent

IDEMPOTENCY_KEY = OpenApiParameter(
    HEADER, location=OpenApiParameter.HEADER, required=False, description="Retries with the same key replay the answer."
)


class PaymentStartOutput(serializers.Serializer):
    payment = serializers.IntegerField(source="payment.pk")
    client_secret = serializers.CharField()
    publishable_key = serializers.CharField()
    amount = serializers.DecimalField(max_digits=18, decimal_places=2)
    currency = serializers.CharField()


class InvoicePayView(OrgAPIView):
    """Start paying an open invoice: a Stripe PaymentIntent's client secret for Stripe.js (owner, admin, billing)."""

    permission_classes = [IsAuthenticated, HasOrganization, role_required(*BILLING)]
    # The request has no body; a browser's empty form post is as good as an empty JSON one.
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    serializer_class = PaymentStartOutput

    def get_queryset(self):
        return scoped(Invoice, getattr(self.request, "org", None))

    @extend_schema(request=None, responses={200: PaymentStartOutput}, parameters=[IDEMPOTENCY_KEY])
    def post(self, request: Request, pk: int) -> Response:
        invoice = access_invoice(Actor.for_org(request.org), pk)
        # Checked before the Idempotency-Key record, so that a site configured later is not answered 503 again.
        payments.payments_configured_check()

        def work():
            start = services.invoice_pay(invoice=invoice, org=request.org)
            return status.HTTP_200_OK, PaymentStartOutput(start).data

        try:
            code, body = run_idempotent(request, scope=f"invoice.{invoice.pk}.pay", work=work)
        except StripeUnavailable as exc:
            # Not a DomainError, so the idempotency record rolled back with it: a retry asks Stripe again.
            raise PaymentProviderError(str(exc)) from exc
        return Response(body, status=code)
