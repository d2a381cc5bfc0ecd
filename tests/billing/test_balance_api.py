"""The balance API (API.md: Balance and spending) as its users see it: the balance after a bank transfer and while a
lease runs, 402 insufficient_funds for a lease the balance cannot cover, spend limits and a lease refused by the cap,
a top-up's client secret from (fake) Stripe, who may do what, and the 400s for bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from accounts.models import Role
from billing import services
from billing.models import BalanceEntry, BillingTerms, SpendLimit, TopUp
from scheduler.models import Allocation, Lease
from tests.billing.conftest import PUBLISHABLE_KEY
from tests.conftest import make_persona
from tests.factories import online_server

# 2026-03-10 10:00 in Asia/Shanghai, the platform's clock: the day's spending is dated the 10th.
NOW = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
MISSING_ORG = 2**31 - 7


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def terms_url(org_id: int) -> str:
    return f"/api/v1/orgs/{org_id}/billing/"


def adjustments_url(org_id: int) -> str:
    return f"/api/v1/orgs/{org_id}/balance/adjustments/"


def prepaid(staff, org, credit_limit: str = "0.00") -> dict:
    response = staff.api.put(
        terms_url(org.pk), {"mode": "prepaid", "credit_limit": credit_limit, "currency": "USD"}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def pay_in(staff, org, amount: str, **fields) -> dict:
    body = {"amount": amount, "currency": "USD", **fields}
    if "reference" not in fields and "reason" not in fields:
        body["reason"] = "goodwill"
    response = staff.api.post(adjustments_url(org.pk), body, format="json")
    assert response.status_code in (200, 201), response.content
    return response.json()


def balance(persona) -> dict:
    response = persona.api.get("/api/v1/balance/")
    assert response.status_code == 200, response.content
    return response.json()


def rent(persona, gpu_count: int = 1):
    return persona.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": gpu_count}, format="json")


def error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()["error"]
    assert body["code"] == code, body
    return body


# --- the balance -----------------------------------------------------------------------------------------------


def test_a_bank_transfer_staff_record_is_the_balance_once_and_is_in_the_ledger(clock, alice, staff):
    assert prepaid(staff, alice.org) == {
        "organization": alice.org.pk,
        "mode": "prepaid",
        "credit_limit": "0.00",
        "currency": "USD",
    }
    empty = balance(alice)
    assert (empty["mode"], empty["balance"], empty["available"], empty["credit_limit"]) == (
        "prepaid",
        "0.00",
        "0.00",
        "0.00",
    )
    assert empty["runs_out_at"] == "2026-03-10T02:00:00Z"  # nothing available: it has run out now

    first = staff.api.post(
        adjustments_url(alice.org.pk), {"amount": "500.00", "currency": "USD", "reference": "BOC-2026-0042"}
    )
    again = staff.api.post(
        adjustments_url(alice.org.pk), {"amount": "500.00", "currency": "USD", "reference": "BOC-2026-0042"}
    )
    other = staff.api.post(
        adjustments_url(alice.org.pk), {"amount": "50.00", "currency": "USD", "reference": "BOC-2026-0042"}
    )

    assert first.status_code == 201, first.content
    entry = first.json()
    assert (entry["kind"], entry["amount"], entry["currency"], entry["reference"]) == (
        "bank_transfer",
        "500.00",
        "USD",
        "BOC-2026-0042",
    )
    assert again.status_code == 200 and again.json() == entry  # the same transfer, recorded once
    assert "500.00" in error(other, 409, "duplicate_reference")["message"]
    money = balance(alice)
    assert (money["currency"], money["balance"], money["available"], money["month_to_date"]) == (
        "USD",
        "500.00",
        "500.00",
        "0.00",
    )
    assert (money["burn_per_hour"], money["runs_out_at"], money["leases"], money["daily"]) == ("0.00", None, [], [])

    # Taking money off needs a reason; with one, it is an adjustment in the ledger.
    error(staff.api.post(adjustments_url(alice.org.pk), {"amount": "-20.00", "currency": "USD"}), 400, "invalid")
    pay_in(staff, alice.org, "-20.00", reason="Double-counted transfer fee")
    assert balance(alice)["balance"] == "480.00"
    ledger = alice.api.get("/api/v1/balance/entries/").json()
    assert ledger["count"] == 2
    assert [(e["kind"], e["amount"], e["reason"]) for e in ledger["results"]] == [
        ("adjustment", "-20.00", "Double-counted transfer fee"),
        ("bank_transfer", "500.00", ""),
    ]
    assert set(ledger["results"][0]) >= {"kind", "amount", "currency", "reference", "reason", "created_at"}


def test_a_running_lease_shows_in_the_balance_metered_or_not(clock, alice, bob, staff):
    prepaid(staff, alice.org)
    pay_in(staff, alice.org, "100.00", reference="WIRE-1")
    online_server(organization=bob.org, gpus=2)  # 2.50 a card-hour
    created = rent(alice, gpu_count=2)
    assert created.status_code == 201, created.content
    lease = created.json()["id"]

    started = balance(alice)
    assert (started["burn_per_hour"], started["month_to_date"], started["available"]) == ("5.00", "0.00", "100.00")
    assert started["runs_out_at"] == "2026-03-10T22:00:00Z"  # 100.00 at 5.00 an hour: 20 hours
    assert started["leases"] == [
        {"lease": lease, "plan": "card_hour", "state": "active", "month_to_date": "0.00", "burn_per_hour": "5.00"}
    ]

    # An hour and a half later, before the meter has run: the held time counts already.
    clock.move_to(NOW + timedelta(hours=1, minutes=30))
    assert balance(alice)["month_to_date"] == "7.50"

    clock.move_to(NOW + timedelta(hours=3))
    services.meter()
    money = balance(alice)
    assert (money["balance"], money["month_to_date"], money["available"], money["burn_per_hour"]) == (
        "100.00",
        "15.00",
        "85.00",
        "5.00",
    )
    assert money["runs_out_at"] == "2026-03-10T22:00:00Z"  # 85.00 more at 5.00 an hour from 05:00 UTC
    assert money["leases"][0]["month_to_date"] == "15.00"
    assert money["daily"] == [{"date": "2026-03-10", "amount": "15.00"}]

    assert alice.api.post(f"/api/v1/leases/{lease}/end/").status_code == 200
    ended = balance(alice)
    assert (ended["burn_per_hour"], ended["runs_out_at"], ended["month_to_date"]) == ("0.00", None, "15.00")
    assert ended["leases"] == [
        {"lease": lease, "plan": "card_hour", "state": "ended", "month_to_date": "15.00", "burn_per_hour": "0.00"}
    ]


def test_a_prepaid_lease_the_balance_cannot_cover_is_402_and_allocates_nothing(clock, alice, bob, staff):
    prepaid(staff, alice.org)
    pay_in(staff, alice.org, "2.00")
    online_server(organization=bob.org)

    refused = error(rent(alice), 402, "insufficient_funds")

    # The first hour of a 2.50 card is 0.50 more than the 2.00 available.
    assert (refused["shortfall"], refused["needed"], refused["currency"]) == ("0.50", "2.50", "USD")
    assert not Lease.objects.filter(organization=alice.org).exists()
    assert not Allocation.objects.filter(lease__organization=alice.org).exists()
    assert balance(alice)["available"] == "2.00"

    pay_in(staff, alice.org, "0.50", reference="WIRE-2")
    assert rent(alice).status_code == 201


def test_a_credit_limit_lets_a_prepaid_org_spend_below_zero(clock, alice, bob, staff):
    prepaid(staff, alice.org, credit_limit="10.00")
    online_server(organization=bob.org)
    money = balance(alice)
    assert (money["balance"], money["credit_limit"], money["available"]) == ("0.00", "10.00", "10.00")
    assert rent(alice).status_code == 201


# --- spend limits ----------------------------------------------------------------------------------------------


def test_the_spend_limit_is_set_read_and_refuses_a_lease_past_the_cap(clock, alice, bob):
    online_server(organization=bob.org)
    assert alice.api.get("/api/v1/spend-limits/").json() == {
        "monthly_cap": None,
        "currency": "USD",
        "alert_at": [0.5, 0.9],
    }

    put = alice.api.put("/api/v1/spend-limits/", {"monthly_cap": "2.00", "alert_at": [0.8]}, format="json")

    assert put.status_code == 200, put.content
    assert put.json() == {"monthly_cap": "2.00", "currency": "USD", "alert_at": [0.8]}
    assert alice.api.get("/api/v1/spend-limits/").json() == put.json()
    assert balance(alice)["monthly_cap"] == "2.00"
    capped = error(rent(alice), 402, "insufficient_funds")
    assert (capped["limit"], capped["shortfall"], capped["needed"]) == ("monthly_cap", "0.50", "2.50")
    assert not Lease.objects.filter(organization=alice.org).exists()

    # No cap (null); alert shares left out are the site's default.
    lifted = alice.api.put("/api/v1/spend-limits/", {"monthly_cap": None}, format="json")
    assert lifted.json() == {"monthly_cap": None, "currency": "USD", "alert_at": [0.5, 0.9]}
    assert rent(alice).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"monthly_cap": "-1.00"}, "monthly_cap"),
        ({"monthly_cap": "10.001"}, "monthly_cap"),
        ({"monthly_cap": "1e20"}, "monthly_cap"),
        ({"monthly_cap": "NaN"}, "monthly_cap"),
        ({"monthly_cap": "１０"}, "monthly_cap"),
        ({}, "monthly_cap"),
        ({"monthly_cap": "10.00", "alert_at": []}, "alert_at"),
        ({"monthly_cap": "10.00", "alert_at": [0]}, "alert_at"),
        ({"monthly_cap": "10.00", "alert_at": [1.5]}, "alert_at"),
        ({"monthly_cap": "10.00", "alert_at": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}, "alert_at"),
        ({"monthly_cap": "10.00", "alert_at": "0.5"}, "alert_at"),
        ({"monthly_cap": "10.00", "cap": "5"}, "cap"),
    ],
)
def test_a_bad_spend_limit_is_400_and_changes_nothing(alice, body, field):
    response = alice.api.put("/api/v1/spend-limits/", body, format="json")
    assert field in error(response, 400, "invalid")["fields"]
    assert not SpendLimit.objects.filter(organization=alice.org).exists()


# --- top-ups ---------------------------------------------------------------------------------------------------


def test_a_top_up_answers_a_client_secret_to_pay_and_moves_no_money_yet(alice, fake_stripe):
    billing = make_persona(alice.org, role=Role.BILLING, email="billing@alice.example.com")
    headers = {"HTTP_IDEMPOTENCY_KEY": "top-up-1"}

    first = billing.api.post("/api/v1/balance/top-ups/", {"amount": "100.00", "currency": "USD"}, **headers)
    again = billing.api.post("/api/v1/balance/top-ups/", {"amount": "100.00", "currency": "USD"}, **headers)

    assert first.status_code == 201, first.content
    body = first.json()
    assert again.status_code == 201 and again.json() == body  # the retry answers the same intent
    assert body["client_secret"].startswith("pi_") and "_secret_" in body["client_secret"]
    assert (body["publishable_key"], body["amount"], body["currency"]) == (PUBLISHABLE_KEY, "100.00", "USD")
    top_up = TopUp.objects.get(pk=body["top_up"])
    assert top_up.organization == alice.org and top_up.stripe_payment_intent in body["client_secret"]
    intent = fake_stripe.get(f"/v1/payment_intents/{top_up.stripe_payment_intent}")
    assert (intent["amount"], intent["currency"]) == (10000, "usd")
    listed = alice.api.get("/api/v1/balance/top-ups/").json()
    assert [(t["id"], t["amount"], t["state"]) for t in listed["results"]] == [(top_up.pk, "100.00", "pending")]
    assert balance(alice)["balance"] == "0.00"  # until Stripe says it was paid
    assert not BalanceEntry.objects.filter(organization=alice.org).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "100.001", "currency": "USD"}, "amount"),
        ({"amount": "-5.00", "currency": "USD"}, "amount"),
        ({"amount": "0.50", "currency": "USD"}, "amount"),  # under SUANLI_TOP_UP_MIN
        ({"amount": "1000000000000000", "currency": "USD"}, "amount"),
        ({"amount": "lots", "currency": "USD"}, "amount"),
        ({"amount": "100.00", "currency": "EUR"}, "currency"),
        ({"amount": "100.00", "currency": "CNY"}, "currency"),  # not the organisation's
        ({"amount": "100.00"}, "currency"),
        ({"amount": "100.00", "currency": "USD", "method": "alipay"}, "method"),
    ],
)
def test_a_bad_top_up_is_400_and_asks_stripe_nothing(alice, fake_stripe, body, field):
    response = alice.api.post("/api/v1/balance/top-ups/", body, format="json")
    assert field in error(response, 400, "invalid")["fields"]
    assert not TopUp.objects.exists()
    assert not fake_stripe.posts("/v1/payment_intents")


def test_a_top_up_without_stripe_configured_is_503(alice):
    error(
        alice.api.post("/api/v1/balance/top-ups/", {"amount": "10.00", "currency": "USD"}),
        503,
        "payments_not_configured",
    )


# --- who may do what -------------------------------------------------------------------------------------------


def test_any_member_reads_but_only_owner_admin_and_billing_pay_in_or_cap(alice, charlie, staff):
    member = make_persona(alice.org, role=Role.MEMBER, email="member@alice.example.com")
    prepaid(staff, alice.org)
    pay_in(staff, alice.org, "30.00", reference="WIRE-9")

    for path in ("/api/v1/balance/", "/api/v1/balance/entries/", "/api/v1/balance/top-ups/", "/api/v1/spend-limits/"):
        assert member.api.get(path).status_code == 200, path
    assert balance(member)["balance"] == "30.00"
    error(member.api.post("/api/v1/balance/top-ups/", {"amount": "10.00", "currency": "USD"}), 403, "forbidden")
    error(member.api.put("/api/v1/spend-limits/", {"monthly_cap": "5.00"}), 403, "forbidden")
    assert not SpendLimit.objects.exists()

    # Another tenant sees its own money only.
    assert balance(charlie)["balance"] == "0.00"
    assert charlie.api.get("/api/v1/balance/entries/").json()["count"] == 0


def test_terms_and_adjustments_are_staff_only_and_another_tenants_org_answers_like_a_missing_one(alice, charlie, staff):
    body = {"mode": "prepaid", "credit_limit": "1000.00", "currency": "USD"}
    credit = {"amount": "1000.00", "currency": "USD", "reason": "please"}

    def answers(persona, org_id):
        return [
            persona.api.get(terms_url(org_id)),
            persona.api.put(terms_url(org_id), body, format="json"),
            persona.api.post(adjustments_url(org_id), credit, format="json"),
        ]

    # The organisation's own owner is refused; another tenant gets exactly what a missing id gets.
    own = answers(alice, alice.org.pk)
    assert {(r.status_code, r.json()["error"]["code"]) for r in own} == {(403, "forbidden")}
    foreign, missing = answers(charlie, alice.org.pk), answers(charlie, MISSING_ORG)
    assert {(r.status_code, r.content) for r in foreign + missing} == {(404, missing[0].content)}
    assert missing[0].json()["error"]["code"] == "not_found"
    assert not BillingTerms.objects.filter(organization=alice.org).exists()
    assert not BalanceEntry.objects.exists()

    # Staff reach any organisation by id; an unknown one is 404.
    assert staff.api.get(terms_url(alice.org.pk)).json() == {
        "organization": alice.org.pk,
        "mode": "postpaid",  # the test site's default
        "credit_limit": None,
        "currency": "USD",
    }
    error(staff.api.get(terms_url(MISSING_ORG)), 404, "not_found")
    error(staff.api.post(adjustments_url(MISSING_ORG), credit, format="json"), 404, "not_found")
    assert staff.api.put(terms_url(alice.org.pk), body, format="json").json()["credit_limit"] == "1000.00"
    assert staff.api.get(terms_url(alice.org.pk)).json()["mode"] == "prepaid"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "prepaid", "credit_limit": None, "currency": "USD"}, "credit_limit"),
        ({"mode": "prepaid", "credit_limit": "-1.00", "currency": "USD"}, "credit_limit"),
        ({"mode": "prepaid", "credit_limit": "0.001", "currency": "USD"}, "credit_limit"),
        ({"mode": "monthly", "credit_limit": "0.00", "currency": "USD"}, "mode"),
        ({"mode": "postpaid", "credit_limit": None, "currency": "CNY"}, "currency"),
        ({"mode": "postpaid", "currency": "USD"}, "credit_limit"),
        ({"mode": "postpaid", "credit_limit": None, "currency": "USD", "tax": "0"}, "tax"),
    ],
)
def test_bad_terms_are_400(alice, staff, body, field):
    response = staff.api.put(terms_url(alice.org.pk), body, format="json")
    assert field in error(response, 400, "invalid")["fields"]
    assert not BillingTerms.objects.filter(organization=alice.org).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "0.00", "currency": "USD", "reason": "nothing"}, "amount"),
        ({"amount": "10.005", "currency": "USD", "reason": "x"}, "amount"),
        ({"amount": "10000000000000", "currency": "USD", "reason": "x"}, "amount"),
        ({"amount": "10.00", "currency": "USD"}, "reason"),  # neither a reason nor a bank reference
        ({"amount": "10.00", "currency": "CNY", "reason": "x"}, "currency"),
        ({"amount": "10.00", "currency": "USD", "reference": "R" * 81}, "reference"),
        ({"amount": "10.00", "currency": "USD", "reason": "x" * 301}, "reason"),
        ({"amount": "10.00", "currency": "USD", "reason": "x", "kind": "top_up"}, "kind"),
    ],
)
def test_bad_adjustments_are_400(alice, staff, body, field):
    response = staff.api.post(adjustments_url(alice.org.pk), body, format="json")
    assert field in error(response, 400, "invalid")["fields"]
    assert not BalanceEntry.objects.exists()
