"""The balance: its ledger (immutable, one entry per cause), what `standing` reports, and close_period settling a
prepaid organisation's invoice from it (a credit note on a settled invoice goes back to it).

The helpers at the top are shared by the other balance tests (test_funds, test_topups, test_balance_properties).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import DatabaseError, connection, transaction

from accounts.errors import Conflict, InvalidInput
from accounts.models import Organization
from billing import invoicing, ledger, metering
from billing.balances import standing
from billing.models import BalanceEntry, Invoice
from scheduler import services
from tests.factories import InvoiceFactory, online_server

D = Decimal
MARCH = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 2026-03-01 00:00 on the platform clock (Asia/Shanghai)
APRIL = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
PRICES = {"card_hour_price": D("2.5000"), "server_month_price": D("12000.0000"), "pflops_year_price": D("150000")}


def prepaid(org: Organization, credit_limit: str = "0") -> None:
    ledger.terms_set(org=org, mode="prepaid", credit_limit=D(credit_limit), currency=org.currency)


def credit(org: Organization, amount: str, reference: str, now: datetime | None = None) -> BalanceEntry:
    """A bank transfer of `amount` received for `org`."""
    entry, _ = ledger.adjustment_record(org=org, amount=D(amount), currency=org.currency, reference=reference, now=now)
    return entry


def ledger_sum(org: Organization) -> Decimal:
    """The balance from the raw rows."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(amount), 0) FROM billing_balanceentry WHERE organization_id = %s", [org.pk])
        return cursor.fetchone()[0]


@pytest.fixture
def clock():
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


@pytest.fixture
def servers(clock, bob):
    """Bob's two 8-card servers at 2.50 a card-hour and 12000 a server-month."""
    return [online_server(organization=bob.org, offer=PRICES, name=f"bal-{i}") for i in range(2)]


# --- the ledger --------------------------------------------------------------------------------------------


def test_the_ledger_refuses_update_and_delete(alice):
    entry = credit(alice.org, "10.00", "WIRE-1")
    for sql in (
        "UPDATE billing_balanceentry SET amount = 1000 WHERE id = %s",
        "DELETE FROM billing_balanceentry WHERE id = %s",
    ):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [entry.pk])
    with pytest.raises(DatabaseError), transaction.atomic():
        BalanceEntry.objects.filter(pk=entry.pk).update(amount=D("1000.00"))
    assert BalanceEntry.objects.get(pk=entry.pk).amount == D("10.00")


def test_a_bank_reference_is_recorded_once_and_another_amount_for_it_is_a_conflict(alice):
    first, created = ledger.adjustment_record(org=alice.org, amount="500.00", currency="USD", reference="WIRE-7")
    again, created_again = ledger.adjustment_record(org=alice.org, amount="500.00", currency="USD", reference="WIRE-7")
    assert (created, created_again, again.pk) == (True, False, first.pk)
    with pytest.raises(Conflict) as refused:
        ledger.adjustment_record(org=alice.org, amount="400.00", currency="USD", reference="WIRE-7")
    assert refused.value.code == "duplicate_reference"
    assert ledger_sum(alice.org) == D("500.00")


@pytest.mark.parametrize(
    ("amount", "currency", "reason", "field"),
    [
        ("0", "USD", "x", "amount"),
        ("1.001", "USD", "x", "amount"),
        ("-5", "USD", "", "reason"),
        ("5", "EUR", "x", "currency"),
        ("NaN", "USD", "x", "amount"),
    ],
)
def test_a_bad_adjustment_is_a_400_naming_its_field(alice, amount, currency, reason, field):
    with pytest.raises(InvalidInput) as refused:
        ledger.adjustment_record(org=alice.org, amount=amount, currency=currency, reason=reason)
    assert field in refused.value.fields
    assert ledger_sum(alice.org) == 0


def test_prepaid_terms_need_an_amount_as_credit_limit(alice):
    with pytest.raises(InvalidInput):
        ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=None, currency="USD")
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=None, currency="USD")
    assert standing(alice.org).available is None


# --- standing ----------------------------------------------------------------------------------------------


def test_available_is_paid_in_plus_limit_less_what_ran(clock, alice, servers):
    prepaid(alice.org, credit_limit="20.00")
    credit(alice.org, "100.00", "WIRE-1")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    clock.shift(timedelta(minutes=90))

    money = standing(alice.org)

    # 2 cards x 1.5 h x 2.50 = 7.50, not metered yet; the next hour at 2 x 2.50.
    assert (money.balance, money.month_to_date, money.available) == (D("100.00"), D("7.50"), D("112.50"))
    assert money.burn_per_lease == {lease.pk: D("5.00")}
    assert money.runs_out_at == MARCH + timedelta(minutes=90) + timedelta(hours=float(D("112.50") / 5))
    metering.meter(until=MARCH + timedelta(minutes=90))
    assert standing(alice.org).available == D("112.50")  # metered or not, the same


