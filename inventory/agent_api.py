"""The agent endpoints of API.md: enrolment and signed reports. Agents authenticate by signature, not by
user credentials, so these views opt out of the user authentication and org context of the rest of the API."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import resolve
from django.utils import timezone, translation
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.clientip import client_key
from accounts.errors import Unauthenticated
from accounts.middleware import database_unavailable, is_database_unavailable
from accounts.serializers import StrictSerializer
from accounts.throttling import AtomicScopedThrottle, hit
from inventory import ingest
from inventory.models import Server


class EnrollGpu(StrictSerializer):
    index = serializers.IntegerField(min_value=0, max_value=63)
    uuid = serializers.CharField(max_length=80)
    name = serializers.CharField(max_length=100)
    memory_total_mb = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False)
    serial = serializers.CharField(max_length=80, required=False, allow_blank=True)


class EnrollInput(StrictSerializer):
    enrollment_token = serializers.CharField(max_length=200)
    hostname = serializers.CharField(max_length=255, allow_blank=True, default="")
    gpus = EnrollGpu(many=True, allow_empty=False, max_length=64)
    agent_version = serializers.CharField(max_length=50, required=False)


class EnrollOutput(serializers.Serializer):
    server = serializers.IntegerField()
    agent_id = serializers.UUIDField()
    agent_secret = serializers.CharField()


class ReportAccepted(serializers.Serializer):
    accepted = serializers.BooleanField()
    duplicate = serializers.BooleanField(required=False)


class EnrollThrottle(AtomicScopedThrottle):
    scope = "agent_enroll"


class AgentEnrollApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [EnrollThrottle]

    @extend_schema(request=EnrollInput, responses={201: EnrollOutput}, tags=["agent"])
    def post(self, request: Request) -> Response:
        data = EnrollInput(data=request.data)
        data.is_valid(raise_exception=True)
        server, secret = ingest.agent_enroll(
            enrollment_token=data.validated_data["enrollment_token"],
            hostname=data.validated_data["hostname"],
            gpus=data.validated_data["gpus"],
        )
        body = {"server": server.pk, "agent_id": str(server.agent_id), "agent_secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)


SIGNED = [
    OpenApiParameter("X-Agent-Id", str, OpenApiParameter.HEADER, required=True),
    OpenApiParameter("X-Agent-Timestamp", int, OpenApiParameter.HEADER, required=True),
    OpenApiParameter("X-Agent-Signature", str, OpenApiParameter.HEADER, required=True),
]


def authenticate_agent(request: Request, *, body: bytes, now: datetime, limit: str = "agent_reports") -> Server:
    """The server whose agent signed this request (reports and the desired-state read alike).

    The signature is always checked, and a correctly signed request is never refused for anyone else's bad ones:
    requests refused for their signature are counted per client address (accounts.clientip, never a forwarded
    header the client wrote), and over that limit only the *bad* ones are answered 429 instead of 401. Signed
    requests are then limited per agent, counted after the signature checks out, so nobody can use up another
    agent's allowance by naming it. The agent honours the 429's Retry-After and keeps spooling."""
    limits = settings.SUANLI_RATE_LIMITS
    try:
        server = ingest.authenticate_report(
            agent_id=request.headers.get("X-Agent-Id", ""),
            timestamp=request.headers.get("X-Agent-Timestamp", ""),
            signature=request.headers.get("X-Agent-Signature", ""),
            body=body,
            now=now,
        )
    except Unauthenticated:
        allowed, wait = hit("agent_auth_fail", client_key(request), limits["agent_auth_fail"])
        if not allowed:
            raise Throttled(wait=wait, detail="Too many refused requests from this address.") from None
        raise
    allowed, wait = hit(limit, str(server.agent_id), limits[limit])
    if not allowed:
        raise Throttled(wait=wait, detail="Too many requests from this agent; slow down.")
    return server


class AgentReportApi(APIView):
    """Signed by the agent; the raw body is verified before it is parsed."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def parse_extra(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Parts of a report that layers above the inventory read (workload states); checked before anything is
        stored, so a bad report is refused whole."""
        return {}

    def after_ingest(self, server: Server, report: dict[str, Any], extra: dict[str, Any], now: datetime) -> None:
        """Called once per report accepted (not for a duplicate), after its telemetry is stored."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """A report (almost every request the platform serves) is answered without DRF's request wrapping, content
        negotiation and rendering: its raw body is verified and decoded by `receive`, and the answer is one of two
        fixed JSON bodies. An error takes DRF's path from the exception on, so it reads exactly as every API error
        does (the same handler, status, body and headers); other methods are DRF's as before (405)."""
        if request.method != "POST":
            return super().dispatch(request, *args, **kwargs)
        try:
            return self.receive(request)
        except Exception as exc:  # noqa: BLE001 - DRF's handler answers it, or re-raises what it does not know
            return self._refused(request, exc, *args, **kwargs)

    def _refused(self, request: HttpRequest, exc: Exception, *args: Any, **kwargs: Any) -> HttpResponse:
        """The answer APIView.dispatch gives when its handler raises `exc`."""
        self.args, self.kwargs = args, kwargs
        self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        self.format_kwarg = None
        response = self.handle_exception(exc)
        self.response = self.finalize_response(self.request, response, *args, **kwargs)
        return self.response

    def receive(self, request: HttpRequest) -> HttpResponse:
        now = timezone.now()
        body = request.body
        server = authenticate_agent(request, body=body, now=now)
        payload = ingest.load_report(body)
        report = ingest.check_report(payload)
        extra = self.parse_extra(payload)
        result = ingest.report_ingest(server=server, report=report, now=now)
        if result.duplicate:
            return HttpResponse(_DUPLICATE, content_type="application/json", status=status.HTTP_200_OK)
        self.after_ingest(server, report, extra, now)
        # Only now, after the commit of its samples (and of its workload states): a 202 means the report is stored.
        return HttpResponse(_ACCEPTED, content_type="application/json", status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=SIGNED, request=None, responses={202: ReportAccepted, 200: ReportAccepted}, tags=["agent"]
    )
    def post(self, request: Request) -> Response:
        # Not reached through dispatch, which answers a POST itself: it describes the endpoint to the OpenAPI schema.
        return self.receive(request._request)


