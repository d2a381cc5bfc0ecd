"""The offer search's answer (API.md: Offers and search) made from listed rows (marketplace.selectors.ListedOffer):
each offer's JSON built from the values the search's statement selected, without model instances or DRF's
per-field lookups, field for field what `OfferOutput` gives for the same offer (tests/marketplace/
test_offer_api_rows.py compares the two on random fleets)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from marketplace.selectors import ListedOffer
from marketplace.serializers import OfferOutput, _prices, local_prices, shown_reliability


def _nullable(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


@functools.cache
def _converters() -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """Per field of `OfferOutput`, in its order: how the row's value is shown. Dates, decimals and choices through
    the serializer's own field (its formats and the current time zone); the rest as that field would."""
    fields = OfferOutput().fields
    own = {
        "id": int,
        "server": int,
        "is_resale": fields["is_resale"].to_representation,
        "gpu_model": int,
        "gpu_model_name": str,
        "gpus_total": int,
        "gpus_free": int,
        "region": str,
        "interconnect": str,
        "provider": str,
        "min_gpus": int,
        "host_access": fields["host_access"].to_representation,
    }
    shown = []
    for name in OfferOutput.Meta.fields:
        if name in ("prices", "interruptible_prices", "local_prices", "reliability"):
            continue  # the serializer's methods: below
        shown.append((name, _nullable(own.get(name) or fields[name].to_representation)))
    return tuple(shown)


def offer_json(row: ListedOffer, currency: str) -> dict:
    """One offer as `OfferOutput(offer, context={"currency": currency}).data` shows it."""
    out = {name: convert(getattr(row, name)) for name, convert in _converters()}
    out["prices"] = _prices(row, 0)
    out["interruptible_prices"] = _prices(row, 1)
    out["local_prices"] = local_prices(row, currency)
    out["reliability"] = shown_reliability(row.reliability)
    return {name: out[name] for name in OfferOutput.Meta.fields}
