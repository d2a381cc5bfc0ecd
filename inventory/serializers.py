"""Input and output shapes of the catalogue and server API (API.md: Catalogue and inventory)."""

from __future__ import annotations

from rest_framework import serializers

from accounts.serializers import StrictSerializer
from inventory.models import Gpu, GpuModel, Interconnect, Server


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
    # No leases exist yet: the scheduler issue annotates the queryset with whether each card is held now
    # and this field reads that annotation. Until then no card can be allocated.
    allocated = serializers.SerializerMethodField()

    class Meta:
        model = Gpu
        fields = ["index", "uuid", "name", "memory_total_mb", "health", "health_reason", "drained", "allocated"]

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


class DrainInput(StrictSerializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
