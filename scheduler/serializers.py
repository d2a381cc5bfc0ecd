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
from scheduler import elastic
from scheduler.models import Lease, LeaseEvent, Plan, ScalingRule

# A start a little in the past (clock skew, a slow client) means "now"; older is refused.
START_GRACE = timedelta(seconds=60)


class ScheduleEntryInput(StrictSerializer):
    cron = serializers.CharField(
        max_length=100, help_text="5-field cron expression, UTC (minute hour day-of-month month day-of-week)."
    )
    max_gpus = serializers.IntegerField(
        min_value=0, max_value=elastic.MAX_GPUS_LIMIT, help_text="The most cards in every minute the expression names."
    )


class ScalingInput(StrictSerializer):
    """A card_hour lease's scaling rule (scheduler/elastic.py). Exactly one of target_utilization_pct and
    queue_depth_per_gpu."""

    min_gpus = serializers.IntegerField(min_value=0, max_value=elastic.MAX_GPUS_LIMIT, required=False, default=0)
    max_gpus = serializers.IntegerField(min_value=1, max_value=elastic.MAX_GPUS_LIMIT)
    target_utilization_pct = serializers.IntegerField(min_value=1, max_value=100, required=False, allow_null=True)
    queue_depth_per_gpu = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False, allow_null=True)
    step_up = serializers.IntegerField(min_value=1, max_value=elastic.MAX_GPUS_LIMIT, required=False, default=1)
    step_down = serializers.IntegerField(min_value=1, max_value=elastic.MAX_GPUS_LIMIT, required=False, default=1)
    cooldown_seconds = serializers.IntegerField(min_value=0, max_value=7 * 86400, required=False, default=300)
    schedule = ScheduleEntryInput(many=True, required=False, max_length=elastic.MAX_SCHEDULE_ENTRIES)
    max_price_per_hour = serializers.DecimalField(
        max_digits=20,
        decimal_places=6,
        min_value=Decimal("0.000001"),
        required=False,
        allow_null=True,
        help_text="The most its cards may cost an hour together, in the lease's currency.",
    )

    def validate(self, attrs: dict) -> dict:
        errors = elastic.rule_errors({**elastic.SETTINGS, **attrs})
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class QueueDepthInput(StrictSerializer):
    depth = serializers.IntegerField(min_value=0, max_value=2_000_000_000)


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
    scaling = ScalingInput(required=False, allow_null=True, help_text="card_hour only: its scaling rule.")

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
        if attrs.get("scaling") is not None:
            if plan != Plan.CARD_HOUR:
                errors["scaling"] = ["Only card_hour leases can scale."]
            elif attrs.get("gpu_count") is not None and not (
                attrs["scaling"]["min_gpus"] <= attrs["gpu_count"] <= attrs["scaling"]["max_gpus"]
            ):
                errors["gpu_count"] = ["Must lie within the scaling rule's min_gpus and max_gpus."]
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


class ScheduleEntryOutput(serializers.Serializer):
    cron = serializers.CharField()
    max_gpus = serializers.IntegerField()


class ScalingOutput(serializers.ModelSerializer):
    """The rule's settings, then its state as the beat job last left it (`desired_gpus`: the cards it wants now)."""

    schedule = ScheduleEntryOutput(many=True)
    currency = serializers.CharField(source="lease.currency", read_only=True)
    status_message = serializers.CharField(
        read_only=True, help_text="What the beat job last said about the rule, in English."
    )

    class Meta:
        model = ScalingRule
        fields = [
            "min_gpus",
            "max_gpus",
            "target_utilization_pct",
            "queue_depth_per_gpu",
            "step_up",
            "step_down",
            "cooldown_seconds",
            "schedule",
            "max_price_per_hour",
            "currency",
            "queue_depth",
            "queue_depth_at",
            "last_scaled_at",
            "evaluated_at",
            "desired_gpus",
            "status",
            "status_message",
        ]
        read_only_fields = fields


class LeaseOutput(serializers.ModelSerializer):
    gpus = serializers.SerializerMethodField()
    scaling = serializers.SerializerMethodField()
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
            "scaling",
        ]

    @extend_schema_field(ScalingOutput(allow_null=True))
    def get_scaling(self, lease: Lease) -> dict | None:
        try:
            rule = lease.scaling
        except ScalingRule.DoesNotExist:
            return None
        return ScalingOutput(rule).data

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
