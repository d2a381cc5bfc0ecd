"""GET /api/v1/offers/ answers from the search's own rows (marketplace.offer_json: the count and the page in one
statement, each offer's JSON from that statement's values): on random fleets, for every ordering and filter, prices
in both currencies, pages and their links, anonymous callers and customers (the currency they are shown), the
answer is byte for byte what DRF's list of Offer instances through OfferOutput gave before (`SearchBefore` below)."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone, translation
from rest_framework import mixins
from rest_framework.test import APIClient, APIRequestFactory

from inventory.models import Offer, ServerOutage
from marketplace import selectors
from marketplace.api import OfferViewSet
from marketplace.offer_json import offer_json
from marketplace.serializers import OfferOutput
from tests.conftest import make_persona
from tests.factories import OrganizationFactory, ProviderFactory, online_server
from tests.marketplace.test_offer_listing import REGIONS, build_fleet, random_history

pytestmark = pytest.mark.django_db

OFFERS = "/api/v1/offers/"


class SearchBefore(OfferViewSet):
    """The search as it answered before marketplace.offer_json: the same search (`get_queryset`'s query) as Offer
    instances, shown by OfferOutput through DRF's own list and pagination (a count, then the page)."""

    def get_queryset(self):
        listed = super().get_queryset()
        return selectors.ListedOffers(listed.query, now=listed.now, alias=listed.alias)

    def list(self, request, *args, **kwargs):
        return mixins.ListModelMixin.list(self, request, *args, **kwargs)


def answered_before(params: dict, headers: dict) -> tuple[int, dict]:
    request = APIRequestFactory().get(OFFERS, params, **headers)
    # The API's client goes through LocaleMiddleware: the language of Accept-Language picks the shown currency.
    language = "zh-hans" if headers.get("HTTP_ACCEPT_LANGUAGE", "").startswith("zh") else "en"
    with translation.override(language):
        response = SearchBefore.as_view({"get": "list"})(request)
        response.render()
    return response.status_code, json.loads(response.content)


def searches(models: list[int]) -> list[dict]:
    """Every ordering, each filter alone and several together, in each currency and the shown one; pages."""
    out = []
    for ordering in selectors.ORDERINGS:
        for currency in ("", "USD", "CNY"):
            out.append({"ordering": ordering, **({"currency": currency} if currency else {})})
        out.append({"ordering": ordering, "page_size": 4, "page": 2, "plan": "card_hour", "min_gpus": 2})
    for plan in ("card_hour", "server_month", "pflops_year"):
        out.append({"plan": plan, "interruptible": "true", "currency": "USD", "ordering": "-price"})
        out.append({"plan": plan, "max_price": "20", "currency": "CNY"})
        out.append({"plan": plan, "max_price": "20000"})
    out += [
        {"gpu_model": models[0], "region": REGIONS[0], "plan": "card_hour", "currency": "USD"},
        {"interconnect": "nvlink", "plan": "card_hour", "max_price": "20", "currency": "CNY"},
        {"min_reliability": "0.5", "ordering": "-gpus_free", "currency": "USD"},
        {"min_reliability": "0", "min_gpus": 1, "region": REGIONS[1], "ordering": "reliability"},
        {"min_gpus": 8, "ordering": "gpus_free", "currency": "CNY"},
        {"max_price": "0", "currency": "USD"},
        {"region": "nowhere"},
        {"region": "nowhere", "page": 2},
        {"page_size": 1},
        {"page_size": 3, "page": 3, "ordering": "newest", "currency": "CNY"},
        {"page_size": 5, "page": 4},
        {"page_size": 5, "page": 99},
        {"page_size": 500},
    ]
    return out


def vary_offers(rng: random.Random, now) -> None:
    """What the fleet's offers lack: volume and data-access prices, host access, an end, odd decimals."""
    for offer in Offer.objects.unscoped("test").order_by("id"):
        Offer.objects.unscoped("test").filter(pk=offer.pk).update(
            storage_gb_month_price=rng.choice([None, Decimal("0.0700"), Decimal("12.5")]),
            data_access_hour_price=rng.choice([None, Decimal("0.3333")]),
            host_access=rng.choice([True, False]),
            min_gpus=rng.choice([1, 2, 8]),
            server_month_interruptible_price=(
                None if offer.server_month_price is None else rng.choice([None, offer.server_month_price / 3])
            ),
            available_until=rng.choice([None, now + timedelta(days=2, microseconds=rng.randint(0, 999_999))]),
        )


@pytest.mark.parametrize("seed", [1, 2])
def test_the_search_answers_as_offer_output_did_for_every_filter_ordering_page_and_caller(seed):
    rng = random.Random(seed)
    now = timezone.now()
    servers, models = build_fleet(rng, now)
    random_history(rng, servers, now)
    # An open outage counts until each statement's own clock (selectors._stored_reliability): closed here, so two
    # answers read apart give the same reliability to every digit.
    ServerOutage.objects.filter(ended_at__isnull=True).update(ended_at=now - timedelta(minutes=1))
    vary_offers(rng, now)
    customer_cny = make_persona(OrganizationFactory(currency="CNY"))
    customer_usd = make_persona(OrganizationFactory(currency="USD"))
    callers = [
        ("anonymous", None, {}),
        ("anonymous, Chinese", None, {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}),
        ("customer in CNY", customer_cny, {}),
        ("customer in USD", customer_usd, {}),
    ]
    compared = 0
    with time_machine.travel(now + timedelta(seconds=1), tick=False):
        for name, persona, language in callers:
            headers = dict(language)
            if persona is not None:
                headers |= {"HTTP_AUTHORIZATION": f"Bearer {persona.token}", "HTTP_X_ORGANIZATION": str(persona.org.pk)}
            client = persona.api if persona is not None else APIClient()
            for params in searches(models):
                want_status, want = answered_before(params, headers)
                got = client.get(OFFERS, params, **language)
                assert got.status_code == want_status, (name, params, got.content)
                assert got.json() == want, (name, params)
                # The same bytes: the same keys in the same order.
                assert json.dumps(got.json()) == json.dumps(want), (name, params)
                compared += len(want.get("results", []))
    assert compared > 300


def test_one_statement_answers_a_page_and_its_count():
    for i in range(7):
        online_server(gpus=2, region="cn-east-1", name=f"rows-{i}")
    client = APIClient()
    with CaptureQueriesContext(connection) as captured:
        response = client.get(OFFERS, {"page_size": 3, "page": 2, "currency": "CNY"})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 7 and len(body["results"]) == 3 and body["next"] and body["previous"]
    searched = [q["sql"] for q in captured.captured_queries if "marketplace_offerlisting" in q["sql"]]
    assert len(searched) == 1, searched
    # Past the last page: the page reads no row, so the count is read on its own (DRF's 404, as before).
    with CaptureQueriesContext(connection) as captured:
        assert client.get(OFFERS, {"page_size": 3, "page": 4}).status_code == 404
    assert len([q for q in captured.captured_queries if "marketplace_offerlisting" in q["sql"]]) == 2


def test_a_listed_row_is_shown_as_offer_output_shows_its_offer():
    provider = ProviderFactory(currency="USD")
    server = online_server(
        organization=provider,
        gpus=4,
        offer={"storage_gb_month_price": Decimal("0.0500"), "host_access": True, "currency": "USD"},
    )
    now = timezone.now()
    for currency in ("", "USD", "CNY"):
        [row] = list(selectors.offers_listed(selectors.OfferQuery(currency=currency), now=now, rows=True))
        [offer] = list(selectors.offers_listed(selectors.OfferQuery(currency=currency), now=now))
        want = OfferOutput(offer, context={"currency": currency}).data
        assert offer_json(row, currency) == want
        assert list(offer_json(row, currency)) == list(want)
    assert row.server == server.pk


@pytest.mark.parametrize("rows", [False, True])
def test_a_count_read_with_its_expected_page_is_the_count_and_page_read_apart(rows):
    rng = random.Random(7)
    now = timezone.now()
    build_fleet(rng, now)
    for query in (
        selectors.OfferQuery(currency="USD"),
        selectors.OfferQuery(ordering="newest", currency="CNY", plan="card_hour"),
        selectors.OfferQuery(region="nowhere"),
    ):
        apart = selectors.ListedOffers(query, now=now, rows=rows)
        count = apart.count()
        for start, stop in ((0, 5), (5, 10), (15, 20), (0, None), (count, count + 5)):
            together = selectors.ListedOffers(query, now=now, rows=rows)
            together.expect(start, stop)
            assert together.count() == count
            # As a paginator slices: the last page cut short at the count.
            end = None if stop is None else min(stop, count)
            ids = lambda items: [item.id if rows else item.pk for item in items]  # noqa: E731
            assert ids(together[start:end]) == ids(apart[start:end]), (query, start, stop)
