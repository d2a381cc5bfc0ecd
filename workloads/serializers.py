"""Input and output shapes of the workload API (API.md: Workloads)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.serializers import AccessibleField, StrictSerializer
from inventory.access import STOREFRONT
from inventory.models import Offer, Server
from scheduler.serializers import LeaseInput, LeaseOutput
from workloads.models import Access, SshKey, Template, Volume, VolumeState, Workload, WorkloadState
from workloads.selectors import connections, spec_of, workloads_of_lease
from workloads.volumes import MAX_MOUNTS, shown_state


class StringField(serializers.CharField):
    """A JSON string, and nothing else: DRF's CharField would turn 5 into "5", and an environment variable or a
    command argument the customer sent as a number is a mistake to report, not to guess at."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class SshKeyInput(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    public_key = serializers.CharField(max_length=16384, trim_whitespace=True)


class SshKeyOutput(serializers.ModelSerializer):
    class Meta:
        model = SshKey
        fields = ["id", "name", "fingerprint", "key_type", "bits", "public_key", "created_at"]


class TemplateOutput(serializers.ModelSerializer):
    public = serializers.SerializerMethodField()

    class Meta:
        model = Template
        fields = [
            "id",
            "slug",
            "name",
            "image",
            "command",
            "ports",
            "env",
            "min_disk_gb",
            "description",
            "description_zh",
            "public",
        ]

    def get_public(self, template: Template) -> bool:
        return template.organization_id is None


class TemplateInput(StrictSerializer):
    name = serializers.CharField(max_length=100)
    image = serializers.CharField(max_length=255)
    command = serializers.ListField(child=StringField(max_length=4096, trim_whitespace=False), default=list)
    env = serializers.DictField(child=StringField(max_length=4096, allow_blank=True), default=dict)
    ports = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=65535), default=list)
    min_disk_gb = serializers.IntegerField(min_value=1, max_value=100_000, default=20)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    description_zh = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class VolumeMountInput(StrictSerializer):
    volume = serializers.IntegerField(min_value=1, help_text="The id of one of your volumes.")
    path = StringField(max_length=255, help_text="Where the container sees it: absolute, not /, /proc, /sys, /dev.")


class WorkloadInput(StrictSerializer):
    template = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    image = serializers.CharField(max_length=255, required=False, allow_blank=True)
    command = serializers.ListField(
        child=StringField(max_length=4096, trim_whitespace=False), required=False, allow_null=True
    )
    env = serializers.DictField(child=StringField(max_length=4096, allow_blank=True), required=False)
    ports = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=65535), required=False, allow_null=True, max_length=10
    )
    ssh_keys = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, max_length=50)
    disk_gb = serializers.IntegerField(min_value=1, max_value=100_000, required=False, allow_null=True)
    access = serializers.ChoiceField(choices=Access.choices, required=False, default=Access.CONTAINER)
    volumes = serializers.ListField(child=VolumeMountInput(), required=False, max_length=MAX_MOUNTS)


class LeaseWithWorkloadInput(LeaseInput):
    workload = WorkloadInput(required=False, allow_null=True)


class ConnectionOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["ssh", "http", "tcp"])
    host = serializers.CharField()
    port = serializers.IntegerField()
    user = serializers.CharField(required=False)
    command = serializers.CharField(required=False)
    url = serializers.CharField(required=False)
    container_port = serializers.IntegerField(allow_null=True)


class WorkloadOutput(serializers.ModelSerializer):
    connect = serializers.SerializerMethodField()
    state = serializers.ChoiceField(choices=WorkloadState.choices)

    class Meta:
        model = Workload
        fields = [
            "id",
            "server",
            "state",
            "desired",
            "progress",
            "message",
            "exit_code",
            "ports",
            "connect",
            "started_at",
            "state_changed_at",
            "generation",
        ]

    @extend_schema_field(ConnectionOutput(many=True))
    def get_connect(self, workload: Workload) -> list[dict]:
        return [c.as_dict() for c in connections(workload, self.context.get("spec"))]


class WorkloadSpecOutput(serializers.Serializer):
    access = serializers.CharField()
    template = serializers.IntegerField(source="template_id", allow_null=True)
    image = serializers.CharField()
    command = serializers.ListField(child=serializers.CharField())
    env = serializers.DictField(child=serializers.CharField())
    ports = serializers.ListField(child=serializers.IntegerField())
    ssh_keys = serializers.SerializerMethodField()
    disk_gb = serializers.IntegerField()
    volumes = serializers.SerializerMethodField()

    @extend_schema_field(VolumeMountInput(many=True))
    def get_volumes(self, spec) -> list[dict]:
        return [{"volume": m.volume_id, "path": m.path} for m in spec.mounts.order_by("path")]

    def get_ssh_keys(self, spec) -> list[dict]:
        return [{"name": k["name"], "fingerprint": k["fingerprint"]} for k in spec.ssh_keys]


