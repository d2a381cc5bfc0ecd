"""The offer search page reads its count and its page of offers in one statement (issue 18), as the API does:
marketplace.selectors.ListedOffers(rows=True) with expect(), each result card made from its listed row
(marketplace.views_offers.result_card) and showing what the offer's own view (offer_view, from model instances)
shows of the same offer."""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from decimal import Decimal

import pytest
from django.db import connection
from django.template.loader import render_to_string
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import translation

from billing.display import money
from inventory.models import Offer
from marketplace.models import OfferListing
from marketplace.offer_cards import LABELS, CardWriter
from marketplace.selectors import OfferQuery, offers_listed
from marketplace.views_offers import (
    PAGE_SIZE,
    PageMoney,
    PlanPrice,
    interconnect_texts,
    offer_view,
    plan_texts,
    result_card,
)
from tests.factories import GpuModelFactory, ProviderFactory, online_server

CARD = re.compile(r'<article class="offer-card" id="offer-(\d+)"')


@pytest.fixture
def fleet(db):
    """Offers of two providers in both currencies, on servers with and without their own interconnect, with a
    minimum of cards, some plans unpriced, and a name to escape."""
    usd, cny = ProviderFactory(currency="USD"), ProviderFactory(currency="CNY")
    pcie = GpuModelFactory(slug="row-pcie", name="Row <PCIe> & Co", interconnect="pcie", memory_gb=48)
    nvlink = GpuModelFactory(slug="row-nvlink", name="Row NVLink", interconnect="nvlink", memory_gb=80)
    servers = [
        online_server(organization=usd, gpu_model=pcie, region="cn-east-1", interconnect=""),
        online_server(organization=cny, gpu_model=nvlink, region="cn-north-1", offer={"min_gpus": 4}),
        online_server(
            organization=usd,
            gpu_model=nvlink,
            region="cn-east-1",
            interconnect="pcie",
            offer={
                "server_month_price": None,
                "server_month_interruptible_price": None,
                "card_hour_interruptible_price": None,
            },
        ),
        online_server(
            organization=cny,
            gpu_model=pcie,
            gpus=4,
            offer={"card_hour_price": Decimal("0.3333"), "card_hour_interruptible_price": Decimal("0.1111")},
        ),
    ]
    return [server.offers.get() for server in servers]


def _search_statements(queries) -> list[str]:
    """What the page sent to the listing besides the region choices (marketplace.search_page.listed_regions)."""
    table = OfferListing._meta.db_table
    return [q["sql"] for q in queries.captured_queries if table in q["sql"] and "RECURSIVE" not in q["sql"]]


@pytest.mark.parametrize(
    "params",
    ["", "?plan=card_hour&min_gpus=2&ordering=price", "?interconnect=nvlink&max_price=20&currency=CNY", "?page=1"],
)
def test_the_page_reads_its_count_and_its_offers_in_one_statement(client, fleet, params):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/offers/{params}")
    assert response.status_code == 200
    statements = _search_statements(queries)
    assert len(statements) == 1, statements
    assert "COUNT(*) OVER ()" in statements[0]
    offers = [q["sql"] for q in queries.captured_queries if f'FROM "{Offer._meta.db_table}"' in q["sql"]]
    assert offers == []  # no lookup of the page's offers after it: the statement joined them
    assert len(CARD.findall(response.content.decode())) == response.context["page"].paginator.count


@pytest.mark.parametrize("currency", ["USD", "CNY"])
@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_each_card_shows_what_the_offers_own_view_shows(fleet, currency, language):
    query = OfferQuery(currency=currency)
    with translation.override(language):
        texts, interconnects = plan_texts(), interconnect_texts()
        rows = list(offers_listed(query, rows=True))
        offers = list(offers_listed(query))
        assert [row.id for row in rows] == [offer.pk for offer in offers] and len(rows) == len(fleet)
        for row, offer in zip(rows, offers, strict=True):
            card, view = result_card(row, currency, texts, interconnects), offer_view(offer, currency, texts)
            assert asdict(card) == {
                "pk": view.pk,
                "detail_url": view.detail_url,
                "title": view.title,
                "provider": offer.organization.name,
                "region": offer.server.region,
                "interconnect": view.interconnect,
                "gpus_free": view.gpus_free,
                "gpus_total": view.gpus_total,
                "reliability_pct": view.reliability_pct,
                "memory_gb": offer.server.gpu_model.memory_gb,
                "min_gpus": offer.min_gpus,
                "currency": view.currency,
                "prices": [asdict(price) for price in view.prices],
                "no_rate": view.no_rate,
            }


