"""The catalogue and server endpoints of API.md. Parse, call a service or selector, serialize."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor
from accounts.apiviews import TenantViewSet
from accounts.permissions import OPERATE, HasOrganization, IsProvider, role_required
from inventory import selectors, services
from inventory.access import access_server
from inventory.models import Gpu, Server
from inventory.serializers import (
    DrainInput,
    GpuModelOutput,
    ServerDetail,
    ServerInput,
    ServerOutput,
    ServerUpdate,
    ServerWithToken,
    TelemetryOutput,
    TelemetryQuery,
)


class GpuModelListApi(generics.ListAPIView):
    """The GPU catalogue: dense FP16/BF16 tensor TFLOPS and the NVML names of each model. Public."""

    permission_classes = [AllowAny]
    serializer_class = GpuModelOutput
    pagination_class = None

    def get_queryset(self):
        return selectors.gpu_models_listed()


class ServerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """A provider's servers. Reads: any member; writes: owner, admin or member of a provider organisation.

    The queryset is always the caller's organisation's (TenantViewSet), so another tenant's id is 404. Routed by
    the scheduler's subclass (scheduler/servers_api.py), which adds whether a lease holds each card (`cards`).
    """

    model = Server
    permission_classes = [IsAuthenticated, HasOrganization, IsProvider, role_required(*OPERATE)]
    filterset_fields = ["status", "region", "gpu_model", "drained"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request, no organisation
            return Server.objects.none()
        return super().get_queryset()

    def cards(self) -> QuerySet[Gpu] | None:
        """The cards each server is shown with (None: inventory's own, in index order)."""
        return None

    def scope_queryset(self, queryset):
        return selectors.with_details(queryset, cards=self.cards()).order_by("id")

    def get_object(self) -> Server:
        """The caller's server (any one for a staff read); another tenant's id is 404 like an unknown one."""
        return access_server(Actor.of(self.request), self.kwargs["pk"], cards=self.cards())

    def get_serializer_class(self):
        return ServerOutput if self.action == "list" else ServerDetail

    @extend_schema(request=ServerInput, responses={201: ServerWithToken})
    def create(self, request: Request) -> Response:
        data = ServerInput(data=request.data)
        data.is_valid(raise_exception=True)
        server, token = services.server_register(org=request.org, **data.validated_data)
        return self._with_token(server, token, status.HTTP_201_CREATED)

    @extend_schema(request=ServerUpdate, responses={200: ServerDetail})
    def partial_update(self, request: Request, pk: str) -> Response:
        """Change what the server lends: `volume_disk_gb` (400 above disk_gb; 409 `volume_disk_in_use` below what
        its volumes take, with `taken_gb`)."""
        server = self.get_object()
        data = ServerUpdate(data=request.data)
        data.is_valid(raise_exception=True)
        services.server_volume_disk_set(server=server, volume_disk_gb=data.validated_data["volume_disk_gb"])
        return Response(ServerDetail(self.get_object()).data)

    @extend_schema(request=None, responses={200: ServerWithToken})
    @action(detail=True, methods=["post"], url_path="enrollment-token", url_name="enrollment-token")
    def enrollment_token(self, request: Request, pk: str) -> Response:
        server, token = services.server_enrollment_token_issue(server=self.get_object())
        return self._with_token(server, token, status.HTTP_200_OK)

    @extend_schema(request=DrainInput, responses={200: ServerDetail})
    @action(detail=True, methods=["post"])
    def drain(self, request: Request, pk: str) -> Response:
        server = self.get_object()
        data = DrainInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.server_drain(server=server, reason=data.validated_data["reason"])
        return Response(ServerDetail(self.get_object()).data)

    @extend_schema(request=None, responses={200: ServerDetail})
    @action(detail=True, methods=["post"])
    def undrain(self, request: Request, pk: str) -> Response:
        services.server_undrain(server=self.get_object())
        return Response(ServerDetail(self.get_object()).data)

    @extend_schema(parameters=[TelemetryQuery], responses={200: TelemetryOutput})
    @action(detail=True, methods=["get"])
    def telemetry(self, request: Request, pk: str) -> Response:
        """Per-GPU time series for charts: any range, at a step that keeps each series under 2,000 points."""
        server = self.get_object()
        query = TelemetryQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        return Response(selectors.server_telemetry(server=server, **query.validated_data))

    def _with_token(self, server: Server, token: str, code: int) -> Response:
        server = self.get_queryset().get(pk=server.pk)
        server.enrollment_token = token
        return Response(ServerWithToken(server).data, status=code)
