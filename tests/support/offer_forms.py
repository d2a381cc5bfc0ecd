"""The provider's new-offer form (/provider/offers/new/): its fields and the one-time key it carries."""

from __future__ import annotations

import re

FORM_KEY = re.compile(r'name="form_key" value="([0-9a-f-]{36})"')


def offer_form(server=None, **overrides) -> dict:
    """The new-offer form's fields: a card-hour price (2.5, interruptible 1.2) in USD for `server`, then `overrides`."""
    data = {
        "card_hour_price": "2.5",
        "server_month_price": "",
        "pflops_year_price": "",
        "card_hour_interruptible_price": "1.2",
        "server_month_interruptible_price": "",
        "pflops_year_interruptible_price": "",
        "min_gpus": "1",
        "available_until": "",
        "currency": "USD",
        **overrides,
    }
    if server is not None:
        data["server"] = server.pk
    return data


def offer_form_key(client) -> str:
    """The one-time key of a fresh new-offer form, as `client` loads it."""
    match = FORM_KEY.search(client.get("/provider/offers/new/").content.decode())
    assert match, "the form carries a key"
    return match[1]