# --- close_period ------------------------------------------------------------------------------------------


@pytest.fixture
def march_usage(clock, alice, servers, settings):
    """Alice (prepaid) runs 3 cards for 10 h on March 10th and 1 card all of March 20th: 75.00 + 60.00, and 6 %
    tax: 143.10 for March."""
    settings.SUANLI_TAX_RATE = D("0.06")
    prepaid(alice.org)
    credit(alice.org, "500.00", "WIRE-0")
    clock.move_to(MARCH + timedelta(days=9))
    first = services.lease_create(org=alice.org, plan="card_hour", gpu_count=3)
    clock.shift(timedelta(hours=10))
    services.lease_end(lease=first)
    clock.move_to(MARCH + timedelta(days=19))
    second = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    clock.shift(timedelta(hours=24))
    services.lease_end(lease=second)
    return D("143.10")


def test_month_to_date_before_the_close_is_the_invoice_total_after_it(clock, alice, march_usage):
    clock.move_to(APRIL - timedelta(minutes=1))
    before = standing(alice.org)
    assert before.month_to_date == march_usage
    clock.move_to(APRIL + timedelta(hours=2))
    invoicing.close_period("2026-03")

    invoice = Invoice.objects.get(organization=alice.org, period="2026-03")
    assert invoice.total == before.month_to_date
    assert (invoice.state, invoice.paid_at) == ("paid", APRIL + timedelta(hours=2))
    settlement = BalanceEntry.objects.get(organization=alice.org, kind="settlement")
    assert (settlement.amount, settlement.invoice_id, settlement.key) == (
        -march_usage,
        invoice.pk,
        f"settlement:invoice:{invoice.pk}",
    )
    after = standing(alice.org)
    assert after.balance == D("500.00") - march_usage
    assert after.available == before.available  # settled: the money moved from "unbilled" to the ledger
    assert after.unpaid == 0 and after.unbilled == []

    invoicing.close_period("2026-03")  # idempotent: no second settlement
    assert BalanceEntry.objects.filter(kind="settlement").count() == 1


def test_an_invoice_the_balance_cannot_cover_stays_open_until_a_top_up_covers_it(clock, alice, march_usage):
    BalanceEntry.objects.create(
        organization=alice.org, kind="adjustment", amount=D("-450.00"), currency="USD", key="test:-450",
        reason="test", created_at=MARCH,
    )  # fmt: skip
    clock.move_to(APRIL + timedelta(hours=2))
    invoicing.close_period("2026-03")

    invoice = Invoice.objects.get(organization=alice.org, period="2026-03")
    assert invoice.state == "open"
    money = standing(alice.org)
    assert (money.balance, money.unpaid, money.available) == (D("50.00"), march_usage, D("50.00") - march_usage)

    credit(alice.org, "93.09", "WIRE-short")  # a cent short
    invoice.refresh_from_db()
    assert invoice.state == "open"
    credit(alice.org, "0.01", "WIRE-cent")
    invoice.refresh_from_db()
    assert invoice.state == "paid"
    assert ledger_sum(alice.org) == 0
    assert standing(alice.org).available == 0


def test_a_postpaid_organisations_invoice_is_not_settled_from_its_balance(clock, alice, march_usage):
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=D("1000"), currency="USD")
    clock.move_to(APRIL + timedelta(hours=2))
    invoicing.close_period("2026-03")
    assert Invoice.objects.get(organization=alice.org).state == "open"
    assert standing(alice.org).available == D("500.00") + D("1000") - march_usage


def test_a_credit_note_on_a_settled_invoice_goes_back_to_the_balance(clock, alice, march_usage):
    clock.move_to(APRIL + timedelta(hours=2))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get(organization=alice.org)
    before = standing(alice.org).available

    note = invoicing.credit_note_issue(invoice=invoice, amount=D("40.00"), reason="goodwill")

    entry = BalanceEntry.objects.get(kind="credit_note")
    assert (entry.amount, entry.credit_note_id, entry.invoice_id) == (D("40.00"), note.pk, invoice.pk)
    assert standing(alice.org).available == before + D("40.00")
    assert ledger_sum(alice.org) == D("500.00") - march_usage + D("40.00")


