"""The README's catalogue and offer-search examples against a fresh demo (issue 17): the commands are read out of
README.md, so the test follows the README, and what its comments show is what `seed_demo` answers."""

from __future__ import annotations

import re
from io import StringIO
from urllib.parse import parse_qsl

import pytest
from django.conf import settings
from django.core.management import call_command
from rest_framework.test import APIClient

README = (settings.BASE_DIR / "README.md").read_text()
SEARCH = re.compile(r'^curl -s "\$API/offers/\?([^"]+)"\n((?:# .*\n)+)', re.MULTILINE)


@pytest.fixture
def demo(db) -> APIClient:
    call_command("seed_demo", stdout=StringIO())
    return APIClient()  # the README searches as anyone: no token


def _h100(client: APIClient) -> int:
    name = re.search(r'H100=\$\(curl -s \$API/gpu-models/ \| jq \'\.\[\] \| select\(\.name == "([^"]+)"\)', README)
    assert name, "the README picks the H100 out of the catalogue by name"
    ids = [m["id"] for m in client.get("/api/v1/gpu-models/").json() if m["name"] == name[1]]
    assert len(ids) == 1, name[1]
    return ids[0]


def _search(client: APIClient, query: str, h100: int) -> dict:
    params = dict(parse_qsl(query.replace("$H100", str(h100)), strict_parsing=True))
    response = client.get("/api/v1/offers/", params)
    assert response.status_code == 200, response.content
    return response.json()


def test_the_readme_catalogue_example_shows_the_first_entry_of_a_fresh_demo(demo):
    shown = re.search(
        r"curl -s \$API/gpu-models/ \| jq -c '\.\[\] \| \{id, name, memory_gb, fp16_tflops\}'\n"
        r'# \{"id": \.\.\., "name": "([^"]+)", "memory_gb": (\d+), "fp16_tflops": "([^"]+)"\}',
        README,
    )
    assert shown, "the README shows the catalogue's first entry, its id elided"
    first = demo.get("/api/v1/gpu-models/").json()[0]
    assert (first["name"], str(first["memory_gb"]), first["fp16_tflops"]) == shown.groups()


def test_the_readme_offer_searches_answer_what_their_comments_show_on_a_fresh_demo(demo):
    h100 = _h100(demo)
    searches = SEARCH.findall(README)
    assert len(searches) >= 2, "the README's offer searches (CNY and USD)"
    assert any("currency=CNY" in q and "max_price=" in q for q, _ in searches)
    for query, comment in searches:
        data = _search(demo, query, h100)
        count = re.search(r'"count": (\d+)', comment)
        assert count, comment
        assert data["count"] == int(count[1]), (query, data["count"])
        assert data["count"] > 0, query  # an example that finds nothing shows nothing
        first = data["results"][0]
        assert first["gpu_model"] == h100 and first["gpus_free"] >= 2, first
        # Every value the comment shows for the first result is what the demo answers.
        for key in ("provider", "gpus_total", "gpus_free", "reliability"):
            shown = re.search(rf'"{key}": ("[^"]*"|[\d.]+)', comment)
            if shown:
                assert str(first[key]) == shown[1].strip('"'), (query, key, first[key])
        price = re.search(r'"prices": \{"card_hour": "([^"]+)"', comment)
        if price:
            assert first["prices"]["card_hour"] == price[1], query
        local = re.search(r'"local_prices": \{"currency": "(\w+)", "prices": \{"card_hour": "([^"]+)"', comment)
        if local:
            assert first["local_prices"]["currency"] == local[1], query
            assert first["local_prices"]["prices"]["card_hour"] == local[2], query
            # max_price is read in the currency asked for: the shown price is under the example's ceiling.
            params = dict(parse_qsl(query))
            assert params["currency"] == local[1]
            assert float(local[2]) <= float(params["max_price"]), query


def test_max_price_is_read_in_the_currency_asked_for(demo):
    """The ceiling is in `currency`: 3 CNY is below every H100 card-hour (17.679 CNY), 3 USD is above (2.49 USD, and
    the broker's resale at 2.79 USD, 19.809 CNY)."""
    h100 = _h100(demo)
    base = f"gpu_model={h100}&min_gpus=2&plan=card_hour&ordering=price"
    assert _search(demo, f"{base}&max_price=3&currency=CNY", h100)["count"] == 0
    assert _search(demo, f"{base}&max_price=17.679&currency=CNY", h100)["count"] == 2  # Bob IDC's two free servers
    found = _search(demo, f"{base}&max_price=19.809&currency=CNY", h100)["results"]
    assert [offer["provider"] for offer in found] == ["Bob IDC", "Bob IDC", "Lanting Compute Brokers"]
    assert _search(demo, f"{base}&max_price=17.67&currency=CNY", h100)["count"] == 0
    assert _search(demo, f"{base}&max_price=3&currency=USD", h100)["count"] == 3


def test_the_readme_picks_its_offer_by_query_not_by_id_and_it_can_rent_two_cards(demo):
    pick = re.search(r"OFFER=\$\(curl -s \"\$API/offers/\?([^\"]+)\" \| jq '\.results\[0\]\.id'\)", README)
    assert pick, "the README takes the offer's id from a search"
    data = _search(demo, pick[1], _h100(demo))
    assert data["count"] > 0 and data["results"][0]["gpus_free"] >= 2
    # No example uses a literal id a fresh demo would not have.
    assert not re.search(r"\$API/(leases|servers|offers)/\d+", README)
    assert not re.search(r'"(offer|server|template)": \d+', README)
