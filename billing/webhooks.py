"""`POST /webhooks/stripe/`: Stripe's events, signature checked, stored once and applied (billing/payments.py).

No session, no CSRF token, no API key: the Stripe signature is the authentication. Answers are JSON: 200 for an
event stored now or before, 400 (nothing stored) for a bad signature, a stale timestamp or a body that is not an
event; any other failure is a 500 and Stripe delivers the event again later.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.errors import error_body
from billing import services
from billing.stripe_gateway import SignatureInvalid


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        response = JsonResponse(error_body("method_not_allowed", "Use POST."), status=405)
        response["Allow"] = "POST"
        return response
    try:
        body = request.body
    except RequestDataTooBig:
        return JsonResponse(error_body("body_too_large", "The request body is too large."), status=400)
    try:
        receipt = services.stripe_event_receive(payload=body, signature_header=request.headers.get("Stripe-Signature"))
    except SignatureInvalid as exc:
        return JsonResponse(error_body(exc.code, exc.message), status=400)
    return JsonResponse({"received": receipt.event.event_id, "duplicate": receipt.duplicate})
