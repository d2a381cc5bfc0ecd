"""Writes of the storefront: providers list, reprice and delist their servers' offers (resellers theirs: a resale
offer is made by scheduler/resale.py and changed here under its rules)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.errors import Conflict, InvalidInput
from accounts.models import Organization
from accounts.tenancy import platform_work
from inventory.models import PLAN_PRICE_FIELDS, Offer, Server
from scheduler import resale

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "the offer and its server were reached through the access layer"


def _check_prices(fields: dict[str, Any]) -> None:
    """At least one plan priced; an interruptible price only beside an on-demand one, and below it."""
    errors: dict[str, list[str]] = {}
    if not any(fields.get(firm) for firm, _spot in PLAN_PRICE_FIELDS.values()):
        errors["prices"] = ["Price at least one plan."]
    for plan, (firm, spot) in PLAN_PRICE_FIELDS.items():
        on_demand, interruptible = fields.get(firm), fields.get(spot)
        if interruptible is not None and (on_demand is None or interruptible >= on_demand):
            errors.setdefault("interruptible_prices", []).append(
                f"{plan}: an interruptible price needs an on-demand price above it."
            )
    if errors:
        raise InvalidInput("Check the prices.", fields=errors)


@platform_work(_PLATFORM)
def offer_create(
    *,
    org: Organization,
    server: Server,
    prices: dict[str, Decimal | None],
    interruptible_prices: dict[str, Decimal | None] | None = None,
    min_gpus: int = 1,
    available_until: datetime | None = None,
    currency: str | None = None,
    host_access: bool = False,
    storage_gb_month_price: Decimal | None = None,
    data_access_hour_price: Decimal | None = None,
) -> Offer:
    """List `server` (one live offer per server: a second one is 409). `storage_gb_month_price` prices the
    server's volumes (workloads.volumes; None: none on this server), `data_access_hour_price` a data-access session
    on them (workloads.data_access; None: the platform's default)."""
    if server.organization_id != org.pk:
        raise InvalidInput("Not one of your servers.", fields={"server": ["Not one of your servers."]})
    if min_gpus > server.gpu_count:
        raise InvalidInput("More cards than the server has.", fields={"min_gpus": [f"At most {server.gpu_count}."]})
    fields = _price_fields(prices, interruptible_prices or {})
    _check_prices(fields)
    try:
        with transaction.atomic():
            return Offer.objects.create(
                organization=org,
                server=server,
                currency=currency or org.currency,
                min_gpus=min_gpus,
                available_until=available_until,
                host_access=host_access,
                storage_gb_month_price=storage_gb_month_price,
                data_access_hour_price=data_access_hour_price,
                **fields,
            )
    except IntegrityError:
        raise Conflict("This server already has a live offer; change or delist it.", code="offer_exists") from None


def _price_fields(prices: dict, interruptible: dict) -> dict[str, Decimal | None]:
    fields: dict[str, Decimal | None] = {}
    for plan, (firm, spot) in PLAN_PRICE_FIELDS.items():
        fields[firm] = prices.get(plan)
        fields[spot] = interruptible.get(plan)
    return fields


@platform_work(_PLATFORM)
def offer_update(*, offer: Offer, **changes: Any) -> Offer:
    """Change prices, minimum, end or currency. Running leases keep the prices they started with.

    `offer` may be stale (a form opened before a delist): the row is locked and read again, a delisted one
    refuses the change (409 `invalid_state`), and only the fields the change names are written, so a delist or
    another edit made meanwhile is not overwritten. Returns the offer as stored.
    """
    with transaction.atomic():
        locked = Offer.objects.select_for_update(of=("self",)).select_related("server").get(pk=offer.pk)
        if locked.delisted_at is not None:
            raise Conflict("A delisted offer cannot change.", code="invalid_state")
        values: dict[str, Any] = {}
        if "prices" in changes:
            values.update({PLAN_PRICE_FIELDS[p][0]: v for p, v in changes.pop("prices").items()})
        if "interruptible_prices" in changes:
            values.update({PLAN_PRICE_FIELDS[p][1]: v for p, v in changes.pop("interruptible_prices").items()})
        if locked.is_resale:
            # A resale offer's own rules: card_hour prices, its contract's end and cards (scheduler/resale.py).
            _resale_extras(changes)
            resale.check_offer_change(locked, {**values, **changes})
        else:
            prices = {name: getattr(locked, name) for pair in PLAN_PRICE_FIELDS.values() for name in pair}
            _check_prices({**prices, **values})
            most = locked.server.gpu_count
            if changes.get("min_gpus", locked.min_gpus) > most:
                raise InvalidInput("More cards than the server has.", fields={"min_gpus": [f"At most {most}."]})
        values.update(changes)
        for name, value in values.items():
            setattr(locked, name, value)
        locked.save(update_fields=[*values, "updated_at"])
    return locked


def _resale_extras(changes: dict[str, Any]) -> None:
    """A resale offer lends no host access and no volume storage: those are the server's provider's."""
    errors = {
        name: ["Not for a resale offer."]
        for name in ("host_access", "storage_gb_month_price", "data_access_hour_price")
        if changes.get(name)
    }
    if errors:
        raise InvalidInput("A resale offer sells card-hours only.", fields=errors)


@platform_work(_PLATFORM)
def offer_delist(*, offer: Offer, now: datetime | None = None) -> Offer:
    """Take the offer off the storefront; leases already running on it go on. Idempotent."""
    if offer.delisted_at is None:
        offer.delisted_at = now or timezone.now()
        Offer.objects.live().filter(pk=offer.pk).update(delisted_at=offer.delisted_at)
    return offer
