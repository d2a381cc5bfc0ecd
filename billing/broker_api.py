"""The broker's book (issue 20): `GET /api/v1/broker/book/?from=YYYY-MM-DD&to=YYYY-MM-DD`.

What the caller's organisation holds under its contracts (server_month, pflops_year), how much of it renters hold
through its resale offers, its idle cards, and the money (resale revenue, commission, net, contract cost, margin)
per contract and per day (billing/broker.py). Any member reads; only its own organisation's book (no id in the
path: another tenant's is never reachable). Days are the platform time zone's; the default is this month so far;
at most 93 days; a bad or backwards range is 400 `invalid`.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.apiviews import OrgAPIView
from accounts.permissions import HasOrganization
from accounts.serializers import StrictSerializer
from billing.broker import MAX_DAYS, book_as_dict, broker_book


class BookQuery(StrictSerializer):
    # `from` is a Python keyword: the field is declared by name.
    locals()["from"] = serializers.DateField(required=False, help_text="First day (default: the 1st of the month)")
    to = serializers.DateField(required=False, help_text=f"Last day, included (at most {MAX_DAYS} days from `from`)")


def _seconds() -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=24, decimal_places=6)


class BookMoney(serializers.Serializer):
    currency = serializers.CharField()
    resale_revenue = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="What renters were charged")
    commission = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="The platform's, at the take rate")
    resale_net = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="Revenue less commission")
    contract_cost = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="What the contracts cost")
    margin = serializers.DecimalField(max_digits=18, decimal_places=2, help_text="Net less contract cost")


class BookFigures(serializers.Serializer):
    held_card_seconds = _seconds()
    resold_card_seconds = _seconds()
    idle_card_seconds = _seconds()
    resold_share = serializers.DecimalField(
        max_digits=6, decimal_places=4, allow_null=True, help_text="Resold / held card-seconds (null: none held)"
    )
    money = BookMoney(many=True, help_text="Per currency (metered usage, up to metered_until)")


class BookContract(BookFigures):
    lease = serializers.IntegerField()
    plan = serializers.CharField()
    state = serializers.CharField()
    start_at = serializers.DateTimeField()
    end_at = serializers.DateTimeField(allow_null=True)
    cards = serializers.IntegerField(help_text="Cards it held in the range")


class BookDay(BookFigures):
    date = serializers.DateField()
    held_cards = serializers.DecimalField(max_digits=10, decimal_places=2, help_text="Mean cards held over the day")
    resold_cards = serializers.DecimalField(max_digits=10, decimal_places=2)
    idle_cards = serializers.DecimalField(max_digits=10, decimal_places=2)


class BookOutput(serializers.Serializer):
    locals()["from"] = serializers.DateField()
    to = serializers.DateField()
    time_zone = serializers.CharField(help_text="The platform time zone the days are cut in")
    take_rate = serializers.DecimalField(max_digits=5, decimal_places=4)
    metered_until = serializers.DateTimeField(allow_null=True)
    as_of = serializers.DateTimeField()
    totals = BookFigures()
    contracts = BookContract(many=True)
    days = BookDay(many=True)


class BrokerBookApi(OrgAPIView):
    """The organisation's broker book: held capacity, resold share, idle cards, margin per contract, by day."""

    permission_classes = [IsAuthenticated, HasOrganization]

    @extend_schema(parameters=[BookQuery], responses={200: BookOutput})
    def get(self, request: Request) -> Response:
        query = BookQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        book = broker_book(org=request.org, first=query.validated_data.get("from"), last=query.validated_data.get("to"))
        return Response(BookOutput(book_as_dict(book)).data)
