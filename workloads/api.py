"""The workload endpoints of API.md: SSH keys, templates, leases with a workload (restart, stop), and the agent's
signed read of its server's desired state. Parse, call a service or selector, serialize."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import parsers
from accounts.access import Actor
from accounts.apiviews import OrgAPIView
from accounts.errors import InvalidInput
from accounts.permissions import OPERATE, HasOrganization, role_required
from inventory import agent_api
from scheduler import api as lease_api
from scheduler.errors import NoCapacity
from scheduler.idempotency import run_idempotent
from scheduler.serializers import ResizeInput
from workloads import access, agent_channel, lease_moves, services, workload_logs
from workloads.models import SshKey, Template
from workloads.serializers import (
    AgentLogUploadInput,
    AgentLogUploadOutput,
    LeaseWithWorkloadInput,
    LeaseWithWorkloadsOutput,
    SshKeyInput,
    SshKeyOutput,
    TemplateInput,
    TemplateOutput,
    WorkloadLogOutput,
)


class SshKeyListApi(OrgAPIView):
    """The signed-in user's SSH public keys."""

    queryset = SshKey.objects.none()  # for the schema only: every read goes through workloads.access

    permission_classes = [IsAuthenticated]
    serializer_class = SshKeyOutput
    pagination_class = None  # a plain list (API.md), and the schema says so

    @extend_schema(responses={200: SshKeyOutput(many=True)})
    def get(self, request: Request) -> Response:
        return Response(SshKeyOutput(access.ssh_keys_of(request.user), many=True).data)

    @extend_schema(request=SshKeyInput, responses={201: SshKeyOutput})
    def post(self, request: Request) -> Response:
        data = SshKeyInput(data=request.data)
        data.is_valid(raise_exception=True)
        key = services.ssh_key_add(user=request.user, **data.validated_data)
        return Response(SshKeyOutput(key).data, status=status.HTTP_201_CREATED)


class SshKeyDetailApi(OrgAPIView):
    queryset = SshKey.objects.none()
    permission_classes = [IsAuthenticated]
    serializer_class = SshKeyOutput

    def get(self, request: Request, pk: str) -> Response:
        return Response(SshKeyOutput(access.access_ssh_key(Actor.of(request), pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: str) -> Response:
        services.ssh_key_delete(key=access.access_ssh_key(Actor.of(request), pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TemplateListApi(OrgAPIView):
    """The public catalogue of launch templates (no sign-in needed), and the caller's organisation's own."""

    queryset = Template.objects.none()

    permission_classes = [AllowAny]
    serializer_class = TemplateOutput
    pagination_class = None

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), HasOrganization(), role_required(*OPERATE)()]
        return super().get_permissions()

    @extend_schema(responses={200: TemplateOutput(many=True)})
    def get(self, request: Request) -> Response:
        org = getattr(request, "org", None) if request.user.is_authenticated else None
        return Response(TemplateOutput(access.templates_visible(org), many=True).data)

    @extend_schema(request=TemplateInput, responses={201: TemplateOutput})
    def post(self, request: Request) -> Response:
        """A private template of the caller's organisation (public ones are kept by staff in the admin)."""
        data = TemplateInput(data=request.data)
        data.is_valid(raise_exception=True)
        template = services.template_create(org=request.org, **data.validated_data)
        return Response(TemplateOutput(template).data, status=status.HTTP_201_CREATED)


_LEASE_VERB = extend_schema(
    request=None, responses={200: LeaseWithWorkloadsOutput}, parameters=[lease_api.IDEMPOTENCY_KEY]
)


# The schema names the shapes this viewset really takes and gives (the scheduler's own say LeaseInput and
# LeaseOutput, which know nothing of workloads): tests/workloads/test_lease_schema.py.
@extend_schema_view(
    create=extend_schema(
        request=LeaseWithWorkloadInput,
        responses={201: LeaseWithWorkloadsOutput},
        parameters=[lease_api.IDEMPOTENCY_KEY],
    ),
    end=_LEASE_VERB,
    stop=_LEASE_VERB,
    resize=extend_schema(
        request=ResizeInput,
        responses={200: LeaseWithWorkloadsOutput},
        parameters=[lease_api.IDEMPOTENCY_KEY],
    ),
)
class LeaseViewSet(lease_api.LeaseViewSet):
    """The lease API with workloads: `workload` on create, `workloads` on every lease, restart and stop."""

    serializer_class = LeaseWithWorkloadsOutput
    input_class = LeaseWithWorkloadInput

    def lease_create(self, request: Request, validated: dict):
        workload = validated.pop("workload", None)
        return services.lease_create(org=request.org, user=request.user, workload=workload, **validated)

    @extend_schema(request=None, responses={200: LeaseWithWorkloadsOutput}, parameters=[lease_api.IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str) -> Response:
        """Take cards on the same server again (409 `no_capacity` when it has not enough free, naming in `servers`
        where it could start with its volumes moved there: POST .../move/; 402 when the organisation's money
        cannot cover them)."""
        try:
            return super().start(request, pk)
        except NoCapacity as exc:
            raise lease_moves.no_capacity_with_alternatives(exc, self.get_object()) from None

    def _workload_verb(self, request: Request, pk: str, wid: str, verb: str) -> Response:
        lease = self.get_object()
        workload = access.access_workload(lease, wid)
        act = services.workload_restart if verb == "restart" else services.workload_stop

        def work():
            act(workload=workload)
            lease.refresh_from_db()
            return status.HTTP_200_OK, self.output(lease)

        code, body = run_idempotent(request, scope=f"workload.{workload.pk}.{verb}", work=work)
        return Response(body, status=code)

    @extend_schema(request=None, responses={200: LeaseWithWorkloadsOutput}, parameters=[lease_api.IDEMPOTENCY_KEY])
    def restart_workload(self, request: Request, pk: str, wid: str) -> Response:
        """Start the workload again with the same spec, without ending the lease."""
        return self._workload_verb(request, pk, wid, "restart")

    @extend_schema(request=None, responses={200: LeaseWithWorkloadsOutput}, parameters=[lease_api.IDEMPOTENCY_KEY])
    def stop_workload(self, request: Request, pk: str, wid: str) -> Response:
        """Stop the workload without ending the lease (its cards stay held and charged)."""
        return self._workload_verb(request, pk, wid, "stop")

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "tail",
                int,
                description=f"How many of the last lines (1 to {workload_logs.MAX_LINES}; "
                f"{workload_logs.DEFAULT_LINES} by default).",
            )
        ],
        responses={200: WorkloadLogOutput},
    )
    def workload_logs(self, request: Request, pk: str, wid: str) -> Response:
        """The tail of the workload's output as its server's agent last sent it (every 30 s or so, when it changed;
        at most the last 64 KiB)."""
        lease = self.get_object()
        workload = access.access_workload(lease, wid)
        lines = workload_logs.parse_tail(request.query_params.get("tail"))
        return Response(WorkloadLogOutput(workload_logs.log_tail(workload=workload, lines=lines)).data)


