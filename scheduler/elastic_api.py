"""`GET /api/v1/leases/{id}/scaling/history/`: an elastic lease's chart, the cards it held over time beside the mean
utilisation of those cards, and its scaling steps (scheduler/elastic_history.py). Parse, call the selector,
serialize; the lease is reached through scheduler.access (another organisation's is 404)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor
from accounts.apiviews import OrgAPIView
from inventory.serializers import TelemetryQuery
from scheduler.access import access_lease
from scheduler.api import LeaseViewSet
from scheduler.elastic_history import lease_scaling_history
from scheduler.models import Lease


class HeldCardsPoint(serializers.Serializer):
    t = serializers.DateTimeField(help_text="From this moment on (until the next point) the lease held `gpus` cards.")
    gpus = serializers.IntegerField()


class MeanUtilizationPoint(serializers.Serializer):
    t = serializers.DateTimeField(help_text="The start of a bucket of `step` seconds.")
    utilization_pct = serializers.FloatField(help_text="The mean utilisation of the lease's cards that reported.")
    cards = serializers.IntegerField(help_text="How many of its cards reported in the bucket.")


class ScalingStep(serializers.Serializer):
    t = serializers.DateTimeField()
    from_gpus = serializers.IntegerField()
    to_gpus = serializers.IntegerField()
    by = serializers.ChoiceField(choices=["rule", "customer"], help_text="The scaling rule, or a resize by hand.")
    reason = serializers.CharField(help_text="The rule's reason (e.g. utilization_high, schedule); empty by hand.")


class ScalingHistoryOutput(serializers.Serializer):
    """Cards held over time (steps) beside their mean utilisation (buckets of `step` seconds) and the resizes."""

    lease = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    step = serializers.IntegerField()
    source = serializers.ChoiceField(choices=["raw", "1m", "1h"])
    gpus = HeldCardsPoint(many=True)
    utilization = MeanUtilizationPoint(many=True)
    steps = ScalingStep(many=True)


class LeaseScalingHistoryApi(OrgAPIView):
    """GET: the lease's cards over [since, until) (default: the last hour it ran) beside the mean utilisation of the
    cards it held, at `step` seconds, and its resizes (by its scaling rule or by hand). Any lease of the
    organisation, with or without a rule."""

    queryset = Lease.objects.none()
    permission_classes = LeaseViewSet.permission_classes
    serializer_class = ScalingHistoryOutput

    @extend_schema(parameters=[TelemetryQuery], responses={200: ScalingHistoryOutput})
    def get(self, request: Request, pk: str) -> Response:
        lease = access_lease(Actor.of(request), pk)
        query = TelemetryQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        return Response(ScalingHistoryOutput(lease_scaling_history(lease=lease, **query.validated_data)).data)