class LeaseWithWorkloadsOutput(LeaseOutput):
    workload = serializers.SerializerMethodField()
    workloads = serializers.SerializerMethodField()

    class Meta(LeaseOutput.Meta):
        fields = [*LeaseOutput.Meta.fields, "workload", "workloads"]

    @extend_schema_field(WorkloadSpecOutput(allow_null=True))
    def get_workload(self, lease) -> dict | None:
        spec = spec_of(lease)
        return WorkloadSpecOutput(spec).data if spec else None

    @extend_schema_field(WorkloadOutput(many=True))
    def get_workloads(self, lease) -> list[dict]:
        spec = spec_of(lease)
        if spec is None:
            return []
        return WorkloadOutput(workloads_of_lease(lease), many=True, context={"spec": spec}).data


# --- volumes ---------------------------------------------------------------------------------------------------


class VolumeInput(StrictSerializer):
    name = serializers.CharField(max_length=63, help_text="1-63 of a-z, 0-9 and '-', unique among your volumes.")
    server = AccessibleField(
        lambda actor: Server.objects.unscoped(STOREFRONT).filter(
            pk__in=Offer.objects.unscoped(STOREFRONT).live().values("server_id")
        ),
        "server",
        help_text="A server with a live offer that prices volume storage.",
    )
    size_gb = serializers.IntegerField(min_value=1, max_value=100_000)


class VolumeMoveProgress(serializers.Serializer):
    state = serializers.ChoiceField(choices=["pending", "copying"])
    bytes_done = serializers.IntegerField(help_text="Bytes of the copy the target server has read.")
    bytes_total = serializers.IntegerField(help_text="The copy's size (an estimate until the source has sent it).")
    target_server = serializers.IntegerField()


class VolumeOutput(serializers.ModelSerializer):
    state = serializers.SerializerMethodField()
    move = serializers.SerializerMethodField(help_text="The move to another server going on, if one is.")

    class Meta:
        model = Volume
        fields = [
            "id",
            "name",
            "server",
            "size_gb",
            "used_gb",
            "state",
            "price_per_gb_month",
            "currency",
            "wipe_at",
            "created_at",
            "ready_at",
            "wipe_requested_at",
            "wiped_at",
            "message",
            "move",
        ]

    @extend_schema_field(serializers.ChoiceField(choices=VolumeState.choices))
    def get_state(self, volume: Volume) -> str:
        return shown_state(volume)

    @extend_schema_field(VolumeMoveProgress(allow_null=True))
    def get_move(self, volume: Volume) -> dict | None:
        from workloads import volume_moves  # it imports the volumes this module serializes

        moves = self.context.get("moves")
        move = moves.get(volume.pk) if moves is not None else volume_moves.live_move(volume)
        return volume_moves.progress(move).as_dict() if move is not None else None


# --- workload output (workloads/workload_logs.py) --------------------------------------------------------------


class WorkloadLogOutput(serializers.Serializer):
    workload = serializers.IntegerField()
    server = serializers.IntegerField()
    state = serializers.ChoiceField(choices=WorkloadState.choices)
    text = serializers.CharField(help_text="The last lines of the container's output (stdout and stderr).")
    lines = serializers.IntegerField(help_text="How many lines `text` holds.")
    truncated = serializers.BooleanField(help_text="Earlier output exists that is not shown.")
    captured_at = serializers.DateTimeField(
        allow_null=True, help_text="When the server's agent read the output (null before any arrived)."
    )
    received_at = serializers.DateTimeField(allow_null=True)


class AgentLogEntryInput(serializers.Serializer):
    id = serializers.IntegerField(min_value=1, help_text="A workload of this server.")
    text = serializers.CharField(allow_blank=True, trim_whitespace=False, help_text="At most 64 KiB: the tail.")
    truncated = serializers.BooleanField(required=False)
    captured_at = serializers.FloatField(help_text="When the agent read it, seconds since the epoch.")


class AgentLogUploadInput(serializers.Serializer):
    logs = AgentLogEntryInput(many=True)


class AgentLogUploadOutput(serializers.Serializer):
    stored = serializers.IntegerField()