# The two answers to a report, as DRF's JSONRenderer writes them.
_ACCEPTED = b'{"accepted":true}'
_DUPLICATE = b'{"accepted":false,"duplicate":true}'


REPORT_PATH = "/api/v1/agent/reports/"


class AgentReportMiddleware:
    """A POST to the report path goes straight to its view (the one the URLconf names for it), past the middleware
    below this one and URL resolution: sessions, CSRF, users, organisations, messages, CSP and whitenoise do nothing
    for a signed machine request, and they were a good part of its cost (bench/ingest.py). Installed after the
    tenant guard, the untrusted forwarded headers and SecurityMiddleware (HTTPS redirect, security headers), which
    a report still passes. What the skipped ones would have done for it is done here: the language of the answer
    (LocaleMiddleware) and a lost database answered 503 (DatabaseUnavailableMiddleware); a body over the limit is
    refused by the view as before (400 body_too_large)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info != REPORT_PATH or request.method != "POST":
            return self.get_response(request)
        translation.activate(translation.get_language_from_request(request))
        request.LANGUAGE_CODE = translation.get_language()
        try:
            response = _report_view()(request)
            if hasattr(response, "render") and not response.is_rendered:
                response = response.render()  # an error is DRF's Response, rendered late (Django's _get_response)
            return response
        except Exception as exc:
            if is_database_unavailable(exc):
                return database_unavailable(request)
            raise


@functools.cache
def _report_view() -> Callable[[HttpRequest], HttpResponse]:
    return resolve(REPORT_PATH).func
