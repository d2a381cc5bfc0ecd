"""The volume endpoints of API.md ("Volumes"): list and create, read and delete (wipe). Parse, call a service or
selector (workloads.volumes), serialize. Any member reads; owners, admins and members of a customer organisation
create and delete, like leases."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor
from accounts.apiviews import OrgAPIView
from accounts.permissions import OPERATE, HasOrganization, role_required
from scheduler.api import IsCustomer
from workloads import access, volumes
from workloads.models import Volume
from workloads.serializers import VolumeInput, VolumeOutput

PERMISSIONS = [IsAuthenticated, HasOrganization, IsCustomer, role_required(*OPERATE)]


class VolumeListApi(mixins.ListModelMixin, OrgAPIView):
    """The organisation's volumes, newest first (paginated), and a new one."""

    queryset = Volume.objects.none()  # for the schema only: every read goes through workloads.volumes / access
    permission_classes = PERMISSIONS
    serializer_class = VolumeOutput

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Volume.objects.none()
        return volumes.volumes_of(self.request.org)

    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(request=VolumeInput, responses={201: VolumeOutput})
    def post(self, request: Request) -> Response:
        data = VolumeInput(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        volume = volumes.volume_create(org=request.org, by=request.user, **data.validated_data)
        return Response(VolumeOutput(volume).data, status=status.HTTP_201_CREATED)


class VolumeDetailApi(OrgAPIView):
    """One volume; DELETE wipes it (202 with the volume, wiping; 409 `volume_in_use` while a live lease mounts it)."""

    queryset = Volume.objects.none()
    permission_classes = PERMISSIONS
    serializer_class = VolumeOutput

    def get(self, request: Request, pk: str) -> Response:
        return Response(VolumeOutput(access.access_volume(Actor.of(request), pk)).data)

    @extend_schema(responses={202: VolumeOutput})
    def delete(self, request: Request, pk: str) -> Response:
        volume = volumes.volume_delete(volume=access.access_volume(Actor.for_org(request.org), pk), by=request.user)
        return Response(VolumeOutput(volume).data, status=status.HTTP_202_ACCEPTED)