def test_a_credit_note_on_an_open_invoice_lowers_what_is_owed_not_the_ledger(clock, alice, march_usage):
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=D("0"), currency="USD")
    clock.move_to(APRIL + timedelta(hours=2))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get(organization=alice.org)
    invoicing.credit_note_issue(invoice=invoice, amount=D("40.00"), reason="goodwill")
    money = standing(alice.org)
    assert money.unpaid == march_usage - D("40.00")
    assert money.balance == D("500.00")
    assert not BalanceEntry.objects.filter(kind="credit_note").exists()


def test_a_credit_note_that_brings_an_open_invoice_within_the_balance_settles_it(clock, alice, march_usage):
    BalanceEntry.objects.create(
        organization=alice.org, kind="adjustment", amount=D("-450.00"), currency="USD", key="test:-450",
        reason="test", created_at=MARCH,
    )  # fmt: skip
    clock.move_to(APRIL + timedelta(hours=2))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get(organization=alice.org)
    assert invoice.state == "open"

    invoicing.credit_note_issue(invoice=invoice, amount=D("100.00"), reason="outage")

    invoice.refresh_from_db()
    assert invoice.state == "paid"  # 43.10 left to pay, and 50.00 on the balance
    assert BalanceEntry.objects.get(kind="settlement").amount == -(march_usage - D("100.00"))
    assert not BalanceEntry.objects.filter(kind="credit_note").exists()  # it lowered what was due instead
    assert ledger_sum(alice.org) == D("50.00") - (march_usage - D("100.00"))
    assert standing(alice.org).available == ledger_sum(alice.org)


def older_open_invoice(org, total: str) -> Invoice:
    return InvoiceFactory(
        organization=org, period="2026-02", number="INV-FEB", state="open", subtotal=D(total), credits=0, tax=0,
        total=D(total), issued_at=MARCH, due_at=MARCH + timedelta(days=14),
    )  # fmt: skip


def test_close_period_settles_the_oldest_open_invoice_first(clock, alice, march_usage):
    february = older_open_invoice(alice.org, "400.00")
    clock.move_to(APRIL + timedelta(hours=2))
    invoicing.close_period("2026-03")

    march = Invoice.objects.get(organization=alice.org, period="2026-03")
    february.refresh_from_db()
    assert (february.state, march.state) == ("paid", "open")  # 500.00 paid February's 400.00; March waits
    assert ledger_sum(alice.org) == D("100.00")

    # A credit note on February goes back to the balance, which then covers March.
    invoicing.credit_note_issue(invoice=february, amount=D("50.00"), reason="goodwill")
    march.refresh_from_db()
    assert march.state == "paid"
    assert ledger_sum(alice.org) == D("150.00") - march_usage


def test_a_close_that_stopped_after_making_the_invoice_settles_it_when_run_again(clock, alice, march_usage):
    clock.move_to(APRIL + timedelta(hours=2))
    metering.meter(until=APRIL)
    invoice = invoicing.invoice_build(
        org_id=alice.org.pk, currency="USD", period=invoicing.period_of("2026-03"), now=APRIL + timedelta(hours=1)
    )  # the close went this far, then stopped
    assert invoice.state == "open"

    invoicing.close_period("2026-03")

    invoice.refresh_from_db()
    assert invoice.state == "paid"
    assert ledger_sum(alice.org) == D("500.00") - march_usage


def test_turning_prepaid_settles_the_open_invoices_the_balance_covers(clock, alice):
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=D("500"), currency="USD")
    credit(alice.org, "450.00", "WIRE-1")
    february = older_open_invoice(alice.org, "400.00")
    february.refresh_from_db()
    assert february.state == "open"  # postpaid: paid like any invoice, not from the balance
    prepaid(alice.org)
    february.refresh_from_db()
    assert february.state == "paid"
    assert (ledger_sum(alice.org), standing(alice.org).available) == (D("50.00"), D("50.00"))


def test_one_organisations_money_never_moves_anothers(clock, alice, charlie, servers):
    prepaid(alice.org)
    prepaid(charlie.org)
    credit(alice.org, "100.00", "WIRE-A")
    credit(charlie.org, "3.00", "WIRE-A")  # the same bank reference, another organisation: its own transfer
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=4)
    clock.shift(timedelta(hours=3))
    assert (standing(alice.org).available, standing(charlie.org).available) == (D("70.00"), D("3.00"))
    assert standing(charlie.org).burn_per_hour == 0
