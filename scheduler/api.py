"""The lease endpoints of API.md. Parse, call a service or selector, serialize; Idempotency-Key on writes."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor
from accounts.apiviews import TenantViewSet
from accounts.errors import NotFound
from accounts.permissions import OPERATE, HasOrganization, role_required
from inventory.serializers import TelemetryQuery
from scheduler import elastic, services
from scheduler.access import access_lease
from scheduler.idempotency import HEADER, run_idempotent
from scheduler.models import Lease
from scheduler.selectors import lease_events, lease_telemetry
from scheduler.serializers import (
    LeaseEventOutput,
    LeaseInput,
    LeaseOutput,
    LeaseTelemetryOutput,
    QueueDepthInput,
    ResizeInput,
    ScalingInput,
    ScalingOutput,
)

IDEMPOTENCY_KEY = OpenApiParameter(
    HEADER, location=OpenApiParameter.HEADER, required=False, description="Retries with the same key replay the answer."
)


class IsCustomer(BasePermission):
    message = "Only customer organizations can rent capacity."

    def has_permission(self, request, view) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        org = getattr(request, "org", None)
        return org is not None and org.is_customer


class LeaseViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """A customer's leases. Reads: any member (and staff, for any lease); writes: owner, admin or member."""

    model = Lease
    serializer_class = LeaseOutput
    # The shapes in and out; the workloads layer extends both (a lease's workload) without the scheduler knowing.
    input_class: type[LeaseInput] = LeaseInput
    permission_classes = [IsAuthenticated, HasOrganization, IsCustomer, role_required(*OPERATE)]
    filterset_fields = ["state", "plan", "interruptible"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Lease.objects.none()
        return super().get_queryset()

    def scope_queryset(self, queryset):
        return queryset.select_related("gpu_model", "scaling").order_by("-id")

    def get_object(self) -> Lease:
        return access_lease(Actor.of(self.request), self.kwargs["pk"])

    def lease_create(self, request: Request, validated: dict) -> Lease:
        return services.lease_create(org=request.org, **validated)

    def output(self, lease: Lease) -> dict:
        return self.get_serializer_class()(lease, context=self.get_serializer_context()).data

    @extend_schema(request=LeaseInput, responses={201: LeaseOutput}, parameters=[IDEMPOTENCY_KEY])
    def create(self, request: Request) -> Response:
        def work():
            data = self.input_class(data=request.data, context={"request": request})
            data.is_valid(raise_exception=True)
            lease = self.lease_create(request, data.validated_data)
            return status.HTTP_201_CREATED, self.output(lease)

        code, body = run_idempotent(request, scope="lease.create", work=work)
        return Response(body, status=code)

    @extend_schema(request=None, responses={200: LeaseOutput}, parameters=[IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"])
    def end(self, request: Request, pk: str) -> Response:
        lease = self.get_object()

        def work():
            return status.HTTP_200_OK, self.output(services.lease_end(lease=lease))

        code, body = run_idempotent(request, scope=f"lease.{lease.pk}.end", work=work)
        return Response(body, status=code)

    @extend_schema(request=None, responses={200: LeaseOutput}, parameters=[IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str) -> Response:
        """Release the cards now and keep the volumes and the server (state `stopped`; card time is not charged)."""
        lease = self.get_object()

        def work():
            return status.HTTP_200_OK, self.output(services.lease_stop(lease=lease))

        code, body = run_idempotent(request, scope=f"lease.{lease.pk}.stop", work=work)
        return Response(body, status=code)

    @extend_schema(request=None, responses={200: LeaseOutput}, parameters=[IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str) -> Response:
        """Take cards on the same server again (409 `no_capacity` when it has not enough free; 402 when the
        organisation's money cannot cover them)."""
        lease = self.get_object()

        def work():
            return status.HTTP_200_OK, self.output(services.lease_start(lease=lease))

        code, body = run_idempotent(request, scope=f"lease.{lease.pk}.start", work=work)
        return Response(body, status=code)

    @extend_schema(request=ResizeInput, responses={200: LeaseOutput}, parameters=[IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"])
    def resize(self, request: Request, pk: str) -> Response:
        lease = self.get_object()

        def work():
            data = ResizeInput(data=request.data)
            data.is_valid(raise_exception=True)
            lease_now = services.lease_resize(lease=lease, gpu_count=data.validated_data["gpu_count"])
            return status.HTTP_200_OK, self.output(lease_now)

        code, body = run_idempotent(request, scope=f"lease.{lease.pk}.resize", work=work)
        return Response(body, status=code)

    @extend_schema(methods=["GET"], request=None, responses={200: ScalingOutput})
    @extend_schema(methods=["PUT"], request=ScalingInput, responses={200: ScalingOutput}, parameters=[IDEMPOTENCY_KEY])
    @extend_schema(methods=["DELETE"], request=None, responses={204: None})
    @action(detail=True, methods=["get", "put", "delete"])
    def scaling(self, request: Request, pk: str) -> Response:
        """The lease's scaling rule and its state (404 `no_scaling_rule` without one); PUT gives or replaces it
        (card_hour only; omitted settings take their defaults), DELETE removes it (the lease keeps its cards)."""
        lease = self.get_object()
        if request.method == "GET":
            rule = elastic.rule_of(lease)
            if rule is None:
                raise NotFound("This lease has no scaling rule.", code="no_scaling_rule")
            return Response(ScalingOutput(rule).data)
        if request.method == "DELETE":
            elastic.scaling_remove(lease)
            return Response(status=status.HTTP_204_NO_CONTENT)

        def work():
            data = ScalingInput(data=request.data)
            data.is_valid(raise_exception=True)
            return status.HTTP_200_OK, ScalingOutput(elastic.scaling_set(lease, data.validated_data)).data

        code, body = run_idempotent(request, scope=f"lease.{lease.pk}.scaling", work=work)
        return Response(body, status=code)

    @extend_schema(request=QueueDepthInput, responses={200: ScalingOutput}, parameters=[IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"], url_path="queue-depth")
    def queue_depth(self, request: Request, pk: str) -> Response:
        """Report the depth of the customer's own job queue to a queue-driven scaling rule (the latest wins; 409
        `no_scaling_rule` / `not_queue_driven` otherwise)."""
        lease = self.get_object()

        def work():
            data = QueueDepthInput(data=request.data)
            data.is_valid(raise_exception=True)
            rule = elastic.queue_depth_report(lease, data.validated_data["depth"])
            return status.HTTP_200_OK, ScalingOutput(rule).data

        code, body = run_idempotent(request, scope=f"lease.{lease.pk}.queue-depth", work=work)
        return Response(body, status=code)

    @extend_schema(request=None, responses={200: LeaseEventOutput(many=True)})
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str) -> Response:
        """The lease's append-only event log, oldest first (paginated)."""
        queryset = lease_events(lease=self.get_object())
        page = self.paginate_queryset(queryset)
        if page is not None:
            return self.get_paginated_response(LeaseEventOutput(page, many=True).data)
        return Response(LeaseEventOutput(queryset, many=True).data)

    @extend_schema(parameters=[TelemetryQuery], responses={200: LeaseTelemetryOutput})
    @action(detail=True, methods=["get"])
    def telemetry(self, request: Request, pk: str) -> Response:
        """Per-card time series for charts: the lease's cards only, each over the time the lease held it (default:
        the last hour it ran), at a step that keeps each series under 2,000 points."""
        lease = self.get_object()
        query = TelemetryQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        return Response(lease_telemetry(lease=lease, **query.validated_data))
