"""The endpoints of a volume's move to another server (workloads/volume_moves.py): the customer's
`POST|DELETE /api/v1/volumes/{id}/move/`, and the agents' signed transfer endpoints under
`/api/v1/agent/volume-transfers/{move}/` (status, chunks, sent, received, failed). Parse, call a service,
serialize."""

from __future__ import annotations

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import parsers
from accounts.access import Actor
from accounts.apiviews import OrgAPIView
from accounts.errors import InvalidInput
from accounts.serializers import AccessibleField, StrictSerializer
from inventory import agent_api
from inventory.access import STOREFRONT
from inventory.models import Offer, Server
from scheduler import access as scheduler_access
from workloads import access, lease_moves, volume_moves
from workloads.models import Volume, VolumeMove
from workloads.volumes_api import PERMISSIONS

LIMIT = "agent_transfers"


class MoveInput(StrictSerializer):
    server = AccessibleField(
        lambda actor: Server.objects.unscoped(STOREFRONT).filter(
            pk__in=Offer.objects.unscoped(STOREFRONT).live().values("server_id")
        ),
        "server",
        help_text="The server to move the volume to: a live offer that prices volume storage, with room for it.",
    )
    consent = serializers.BooleanField(
        help_text="true: you agree that the data is copied there and the copy on this server wiped after the switch."
    )


class MoveOutput(serializers.ModelSerializer):
    bytes_done = serializers.SerializerMethodField()
    bytes_total = serializers.SerializerMethodField()
    target_server = serializers.IntegerField(source="target_id")
    source_server = serializers.IntegerField(source="source_id")

    class Meta:
        model = VolumeMove
        fields = [
            "id",
            "volume",
            "state",
            "source_server",
            "target_server",
            "bytes_done",
            "bytes_total",
            "source_price",
            "target_price",
            "message",
            "requested_at",
            "switched_at",
            "ended_at",
            "source_wiped_at",
        ]

    def get_bytes_done(self, move: VolumeMove) -> int:
        return volume_moves.progress(move).bytes_done

    def get_bytes_total(self, move: VolumeMove) -> int:
        return volume_moves.progress(move).bytes_total


