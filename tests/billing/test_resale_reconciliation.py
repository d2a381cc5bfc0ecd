"""Reconciliation check (f), resale (issue 20): a clean month of resale reconciles, and each way its records could
go wrong is named: a resold record outside its backing contract (`resale_unbacked`), paid to someone other than
its reseller (`resale_provider`), or without the contract's own record of that slot billed to the reseller at the
contract price and earned by the server's owner (`resale_contract_unbilled`). The staff page shows the resale
figures per reseller."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.test import Client

from billing.invoicing import close_period
from billing.models import UsageRecord
from billing.reconciliation import reconcile
from tests.billing.resale_support import MONTH, Segment, broker_world, resale_rows
from tests.factories import UserFactory

D = Decimal
DAY = 86400
pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    world = broker_world()
    segments = [
        Segment(card=0, start=DAY, end=2 * DAY, lease=0),
        Segment(card=3, start=5 * DAY + 30, end=5 * DAY + 3630, lease=2),  # one hour, in CNY
    ]
    resale_rows(world, segments, {(0, 0): D("3.00"), (1, 2): D("21.00")})
    world.after = world.period.end + timedelta(hours=1)
    with time_machine.travel(world.after, tick=False):
        close_period(MONTH)
    return world


def _kinds(world) -> dict[str, list]:
    with time_machine.travel(world.after, tick=False):
        result = reconcile(MONTH, stripe_api=False)
    return {m.kind: m.objects.get("usage_records", []) for m in result.mismatches}, result


def _resold(world):
    return UsageRecord.objects.filter(allocation__backing__isnull=False).order_by("id")


def test_a_clean_month_of_resale_reconciles_and_adds_up(world):
    kinds, result = _kinds(world)
    assert kinds == {}
    rows = {row["currency"]: row for row in result.resale}
    usd, cny = rows["USD"], rows["CNY"]
    assert (usd["resale_revenue"], usd["commission"], usd["resale_net"]) == (D("72.00"), D("10.80"), D("61.20"))
    assert usd["contract_cost"] == D("18000.00") and usd["margin"] == D("61.20") - D("18000.00")
    assert (cny["resale_revenue"], cny["commission"], cny["contract_cost"]) == (D("21.00"), D("3.15"), D("0.00"))
    assert usd["resold_card_seconds"] == DAY and cny["resold_card_seconds"] == 3600
    assert result.totals["USD"]["resale_revenue"] == D("72.00")
    assert result.totals["USD"]["contract_cost"] == D("18000.00")
    assert {row["organization"] for row in result.resale} == {world.broker.pk}
    out = StringIO()
    with time_machine.travel(world.after, tick=False):
        call_command("reconcile", MONTH, "--no-stripe-api", stdout=out)
    assert (
        f"resale of organisation {world.broker.pk} (USD): revenue 72.00, commission 10.80, net 61.20, "
        "contract cost 18000.00, margin -17938.80"
    ) in out.getvalue()


def test_a_resold_record_paid_to_the_server_owner_is_named(world):
    record = _resold(world).filter(currency="USD").first()
    UsageRecord.objects.filter(pk=record.pk).update(provider=world.providers[0])
    kinds, _ = _kinds(world)
    assert kinds["resale_provider"] == [record.pk]
    assert "statement_gross" in kinds  # the broker's and the owner's statements no longer match their usage


def test_a_resold_record_outside_its_contract_is_named(world):
    record = _resold(world).filter(currency="CNY").first()
    UsageRecord.objects.filter(pk=record.pk).update(
        start=world.period.start - timedelta(hours=1), end=world.period.start - timedelta(minutes=1)
    )
    kinds, _ = _kinds(world)
    assert kinds["resale_unbacked"] == [record.pk]


def test_a_resold_second_whose_contract_was_not_billed_is_named(world):
    record = _resold(world).filter(currency="CNY").first()
    backing = UsageRecord.objects.get(allocation=record.allocation.backing, slot_start=record.slot_start)
    UsageRecord.objects.filter(pk=backing.pk).update(unit_price=D("1.00"))
    kinds, _ = _kinds(world)
    assert kinds["resale_contract_unbilled"] == [record.pk]


def test_a_resold_second_billed_to_another_organisation_is_named(world):
    record = _resold(world).filter(currency="USD").last()
    backing = UsageRecord.objects.get(allocation=record.allocation.backing, slot_start=record.slot_start)
    UsageRecord.objects.filter(pk=backing.pk).update(organization=world.renters[0])
    kinds, _ = _kinds(world)
    assert kinds["resale_contract_unbilled"] == [record.pk]


def test_a_resold_second_without_its_contract_record_is_named(world):
    record = _resold(world).filter(currency="CNY").first()
    UsageRecord.objects.filter(allocation=record.allocation.backing, slot_start=record.slot_start).delete()
    kinds, _ = _kinds(world)
    assert kinds["resale_contract_unbilled"] == [record.pk]


def test_the_staff_page_shows_the_resale_per_reseller(world):
    client = Client()
    client.force_login(UserFactory(is_staff=True))
    with time_machine.travel(world.after, tick=False):
        english = client.get(f"/staff/reconciliation/?period={MONTH}").content.decode()
        chinese = client.get(f"/staff/reconciliation/?period={MONTH}", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert 'id="resellers"' in english and "Broker Ltd" in english and "Resale revenue" in english
    assert "72.00" in english and "24.00" in english  # 24 card-hours resold in USD
    body = chinese.content.decode()
    assert "转售收入" in body and "所转售合约的成本" in body
