"""Input and output shapes of the catalogue and server API (API.md: Catalogue and inventory)."""

from __future__ import annotations

from rest_framework import serializers

from accounts.serializers import StrictSerializer
from inventory.models import Gpu, GpuModel, Interconnect, Runtime, Server


class GpuModelOutput(serializers.ModelSerializer):
    class Meta:
        model = GpuModel
        fields = [
            "id",
            "name",
            "slug",
            "vendor",
            "memory_gb",
            "memory_type",
            "fp16_tflops",
            "fp32_tflops",
            "tdp_w",
            "interconnect",
            "interconnect_gbps",
            "nvml_names",
            "sources",
        ]


class GpuOutput(serializers.ModelSerializer):
    # Whether a lease holds the card now: the `allocated` annotation of scheduler.selectors.cards_with_allocated.
    allocated = serializers.SerializerMethodField()

    class Meta:
        model = Gpu
        fields = [
            "index",
            "uuid",
            "name",
            "memory_total_mb",
            "health",
            "health_reason",
            "health_changed_at",
            "drained",
            "drained_reason",
            "allocated",
            "last_sample_at",
            "utilization_pct",
            "memory_used_mb",
            "temperature_c",
            "power_w",
        ]

    utilization_pct = serializers.SerializerMethodField()
    memory_used_mb = serializers.SerializerMethodField()
    temperature_c = serializers.SerializerMethodField()
    power_w = serializers.SerializerMethodField()

    def _latest(self, gpu: Gpu, name: str) -> float | None:
        return (gpu.last_sample or {}).get(name)

    def get_utilization_pct(self, gpu: Gpu) -> float | None:
        return self._latest(gpu, "utilization_pct")

    def get_memory_used_mb(self, gpu: Gpu) -> float | None:
        return self._latest(gpu, "memory_used_mb")

    def get_temperature_c(self, gpu: Gpu) -> float | None:
        return self._latest(gpu, "temperature_c")

    def get_power_w(self, gpu: Gpu) -> float | None:
        return self._latest(gpu, "power_w")

    def get_allocated(self, gpu: Gpu) -> bool:
        return bool(getattr(gpu, "allocated", False))


class ServerOutput(serializers.ModelSerializer):
    gpu_model_name = serializers.CharField(source="gpu_model.name", read_only=True)

    class Meta:
        model = Server
        fields = [
            "id",
            "name",
            "region",
            "site",
            "gpu_model",
            "gpu_model_name",
            "gpu_count",
            "cpu_cores",
            "ram_gb",
            "disk_gb",
            "network_gbps",
            "interconnect",
            "status",
            "drained",
            "drained_reason",
            "drained_at",
            "hostname",
            "enrollment_expires_at",
            "enrolled_at",
            "last_seen_at",
            "created_at",
            "hardware_flag",
            "runtime",
            "public_host",
            "port_range_start",
            "port_range_end",
            "volume_disk_gb",
        ]


class ServerDetail(ServerOutput):
    gpus = GpuOutput(many=True, read_only=True)

    class Meta(ServerOutput.Meta):
        fields = [*ServerOutput.Meta.fields, "gpus"]


class ServerWithToken(ServerDetail):
    """A server with its enrolment token: the one response that ever carries the token."""

    enrollment_token = serializers.CharField()

    class Meta(ServerDetail.Meta):
        fields = [*ServerDetail.Meta.fields, "enrollment_token"]


class ServerInput(StrictSerializer):
    name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._ -]*$",
        max_length=100,
        error_messages={"invalid": "Use letters, digits, spaces, '.', '_' and '-', starting with a letter or digit."},
    )
    region = serializers.RegexField(
        r"^[a-z0-9][a-z0-9-]*$", max_length=50, error_messages={"invalid": "Use a region id such as cn-east-1."}
    )
    site = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    gpu_model = serializers.PrimaryKeyRelatedField(queryset=GpuModel.objects.filter(active=True))
    gpu_count = serializers.IntegerField(min_value=1, max_value=16)
    cpu_cores = serializers.IntegerField(min_value=1, max_value=4096)
    ram_gb = serializers.IntegerField(min_value=1, max_value=65536)
    disk_gb = serializers.IntegerField(min_value=1, max_value=10_000_000)
    network_gbps = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    interconnect = serializers.ChoiceField(choices=Interconnect.choices, required=False, allow_blank=True, default="")
    runtime = serializers.ChoiceField(
        choices=Runtime.choices,
        required=False,
        help_text="docker: customers get containers; host: whole-server rentals get SSH onto the bare server.",
    )
    public_host = serializers.RegexField(
        r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$",
        max_length=255,
        required=False,
        allow_blank=True,
        help_text="Host name or address customers connect to (default: the agent's hostname).",
    )
    port_range_start = serializers.IntegerField(min_value=1024, max_value=65535, required=False)
    port_range_end = serializers.IntegerField(min_value=1024, max_value=65535, required=False)
    volume_disk_gb = serializers.IntegerField(
        min_value=0,
        max_value=10_000_000,
        required=False,
        help_text="GB of the disk lent for customers' volumes (0: none), priced by the offer's storage price.",
    )

    def validate(self, attrs: dict) -> dict:
        start, end = attrs.get("port_range_start", 40000), attrs.get("port_range_end", 40999)
        if end < start:
            raise serializers.ValidationError({"port_range_end": ["Must not be below port_range_start."]})
        if attrs.get("volume_disk_gb", 0) > attrs["disk_gb"]:
            raise serializers.ValidationError({"volume_disk_gb": ["Must not be above disk_gb."]})
        return attrs


class ServerUpdate(StrictSerializer):
    """What a provider changes on a registered server (PATCH): the disk it lends for volumes."""

    volume_disk_gb = serializers.IntegerField(
        min_value=0,
        max_value=10_000_000,
        help_text="GB of the disk lent for customers' volumes (0: none): at most disk_gb, at least what its volumes "
        "take (409 volume_disk_in_use).",
    )


class DrainInput(StrictSerializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class TelemetryQuery(StrictSerializer):
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    step = serializers.IntegerField(required=False, min_value=1, max_value=30 * 86400)

    def validate(self, attrs):
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["until must be after since."]})
        return attrs


class TelemetryPoint(serializers.Serializer):
    t = serializers.DateTimeField()
    utilization_pct = serializers.FloatField(allow_null=True)
    memory_used_mb = serializers.FloatField(allow_null=True)
    temperature_c = serializers.FloatField(allow_null=True)
    power_w = serializers.FloatField(allow_null=True)


class TelemetryGpu(serializers.Serializer):
    index = serializers.IntegerField()
    uuid = serializers.CharField()
    points = TelemetryPoint(many=True)


class TelemetryOutput(serializers.Serializer):
    server = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    step = serializers.IntegerField()
    source = serializers.ChoiceField(choices=["raw", "1m", "1h"])
    gpus = TelemetryGpu(many=True)