class LeaseMoveApi(OrgAPIView):
    """POST: move a stopped card-hour lease's volumes to another server and start it there (consent required;
    202 with the volumes' moves; a lease without volumes starts there at once). The servers it may go to are those
    its start's 409 `no_capacity` names (`servers`)."""

    queryset = Volume.objects.none()
    permission_classes = PERMISSIONS
    serializer_class = MoveOutput

    @extend_schema(request=MoveInput, responses={202: MoveOutput(many=True)})
    def post(self, request: Request, pk: str) -> Response:
        lease = scheduler_access.access_lease(Actor.for_org(request.org), pk)
        payload = request.data if isinstance(request.data, dict) else {}
        if payload.get("consent") is not True:
            raise volume_moves.consent_error()
        data = MoveInput(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        moves = lease_moves.lease_move(
            lease=lease, target=data.validated_data["server"], consent=True, user=request.user
        )
        return Response(MoveOutput(moves, many=True).data, status=status.HTTP_202_ACCEPTED)


class VolumeMoveApi(OrgAPIView):
    """POST: move the volume to another server (consent required; 202 with the move); DELETE: cancel its move
    before the switch (200 with the cancelled move)."""

    queryset = Volume.objects.none()
    permission_classes = PERMISSIONS
    serializer_class = MoveOutput

    @extend_schema(request=MoveInput, responses={202: MoveOutput})
    def post(self, request: Request, pk: str) -> Response:
        volume = access.access_volume(Actor.for_org(request.org), pk)
        payload = request.data if isinstance(request.data, dict) else {}
        if payload.get("consent") is not True:  # first: the sentence says what the customer agrees to
            raise volume_moves.consent_error()
        data = MoveInput(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        move = volume_moves.move_request(
            volume=volume,
            target=data.validated_data["server"],
            consent=data.validated_data["consent"],
            user=request.user,
        )
        return Response(MoveOutput(move).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: MoveOutput})
    def delete(self, request: Request, pk: str) -> Response:
        move = volume_moves.move_cancel(volume=access.access_volume(Actor.for_org(request.org), pk))
        return Response(MoveOutput(move).data)


# --- agents ------------------------------------------------------------------------------------------------------


class TransferStatus(serializers.Serializer):
    move = serializers.IntegerField()
    volume = serializers.IntegerField()
    state = serializers.CharField()
    live = serializers.BooleanField()
    chunk_bytes = serializers.IntegerField()
    chunks = serializers.IntegerField()
    bytes_sent = serializers.IntegerField()
    sent = serializers.BooleanField()
    bytes_total = serializers.IntegerField(allow_null=True)
    sha256 = serializers.CharField(allow_null=True)


class SentInput(StrictSerializer):
    chunks = serializers.IntegerField(min_value=0, max_value=2**31)
    bytes = serializers.IntegerField(min_value=0, max_value=2**62)
    sha256 = serializers.RegexField(r"^[0-9a-f]{64}$")


class ReceivedInput(StrictSerializer):
    bytes = serializers.IntegerField(min_value=0, max_value=2**62)
    sha256 = serializers.RegexField(r"^[0-9a-f]{64}$")


class FailedInput(StrictSerializer):
    message = serializers.CharField(max_length=1000, allow_blank=True)


class _AgentApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def signed(self, request: Request, body: bytes) -> Server:
        return agent_api.authenticate_agent(request, body=body, now=timezone.now(), limit=LIMIT)


class TransferStatusApi(_AgentApi):
    """A move's transfer as its source or target agent reads it (signed over an empty body); 404 for others."""

    @extend_schema(parameters=agent_api.SIGNED, request=None, responses={200: TransferStatus}, tags=["agent"])
    def get(self, request: Request, move: str) -> Response:
        server = self.signed(request, b"")
        return Response(volume_moves.transfer_status(volume_moves.agent_move(server, move)))


class TransferChunkApi(_AgentApi):
    """PUT: the source stages chunk n (raw bytes, signed over them, `X-Chunk-SHA256`); GET: the target reads it
    (signed over an empty body), answered with its sha256 in `X-Chunk-SHA256`."""

    @extend_schema(
        parameters=agent_api.SIGNED,
        request={"application/octet-stream": bytes},
        responses={200: TransferStatus},
        tags=["agent"],
    )
    def put(self, request: Request, move: str, n: str) -> Response:
        body = request.body
        server = self.signed(request, body)
        result = volume_moves.chunk_put(
            server=server, move_id=move, n=n, data=body, sha256=request.headers.get("X-Chunk-SHA256", "")
        )
        return Response(result)

    @extend_schema(
        parameters=agent_api.SIGNED,
        request=None,
        responses={(200, "application/octet-stream"): OpenApiResponse(description="The chunk's bytes.")},
        tags=["agent"],
    )
    def get(self, request: Request, move: str, n: str) -> HttpResponse:
        server = self.signed(request, b"")
        data, digest = volume_moves.chunk_get(server=server, move_id=move, n=n)
        return HttpResponse(data, content_type="application/octet-stream", headers={"X-Chunk-SHA256": digest})


def _json_body(request: Request, body: bytes) -> dict:
    try:  # as the API's bodies are decoded: no NaN, no nesting deep enough to exhaust the stack
        payload = parsers.loads(body or b"null")
    except parsers.MalformedJson as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}", code="malformed_request") from None
    if not isinstance(payload, dict):
        raise InvalidInput("The body is a JSON object.")
    return payload


class TransferSentApi(_AgentApi):
    """The source has sent every chunk: their count, bytes and the whole stream's sha256."""

    @extend_schema(parameters=agent_api.SIGNED, request=SentInput, responses={200: TransferStatus}, tags=["agent"])
    def post(self, request: Request, move: str) -> Response:
        body = request.body
        server = self.signed(request, body)
        data = SentInput(data=_json_body(request, body))
        data.is_valid(raise_exception=True)
        result = volume_moves.transfer_sent(
            server=server,
            move_id=move,
            chunks=data.validated_data["chunks"],
            total=data.validated_data["bytes"],
            sha256=data.validated_data["sha256"],
        )
        return Response(result)


class TransferReceivedApi(_AgentApi):
    """The target has unpacked the whole stream: the volume switches to it."""

    @extend_schema(parameters=agent_api.SIGNED, request=ReceivedInput, responses={200: TransferStatus}, tags=["agent"])
    def post(self, request: Request, move: str) -> Response:
        body = request.body
        server = self.signed(request, body)
        data = ReceivedInput(data=_json_body(request, body))
        data.is_valid(raise_exception=True)
        result = volume_moves.transfer_received(
            server=server, move_id=move, total=data.validated_data["bytes"], sha256=data.validated_data["sha256"]
        )
        return Response(result)


class TransferFailedApi(_AgentApi):
    """Either side cannot go on: the move fails and the volume stays where it was."""

    @extend_schema(parameters=agent_api.SIGNED, request=FailedInput, responses={200: TransferStatus}, tags=["agent"])
    def post(self, request: Request, move: str) -> Response:
        body = request.body
        server = self.signed(request, body)
        data = FailedInput(data=_json_body(request, body))
        data.is_valid(raise_exception=True)
        return Response(
            volume_moves.transfer_failed(server=server, move_id=move, message=data.validated_data["message"])
        )