class AgentWorkloadLogsApi(APIView):
    """The tails of the calling agent's workloads' output: signed like a report, kept per workload."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        parameters=agent_api.SIGNED, request=AgentLogUploadInput, responses={200: AgentLogUploadOutput}, tags=["agent"]
    )
    def post(self, request: Request) -> Response:
        now = timezone.now()
        body = request.body
        server = agent_api.authenticate_agent(request, body=body, now=now, limit="agent_workloads")
        try:  # as the API's bodies are decoded (no NaN, no deep nesting); lone surrogates cleaned with the text
            payload = parsers.loads(body or b"null", allow_surrogates=True)
        except parsers.MalformedJson as exc:
            raise InvalidInput(f"The body is not valid JSON: {exc}", code="malformed_request") from None
        entries = workload_logs.parse_log_upload(payload)
        return Response({"stored": workload_logs.logs_store(server=server, entries=entries, now=now)})


class DesiredStateOutput(serializers.Serializer):
    version = serializers.IntegerField()
    server = serializers.IntegerField()
    public_host = serializers.CharField()
    port_range = serializers.ListField(child=serializers.IntegerField())
    workloads = serializers.ListField(child=serializers.DictField())


class AgentWorkloadsApi(APIView):
    """The desired state of the calling agent's server: signed like a report, over an empty body."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(parameters=agent_api.SIGNED, request=None, responses={200: DesiredStateOutput}, tags=["agent"])
    def get(self, request: Request) -> Response:
        now = timezone.now()
        server = agent_api.authenticate_agent(request, body=b"", now=now, limit="agent_workloads")
        return Response(agent_channel.desired_state_serve(server=server, now=now))


class AgentReportApi(agent_api.AgentReportApi):
    """Agent reports, with the workload states they carry applied after the telemetry is stored."""

    def parse_extra(self, payload: dict) -> dict:
        return agent_channel.parse_workload_report(payload)

    def after_ingest(self, server, report: dict, extra: dict, now) -> None:
        if extra:
            agent_channel.reported_states_apply(server=server, report={**report, **extra}, now=now)
