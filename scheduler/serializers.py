"""Input and output shapes of the lease API (API.md: Leases)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.serializers import AccessibleField, StrictSerializer
from inventory.access import STOREFRONT
from inventory.models import GpuModel, Offer, Server
from inventory.serializers import TelemetryPoint
from scheduler.models import Lease, LeaseEvent, Plan

# A start a little in the past (clock skew, a slow client) means "now"; older is refused.
START_GRACE = timedelta(seconds=60)


class LeaseInput(StrictSerializer):
    plan = serializers.ChoiceField(choices=Plan.choices)
    offer = AccessibleField(
        lambda actor: Offer.objects.unscoped(STOREFRONT).live(),
        "offer",
        required=False,
        allow_null=True,
        help_text="Rent from this offer's server (its live offer must price the plan).",
    )
    gpu_model = serializers.PrimaryKeyRelatedField(
        queryset=GpuModel.objects.filter(active=True), required=False, allow_null=True
    )
    region = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    server = AccessibleField(
        lambda actor: Server.objects.unscoped(STOREFRONT).filter(
            Exists(Offer.objects.live().filter(server_id=OuterRef("pk")))
        ),
        "server",
        required=False,
        allow_null=True,
        help_text="Rent on this server (one with a live offer).",
    )
    gpu_count = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    servers = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    pflops = serializers.DecimalField(max_digits=12, decimal_places=3, required=False, allow_null=True)
    start_at = serializers.DateTimeField(required=False, allow_null=True)
    end_at = serializers.DateTimeField(required=False, allow_null=True)
    interruptible = serializers.BooleanField(required=False, default=False)

    def validate_pflops(self, value: Decimal | None) -> Decimal | None:
        if value is not None and value <= 0:
            raise serializers.ValidationError("Must be greater than 0.")
        return value

    def validate(self, attrs: dict) -> dict:
        errors: dict[str, list[str]] = {}
        plan = attrs["plan"]
        now = timezone.now()
        start_at, end_at = attrs.get("start_at"), attrs.get("end_at")
        needs = {Plan.CARD_HOUR: "gpu_count", Plan.SERVER_MONTH: "servers", Plan.PFLOPS_YEAR: "pflops"}
        for other_plan, name in needs.items():
            if other_plan != plan and attrs.get(name) is not None:
                errors[name] = [f"Not used by the {plan} plan."]
        if plan == Plan.CARD_HOUR and attrs.get("gpu_count") is None:
            errors["gpu_count"] = ["Required for card_hour."]
        if plan == Plan.SERVER_MONTH and attrs.get("servers") is None:
            attrs["servers"] = 1
        if plan == Plan.PFLOPS_YEAR and attrs.get("pflops") is None:
            errors["pflops"] = ["Required for pflops_year."]
        offer = attrs.get("offer")
        if offer is not None:
            if attrs.get("server") is not None and attrs["server"] != offer.server:
                errors["server"] = ["Another server than the offer's."]
            if offer.price(plan, interruptible=attrs.get("interruptible", False)) is None:
                kind = "interruptible " if attrs.get("interruptible") else ""
                errors["offer"] = [f"This offer has no {kind}{plan} price."]
        if plan != Plan.CARD_HOUR and end_at is None:
            errors["end_at"] = [f"Required for {plan}."]
        if start_at is not None:
            if start_at < now - START_GRACE:
                errors["start_at"] = ["Must not be in the past."]
            elif start_at > now + timedelta(days=settings.SUANLI_RESERVATION_HORIZON_DAYS):
                errors["start_at"] = [
                    f"Reservations can start at most {settings.SUANLI_RESERVATION_HORIZON_DAYS} days ahead."
                ]
        if end_at is not None and end_at <= max(start_at or now, now):
            errors["end_at"] = ["Must be after start_at (and in the future)."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ResizeInput(StrictSerializer):
    gpu_count = serializers.IntegerField(min_value=1)


class LeaseGpuOutput(serializers.Serializer):
    uuid = serializers.CharField(source="gpu.uuid")
    server = serializers.IntegerField(source="server_id")
    since = serializers.DateTimeField(source="period.lower")
    until = serializers.DateTimeField(source="period.upper", allow_null=True)


class LeaseOutput(serializers.ModelSerializer):
    gpus = serializers.SerializerMethodField()
    offer = serializers.IntegerField(source="offer_id", allow_null=True, read_only=True)
    unit_price = serializers.DecimalField(
        max_digits=20, decimal_places=6, read_only=True, help_text="Price per plan unit, fixed at creation."
    )

    class Meta:
        model = Lease
        fields = [
            "id",
            "state",
            "plan",
            "interruptible",
            "offer",
            "gpu_model",
            "region",
            "server",
            "gpu_count",
            "servers",
            "pflops",
            "delivered_pflops",
            "shortfall_gpus",
            "gpus",
            "currency",
            "unit_price",
            "start_at",
            "end_at",
            "preempt_at",
            "created_at",
            "ended_at",
            "end_reason",
        ]

    @extend_schema_field(LeaseGpuOutput(many=True))
    def get_gpus(self, lease: Lease) -> list[dict]:
        from scheduler.selectors import held_allocations

        at = self.context.get("now") or timezone.now()
        return LeaseGpuOutput(held_allocations(lease=lease, at=at), many=True).data


class LeaseEventOutput(serializers.ModelSerializer):
    class Meta:
        model = LeaseEvent
        fields = ["id", "at", "kind", "data"]


class LeaseTelemetryGpu(serializers.Serializer):
    uuid = serializers.CharField()
    server = serializers.IntegerField()
    index = serializers.IntegerField()
    points = TelemetryPoint(many=True)


class LeaseTelemetryOutput(serializers.Serializer):
    """A lease's cards' series: only the cards it held, each only over the time it held it."""

    lease = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    step = serializers.IntegerField()
    source = serializers.ChoiceField(choices=["raw", "1m", "1h"])
    gpus = LeaseTelemetryGpu(many=True)
