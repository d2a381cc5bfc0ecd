"""Input and output shapes of the offer API (API.md: Offers and search)."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Organization
from accounts.serializers import AccessibleField, StrictSerializer
from inventory.models import PLAN_PRICE_FIELDS, Interconnect, Offer, Server
from marketplace.selectors import ORDERINGS
from scheduler.models import Plan
from scheduler.pricing import PRICE_PLACES, rate_between

PRICE = {"max_digits": 14, "decimal_places": 4, "min_value": Decimal("0.0001"), "allow_null": True, "required": False}


class PricesField(StrictSerializer):
    card_hour = serializers.DecimalField(**PRICE, help_text="Per card per hour")
    server_month = serializers.DecimalField(**PRICE, help_text="Per whole server per calendar month")
    pflops_year = serializers.DecimalField(**PRICE, help_text="Per rated PFLOPS per year")


class OfferInput(StrictSerializer):
    server = AccessibleField(lambda actor: Server.objects.for_org(actor.org), "server")
    prices = PricesField()
    interruptible_prices = PricesField(required=False)
    min_gpus = serializers.IntegerField(min_value=1, max_value=16, default=1)
    available_until = serializers.DateTimeField(required=False, allow_null=True)
    currency = serializers.ChoiceField(choices=Organization.Currency.choices, required=False)
    host_access = serializers.BooleanField(
        required=False, default=False, help_text="server_month renters may ask for SSH onto the bare server."
    )
    storage_gb_month_price = serializers.DecimalField(
        **PRICE, help_text="Volumes on this server, per GB per calendar month (null: no volumes)."
    )
    data_access_hour_price = serializers.DecimalField(
        **PRICE, help_text="A data-access session without cards here, per hour (null: the platform's default)."
    )


class ResaleOfferInput(StrictSerializer):
    """A resale offer (scheduler/resale.py): cards the caller holds through its own active server_month or
    pflops_year contract, offered on by the card-hour."""

    backed_by_lease = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        help_text="The id of your own active server_month or pflops_year lease whose cards this offer resells.",
    )
    server = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        required=False,
        allow_null=True,
        help_text="Which of the lease's servers (needed when it holds cards on several).",
    )
    prices = PricesField(help_text="card_hour only.")
    interruptible_prices = PricesField(required=False, help_text="card_hour only.")
    interruptible_only = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Lend idle committed cards back: rented interruptibly only (interruptible_prices alone), taken "
        "back with the usual preemption notice (POST /api/v1/offers/{id}/reclaim/).",
    )
    min_gpus = serializers.IntegerField(min_value=1, max_value=16, default=1)
    available_until = serializers.DateTimeField(
        required=False, allow_null=True, help_text="No later than the lease's end (its end when left out)."
    )
    currency = serializers.ChoiceField(choices=Organization.Currency.choices, required=False)


class ReclaimInput(StrictSerializer):
    gpu_count = serializers.IntegerField(min_value=1, max_value=1024, help_text="Cards to take back.")


class ReclaimOutput(serializers.Serializer):
    gpu_count = serializers.IntegerField(help_text="Cards taken back (whole leases go, so possibly more).")
    leases = serializers.ListField(child=serializers.IntegerField(), help_text="The leases given notice.")
    effective_at = serializers.DateTimeField(help_text="When the cards come back (the preemption notice's end).")


class OfferChange(StrictSerializer):
    prices = PricesField(required=False)
    interruptible_prices = PricesField(required=False)
    min_gpus = serializers.IntegerField(min_value=1, max_value=16, required=False)
    available_until = serializers.DateTimeField(required=False, allow_null=True)
    currency = serializers.ChoiceField(choices=Organization.Currency.choices, required=False)
    host_access = serializers.BooleanField(required=False)
    storage_gb_month_price = serializers.DecimalField(
        **PRICE, help_text="Volumes on this server, per GB per calendar month (null: no volumes)."
    )
    data_access_hour_price = serializers.DecimalField(
        **PRICE, help_text="A data-access session without cards here, per hour (null: the platform's default)."
    )


class OfferSearch(StrictSerializer):
    gpu_model = serializers.IntegerField(required=False, min_value=1)
    min_gpus = serializers.IntegerField(required=False, min_value=1, max_value=16)
    region = serializers.CharField(required=False, max_length=50, default="")
    plan = serializers.ChoiceField(choices=Plan.choices, required=False, default="")
    interruptible = serializers.BooleanField(required=False, default=False)
    max_price = serializers.DecimalField(max_digits=20, decimal_places=6, required=False, min_value=Decimal(0))
    interconnect = serializers.ChoiceField(choices=Interconnect.choices, required=False, default="")
    min_reliability = serializers.DecimalField(
        max_digits=5, decimal_places=4, required=False, min_value=Decimal(0), max_value=Decimal(1)
    )
    ordering = serializers.ChoiceField(choices=sorted(ORDERINGS), required=False, default="price")
    currency = serializers.ChoiceField(choices=Organization.Currency.choices, required=False, default="")
    # Pagination parameters pass through.
    page = serializers.IntegerField(required=False, min_value=1)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)


def _prices(offer, index: int, rate: Decimal = Decimal(1)) -> dict[str, str | None]:
    out = {}
    for plan, pair in PLAN_PRICE_FIELDS.items():
        value = getattr(offer, pair[index])
        if value is not None and rate != 1:
            value = (value * rate).quantize(PRICE_PLACES)
        out[plan] = None if value is None else str(value)
    return out


class OfferOutput(serializers.ModelSerializer):
    gpu_model = serializers.IntegerField(source="server.gpu_model_id")
    gpu_model_name = serializers.CharField(source="server.gpu_model.name")
    gpus_total = serializers.IntegerField(source="server.gpu_count")
    gpus_free = serializers.IntegerField(
        read_only=True, allow_null=True, default=None, help_text="Cards free now (null where not computed)"
    )
    region = serializers.CharField(source="server.region")
    interconnect = serializers.CharField(source="server.interconnect")
    provider = serializers.CharField(source="organization.name")
    prices = serializers.SerializerMethodField()
    interruptible_prices = serializers.SerializerMethodField()
    local_prices = serializers.SerializerMethodField()
    reliability = serializers.SerializerMethodField()
    is_resale = serializers.BooleanField(
        read_only=True, help_text="A resale offer: `provider` is the reseller, which holds these cards by contract."
    )

    class Meta:
        model = Offer
        fields = [
            "id",
            "server",
            "is_resale",
            "gpu_model",
            "gpu_model_name",
            "gpus_total",
            "gpus_free",
            "region",
            "interconnect",
            "provider",
            "currency",
            "prices",
            "interruptible_prices",
            "local_prices",
            "min_gpus",
            "available_until",
            "host_access",
            "storage_gb_month_price",
            "data_access_hour_price",
            "reliability",
            "created_at",
            "delisted_at",
        ]

    @extend_schema_field(PricesField)
    def get_prices(self, offer: Offer) -> dict:
        return _prices(offer, 0)

    @extend_schema_field(PricesField)
    def get_interruptible_prices(self, offer: Offer) -> dict:
        return _prices(offer, 1)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_local_prices(self, offer: Offer) -> dict | None:
        """Prices in the currency asked for (`currency`, else the caller's organisation), at the rates a lease
        would be priced at; null when it is the offer's own currency or no rate is configured."""
        return local_prices(offer, self.context.get("currency"))

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_reliability(self, offer: Offer) -> float | None:
        return shown_reliability(getattr(offer, "reliability", None))


def local_prices(offer, currency: str | None) -> dict | None:
    """`local_prices` of an offer (or of anything with its currency and price attributes: a ListedOffer)."""
    if not currency or currency == offer.currency:
        return None
    rate = rate_between(offer.currency, currency)
    if rate is None:
        return None
    return {
        "currency": currency,
        "prices": _prices(offer, 0, rate),
        "interruptible_prices": _prices(offer, 1, rate),
    }


def shown_reliability(value) -> float | None:
    return None if value is None else round(float(value), 4)