@override_settings(SUANLI_FX_RATES={})
def test_without_a_rate_a_card_shows_the_offers_own_currency_and_says_so(client, fleet):
    body = client.get("/offers/?currency=USD").content.decode()
    assert body.count("No exchange rate is configured: prices in CNY.") == 2
    assert "No exchange rate is configured: prices in USD." not in body


def test_pages_past_the_first_and_pages_out_of_range_show_what_the_paginator_picks(client, db):
    for _ in range(PAGE_SIZE + 2):
        online_server()
    ordered = [str(offer.pk) for offer in offers_listed(OfferQuery(currency="USD"))]
    pages = {"1": ordered[:PAGE_SIZE], "2": ordered[PAGE_SIZE:]}
    # As Django's Paginator.get_page: not a number is the first page, past the end or below 1 the last.
    for page, shown in {**pages, "abc": pages["1"], "3": pages["2"], "0": pages["2"], "-1": pages["2"]}.items():
        response = client.get(f"/offers/?currency=USD&page={page}")
        assert response.status_code == 200 and CARD.findall(response.content.decode()) == shown, page
    huge = client.get(f"/offers/?currency=USD&page={10**30}")
    assert huge.status_code == 200 and CARD.findall(huge.content.decode()) == pages["2"]
    with CaptureQueriesContext(connection) as queries:
        assert CARD.findall(client.get("/offers/?currency=USD&page=2").content.decode()) == pages["2"]
    assert len(_search_statements(queries)) == 1


@pytest.mark.parametrize("rates", [None, {}], ids=["rates", "no rates"])
@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_the_written_cards_are_what_the_card_template_renders(fleet, language, rates):
    settings = {} if rates is None else {"SUANLI_FX_RATES": rates}
    with override_settings(**settings), translation.override(language):
        texts, interconnects = plan_texts(), interconnect_texts()
        cards = [
            result_card(row, "USD", texts, interconnects)
            for row in offers_listed(OfferQuery(currency="USD"), rows=True)
        ]
        odd = replace(
            cards[0],
            title="8 × <b>&'\"",
            provider="A & B <Ltd>",
            region="r<1>",
            interconnect="x&y",
            reliability_pct=None,
            min_gpus=1001,
            memory_gb=12345,
            prices=[PlanPrice("card_hour", "a<b", "c&d", "1 < 2", "", ""), PlanPrice("x", "y", "z", "1", "2 & 3", "4")],
        )
        labels = {name: translation.gettext(text) for name, text in LABELS.items()}
        writer = CardWriter()
        for card in [*cards, odd, replace(odd, min_gpus=2, reliability_pct=99.95, no_rate=True, prices=[])]:
            assert writer.card(card) == render_to_string(
                "marketplace/offers/_offer_card.html", {"view": card, **labels}
            ), card


@pytest.mark.parametrize("language", ["en", "zh-hans", "de"])
def test_a_pages_money_is_billing_displays_money(language):
    amounts = [
        None,
        Decimal(0),
        Decimal("2.5"),
        Decimal("2.5000"),
        Decimal("0.3333"),
        Decimal("0.00005"),
        Decimal("-3"),
    ]
    amounts += [Decimal("1234567.891"), Decimal("12000.000000"), Decimal("17.75000000"), Decimal("0.004999")]
    with translation.override(language):
        shown = PageMoney()
        for amount in amounts:
            for currency in ("USD", "CNY"):
                assert shown(amount, currency) == money(amount, currency), amount
