"""The search form's regions (marketplace.search_page.listed_regions, a skip along the listing's partial index) are
the regions the listing has on online servers, as the ORM's DISTINCT answers them (marketplace.selectors), after
every change that brings or takes a region; the page offers a new region at once and drops a gone one at once."""

from __future__ import annotations

import random
import re

import pytest
from django.db import connection
from django.utils import timezone

from inventory.models import Offer, Server
from marketplace import search_page, selectors
from tests.factories import online_server

pytestmark = pytest.mark.django_db

REGIONS = ["cn-east-1", "cn-north-1", "ap-southeast-1", "eu-west-1", "cn-东部-2", "Z-last", "a-first"]


def _page_regions(client) -> list[str]:
    body = client.get("/offers/").content.decode()
    select = re.search(r'<select name="region".*?</select>', body, re.S).group(0)
    return re.findall(r'<option value="([^"]*)"', select)[1:]  # after "Any region"


def test_the_regions_are_the_listing_s_online_regions_after_every_change(bob):
    rng = random.Random(18)
    servers = [online_server(organization=bob.org, region=rng.choice(REGIONS), name=f"r-{i}") for i in range(12)]
    assert search_page.listed_regions() == selectors.listed_regions() != []
    for step in range(40):
        server = rng.choice(servers)
        change = rng.choice(["unreachable", "online", "move", "delist", "new"])
        if change in ("unreachable", "online"):
            Server.objects.filter(pk=server.pk).update(status=change)
        elif change == "move":
            Server.objects.filter(pk=server.pk).update(region=rng.choice(REGIONS))
        elif change == "delist":
            Offer.objects.filter(server=server).update(delisted_at=timezone.now())
        else:
            servers.append(online_server(organization=bob.org, region=rng.choice(REGIONS), name=f"r-new-{step}"))
        assert search_page.listed_regions() == selectors.listed_regions(), (step, change)


def test_a_new_region_is_offered_at_once_and_a_gone_one_dropped_at_once(client, bob):
    online_server(organization=bob.org, region="cn-east-1", name="east")
    assert _page_regions(client) == ["cn-east-1"]
    north = online_server(organization=bob.org, region="cn-north-1", name="north")
    assert _page_regions(client) == ["cn-east-1", "cn-north-1"]
    Server.objects.filter(pk=north.pk).update(status="unreachable")
    assert _page_regions(client) == ["cn-east-1"]


def test_the_regions_read_the_partial_index(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'offerlisting_online_region'")
        (definition,) = cursor.fetchone()
    assert "(region)" in definition and "WHERE server_online" in definition
