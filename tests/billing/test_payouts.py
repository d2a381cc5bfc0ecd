"""Provider payouts: Stripe Connect transfers (against tests/billing/fake_connect.py over real HTTP), bank
settlements recorded by staff, one payout per statement, and the payouts API."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from accounts.errors import NotAllowed
from billing import payouts
from billing.models import Payout, ProviderStatement
from tests.billing import fake_connect
from tests.billing.fake_connect import FakeConnect
from tests.conftest import Persona
from tests.factories import PayoutFactory, ProviderStatementFactory, ProviderTermsFactory

SECRET_KEY = "sk_test_suanli_connect"


@pytest.fixture(scope="module")
def connect_server() -> Iterator[FakeConnect]:
    with fake_connect.running() as server:
        yield server


@pytest.fixture
def connect(connect_server: FakeConnect, settings) -> FakeConnect:
    """Stripe settings pointing at the fake Connect, emptied for this test."""
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_API_BASE = connect_server.url
    connect_server.reset()
    return connect_server


def statement_of(
    org, *, gross: str = "1000.00", commission: str = "150.00", credits: str = "0", period: str = "2026-03", **fields
) -> ProviderStatement:
    net = Decimal(gross) - Decimal(commission) - Decimal(credits)
    return ProviderStatementFactory(
        organization=org,
        period=period,
        currency=fields.pop("currency", "USD"),
        gross=Decimal(gross),
        take_rate=Decimal("0.15"),
        commission=Decimal(commission),
        credits=Decimal(credits),
        net=net,
        **fields,
    )


def with_stripe_account(persona: Persona, account: str = "acct_1BobIdc") -> str:
    ProviderTermsFactory(organization=persona.org, stripe_account=account)
    return account


def pay(persona: Persona, statement: ProviderStatement, body: dict | None = None):
    return persona.api.post(reverse("payout-pay", args=[statement.pk]), body or {}, format="json")


# --- Stripe Connect transfers ----------------------------------------------------------------------------


def test_paying_a_statement_sends_one_connect_transfer_of_its_net_and_marks_it_paid(bob, staff, connect):
    account = with_stripe_account(bob)
    statement = statement_of(bob.org)

    response = pay(staff, statement)

    assert response.status_code == 200, response.content
    [sent] = connect.posts()
    assert sent.params["amount"] == "85000"  # 850.00 USD in cents
    assert sent.params["currency"] == "usd"
    assert sent.params["destination"] == account
    assert sent.params["metadata[statement_id]"] == str(statement.pk)
    assert sent.params["metadata[period]"] == "2026-03"
    assert sent.idempotency_key == f"suanli-statement-{statement.pk}-payout-1"
    [transfer] = connect.transfers.values()
    payout = Payout.objects.get(statement=statement)
    assert (payout.method, payout.state, payout.reference) == ("stripe_transfer", "paid", transfer["id"])
    assert (payout.amount, payout.currency, payout.recorded_by) == (Decimal("850.00"), "USD", staff.user)
    statement.refresh_from_db()
    assert statement.state == "paid"
    body = response.json()
    assert body["state"] == "paid" and body["net"] == "850.00"
    assert body["payouts"] == [
        {
            "id": payout.pk,
            "method": "stripe_transfer",
            "amount": "850.00",
            "currency": "USD",
            "state": "paid",
            "reference": transfer["id"],
            "failure_message": "",
            "created_at": body["payouts"][0]["created_at"],
            "paid_at": body["payouts"][0]["paid_at"],
        }
    ]


def test_a_retry_after_a_crash_before_our_commit_gets_the_same_transfer(bob, staff, connect):
    with_stripe_account(bob)
    statement = statement_of(bob.org, currency="CNY")

    class Crash(Exception):
        pass

    with pytest.raises(Crash), transaction.atomic():
        lost = payouts.payout_send(statement=statement, by=staff.user)
        raise Crash  # the process died after Stripe answered, before our commit
    assert not Payout.objects.exists()
    statement.refresh_from_db()
    assert statement.state == "open"

    kept = payouts.payout_send(statement=statement, by=staff.user)

    assert kept.reference == lost.reference
    assert len(connect.transfers) == 1
    keys = {sent.idempotency_key for sent in connect.posts()}
    assert len(connect.posts()) == 2 and keys == {f"suanli-statement-{statement.pk}-payout-1"}
    assert connect.transfers[kept.reference]["currency"] == "cny"


def test_an_answer_lost_on_the_way_back_is_retried_under_the_same_key_and_makes_one_transfer(bob, staff, connect):
    with_stripe_account(bob)
    statement = statement_of(bob.org)
    connect.fail_after_create = 1  # Stripe made the transfer, but we got a 500

    payout = payouts.payout_send(statement=statement, by=staff.user)

    assert len(connect.posts()) == 2
    assert list(connect.transfers) == [payout.reference]
    assert payout.state == "paid"


def test_paying_twice_is_refused_and_the_database_allows_one_live_payout(bob, staff, connect):
    with_stripe_account(bob)
    statement = statement_of(bob.org)
    assert pay(staff, statement).status_code == 200

    again = pay(staff, statement)
    by_bank = pay(staff, statement, {"bank_reference": "CMB-2026-0001"})

    for response in (again, by_bank):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "invalid_state"
        assert "already paid" in response.json()["error"]["message"]
    assert len(connect.transfers) == 1 and Payout.objects.count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        PayoutFactory(
            statement=statement, organization=bob.org, method="bank", amount=statement.net, currency="USD", state="paid"
        )


def test_a_transfer_stripe_refuses_is_recorded_as_failed_and_the_next_attempt_uses_a_new_key(bob, staff, connect):
    account = with_stripe_account(bob)
    statement = statement_of(bob.org)
    connect.refuse.add(account)

    refused = pay(staff, statement)

    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "payout_failed"
    assert "capabilities" in refused.json()["error"]["message"]
    failed = Payout.objects.get(statement=statement)
    assert failed.state == "failed" and "capabilities" in failed.failure_message
    statement.refresh_from_db()
    assert statement.state == "open"

    connect.refuse.clear()
    paid = pay(staff, statement)

    assert paid.status_code == 200
    assert [p["state"] for p in paid.json()["payouts"]] == ["failed", "paid"]
    assert connect.posts()[-1].idempotency_key == f"suanli-statement-{statement.pk}-payout-2"
    assert len(connect.transfers) == 1


def test_stripe_out_of_reach_is_a_502_and_records_nothing(bob, staff, connect, settings):
    with_stripe_account(bob)
    statement = statement_of(bob.org)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there

    response = pay(staff, statement)

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "payment_provider_error"
    assert not Payout.objects.exists()


def test_without_a_stripe_key_a_transfer_says_payments_are_not_configured(bob, staff, settings):
    settings.STRIPE_SECRET_KEY = ""
    with_stripe_account(bob)

    response = pay(staff, statement_of(bob.org))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "payments_not_configured"


# --- bank settlements ------------------------------------------------------------------------------------


def test_a_provider_without_a_connect_account_is_refused_a_transfer_and_staff_record_the_bank_settlement(
    bob, staff, connect
):
    statement = statement_of(bob.org, gross="200.00", commission="30.00", credits="12.50")

    refused = pay(staff, statement)

    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "bank_settlement_required" and "bank" in error["message"]
    assert connect.posts() == []

    recorded = pay(staff, statement, {"bank_reference": "  ICBC 6222-0001 2026-04-03 "})

    assert recorded.status_code == 200, recorded.content
    payout = Payout.objects.get(statement=statement)
    assert (payout.method, payout.state, payout.reference) == ("bank", "paid", "ICBC 6222-0001 2026-04-03")
    assert (payout.amount, payout.recorded_by) == (Decimal("157.50"), staff.user)
    assert payout.paid_at is not None
    assert recorded.json()["state"] == "paid"


def test_a_bank_settlement_needs_a_reference(bob, staff):
    statement = statement_of(bob.org)

    response = pay(staff, statement, {"bank_reference": "   "})

    assert response.status_code == 400
    assert "bank_reference" in response.json()["error"]["fields"]
    assert not Payout.objects.exists()


@pytest.mark.parametrize(("commission", "credits"), [("150.00", "850.00"), ("150.00", "900.00")])
def test_a_statement_with_nothing_to_pay_is_not_paid_out(bob, staff, connect, commission, credits):
    with_stripe_account(bob)
    statement = statement_of(bob.org, commission=commission, credits=credits)  # net 0, or -50 after charge-backs

    for body in ({}, {"bank_reference": "CMB-1"}):
        response = pay(staff, statement, body)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "nothing_to_pay"
    assert not Payout.objects.exists() and connect.posts() == []


# --- who may pay, who may see ----------------------------------------------------------------------------


def test_only_staff_pay_a_statement_and_another_tenant_cannot_even_find_it(bob, charlie, connect):
    with_stripe_account(bob)
    statement = statement_of(bob.org)

    own = pay(bob, statement, {"bank_reference": "self-paid"})
    foreign = pay(charlie, statement, {"bank_reference": "x"})

    assert own.status_code == 403 and own.json()["error"]["code"] == "forbidden"
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"
    assert not Payout.objects.exists() and connect.posts() == []
    with pytest.raises(NotAllowed):
        payouts.payout_record_bank(statement=statement, reference="x", by=bob.user)


def test_a_provider_sees_its_own_statements_and_payouts_only(bob, charlie, staff):
    march = statement_of(bob.org)
    april = statement_of(bob.org, period="2026-04", gross="100.00", commission="15.00")
    payouts.payout_record_bank(statement=march, reference="CMB-7", by=staff.user)
    theirs = statement_of(charlie.org, gross="5.00", commission="0.75")

    listing = bob.api.get(reverse("payout-list")).json()

    assert [s["id"] for s in listing["results"]] == [april.pk, march.pk]
    first = listing["results"][1]
    assert {k: first[k] for k in ("period", "currency", "gross", "commission", "credits", "net", "state")} == {
        "period": "2026-03",
        "currency": "USD",
        "gross": "1000.00",
        "commission": "150.00",
        "credits": "0.00",
        "net": "850.00",
        "state": "paid",
    }
    assert [(p["method"], p["reference"], p["amount"]) for p in first["payouts"]] == [("bank", "CMB-7", "850.00")]
    assert bob.api.get(reverse("payout-list"), {"state": "open"}).json()["count"] == 1
    assert bob.api.get(reverse("payout-detail", args=[march.pk])).json()["net"] == "850.00"
    assert bob.api.get(reverse("payout-detail", args=[theirs.pk])).status_code == 404
    assert charlie.api.get(reverse("payout-detail", args=[march.pk])).status_code == 404
    assert [s["id"] for s in charlie.api.get(reverse("payout-list")).json()["results"]] == [theirs.pk]
    # Staff read any statement by id (to pay it).
    assert staff.api.get(reverse("payout-detail", args=[march.pk])).status_code == 200
