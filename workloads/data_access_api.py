"""The data-access endpoints (issue 16; API.md "Volumes"): `GET|POST /api/v1/data-access/`, `GET|DELETE
/api/v1/data-access/{id}/`. Parse, call workloads.data_access, serialize. Any member reads; owners, admins and
members of a customer organisation open and end sessions, like volumes. Another tenant's session is 404."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor, access_one, visible
from accounts.apiviews import OrgAPIView
from accounts.permissions import OPERATE, HasOrganization, role_required
from accounts.serializers import AccessibleField, StrictSerializer
from inventory.access import STOREFRONT
from inventory.models import Offer, Server
from scheduler.api import IsCustomer
from workloads import data_access
from workloads.models import DataAccess

PERMISSIONS = [IsAuthenticated, HasOrganization, IsCustomer, role_required(*OPERATE)]


class DataAccessInput(StrictSerializer):
    server = AccessibleField(
        lambda actor: Server.objects.unscoped(STOREFRONT).filter(
            pk__in=Offer.objects.unscoped(STOREFRONT).live().values("server_id")
        ),
        "server",
        help_text="The server your volumes are on.",
    )
    # Checked by the service (ids of your volumes on that server, of your SSH keys), so that every bad entry is a
    # 400 with the field named.
    volumes = serializers.JSONField(help_text="Ids of your volumes on that server (1-8).")
    ssh_keys = serializers.JSONField(help_text="Ids of your SSH keys (at least one).")


class DataAccessOutput(serializers.ModelSerializer):
    volumes = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField()
    connect = serializers.SerializerMethodField()
    started_at = serializers.SerializerMethodField()

    class Meta:
        model = DataAccess
        fields = [
            "id",
            "server",
            "volumes",
            "state",
            "connect",
            "price_per_hour",
            "currency",
            "created_at",
            "started_at",
            "ends_at",
            "ended_at",
            "end_reason",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_volumes(self, session: DataAccess) -> list[int]:
        return sorted(v.pk for v in session.volumes.all())

    @extend_schema_field(serializers.CharField())
    def get_state(self, session: DataAccess) -> str:
        return data_access.shown_state(session)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_connect(self, session: DataAccess) -> dict | None:
        return data_access.connect(session)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_started_at(self, session: DataAccess) -> str | None:
        workload = getattr(session, "workload", None)
        started = workload.started_at if workload is not None else None
        return serializers.DateTimeField().to_representation(started) if started else None


def access_session(actor: Actor, pk: object) -> DataAccess:
    """One of the actor's organisation's sessions (any one for a staff read); another tenant's is NotFound."""
    sessions = visible(DataAccess.objects.all(), actor).select_related("server", "workload")
    return access_one(sessions.prefetch_related("volumes"), pk, "data access session")


class DataAccessListApi(mixins.ListModelMixin, OrgAPIView):
    """The organisation's data-access sessions, newest first (paginated), and a new one."""

    queryset = DataAccess.objects.none()  # for the schema only
    permission_classes = PERMISSIONS
    serializer_class = DataAccessOutput

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return DataAccess.objects.none()
        return data_access.sessions_of(self.request.org)

    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(request=DataAccessInput, responses={201: DataAccessOutput})
    def post(self, request: Request) -> Response:
        data = DataAccessInput(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        session = data_access.data_access_open(org=request.org, user=request.user, **data.validated_data)
        return Response(
            DataAccessOutput(access_session(Actor.for_org(request.org), session.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class DataAccessDetailApi(OrgAPIView):
    """One session; DELETE ends it (200 with the session, ended; again: the same)."""

    queryset = DataAccess.objects.none()
    permission_classes = PERMISSIONS
    serializer_class = DataAccessOutput

    def get(self, request: Request, pk: str) -> Response:
        return Response(DataAccessOutput(access_session(Actor.of(request), pk)).data)

    @extend_schema(responses={200: DataAccessOutput})
    def delete(self, request: Request, pk: str) -> Response:
        actor = Actor.for_org(request.org)
        data_access.data_access_end(session=access_session(actor, pk))
        return Response(DataAccessOutput(access_session(actor, pk)).data)
