"""Money before compute: admission (402 insufficient_funds with the shortfall, nothing allocated), concurrent
requests against one balance, and the funds job (notice, stop after it, contracts flagged, recovery, spend alerts).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connections

from accounts.errors import DomainError
from billing import funds, ledger, rating
from billing.balances import standing
from billing.funds import InsufficientFunds
from billing.models import BalanceEntry, FundsNotice
from scheduler import services
from scheduler.models import Allocation, Lease, LeaseEvent
from tests.billing import test_balances
from tests.billing.test_balances import MARCH, PRICES, credit, prepaid
from tests.factories import OrganizationFactory, ProviderFactory, online_server
from tests.scheduler.test_concurrency import race
from workloads import services as workload_services
from workloads.agent_channel import desired_state_serve
from workloads.models import Workload

clock, servers = test_balances.clock, test_balances.servers  # the shared fixtures
D = Decimal
MINUTE = timedelta(minutes=1)


def take_off(org, amount: str, now=None) -> None:
    ledger.adjustment_record(org=org, amount=D(f"-{amount}"), currency=org.currency, reason="test", now=now)


def refused(call) -> InsufficientFunds:
    with pytest.raises(InsufficientFunds) as caught:
        call()
    assert caught.value.status_code == 402 and caught.value.code == "insufficient_funds"
    return caught.value


@pytest.fixture
def check(django_capture_on_commit_callbacks):
    """The funds job as beat runs it: its e-mails go when its transaction commits (here, at once)."""

    def run() -> dict[str, int]:
        with django_capture_on_commit_callbacks(execute=True):
            return funds.funds_check()

    return run


# --- admission ---------------------------------------------------------------------------------------------


def test_a_card_hour_lease_needs_an_hour_of_its_cards_and_a_402_allocates_nothing(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "4.99", "W1")

    error = refused(lambda: services.lease_create(org=alice.org, plan="card_hour", gpu_count=2))

    assert error.extra == {"shortfall": "0.01", "needed": "5.00", "currency": "USD"}
    assert (Lease.objects.count(), Allocation.objects.count()) == (0, 0)
    credit(alice.org, "0.01", "W2")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    assert lease.allocations.count() == 2


def test_the_402_over_the_api_carries_the_shortfall(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "1.00", "W1")
    response = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json")
    assert response.status_code == 402, response.content
    error = response.json()["error"]
    assert (error["code"], error["shortfall"], error["needed"], error["currency"]) == (
        "insufficient_funds",
        "1.50",
        "2.50",
        "USD",
    )
    assert Allocation.objects.count() == 0


def test_the_setting_sets_the_minimum_period(clock, alice, servers, settings):
    settings.SUANLI_ADMISSION_MINIMUM_SECONDS = 4 * 3600
    prepaid(alice.org)
    credit(alice.org, "10.00", "W1")
    assert refused(lambda: services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)).extra["needed"] == (
        "20.00"
    )
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)


def test_what_runs_already_is_kept_for_its_own_minimum(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "7.50", "W1")
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)  # burns 5.00 an hour
    error = refused(lambda: services.lease_create(org=alice.org, plan="card_hour", gpu_count=2))
    assert (error.extra["needed"], error.extra["shortfall"]) == ("5.00", "2.50")
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    assert Allocation.objects.count() == 3


def test_a_short_lease_needs_only_its_own_length(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "1.25", "W1")
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=1, end_at=MARCH + timedelta(minutes=30))


def test_a_reservation_needs_its_first_hour(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "4.99", "W1")
    start = MARCH + timedelta(days=3)
    error = refused(
        lambda: services.lease_create(
            org=alice.org, plan="card_hour", gpu_count=2, start_at=start, end_at=start + timedelta(hours=5)
        )
    )
    assert error.extra["needed"] == "5.00"
    credit(alice.org, "0.01", "W2")
    lease = services.lease_create(
        org=alice.org, plan="card_hour", gpu_count=2, start_at=start, end_at=start + timedelta(hours=5)
    )
    assert lease.state == "scheduled"


def test_a_server_month_needs_its_first_month(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "11999.99", "W1")
    end = MARCH + timedelta(days=60)
    error = refused(lambda: services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=end))
    assert (error.extra["needed"], error.extra["shortfall"]) == ("12000.00", "0.01")
    assert Allocation.objects.count() == 0
    credit(alice.org, "0.01", "W2")
    services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=end)


def test_a_server_month_starting_mid_month_needs_the_rest_of_that_month(clock, alice, servers):
    prepaid(alice.org)
    clock.move_to(MARCH + timedelta(days=16))  # 15 of March's 31 days left
    error = refused(
        lambda: services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=MARCH + timedelta(days=60))
    )
    expected = rating.estimate(
        plan="server_month",
        unit_price=D("12000"),
        units=D(1),
        start=MARCH + timedelta(days=16),
        end=rating.month_bounds(MARCH)[1],
    ).amount
    assert D(error.extra["needed"]) == expected == D("5806.45")


def test_a_pflops_year_needs_its_first_month(clock, alice, charlie, servers):
    end = MARCH + timedelta(days=90)
    model = services.lease_create(org=charlie.org, plan="pflops_year", pflops=D("5"), end_at=end)  # postpaid
    rate = sum((a.unit_price * a.units for a in model.allocations.all()), D(0))
    services.lease_end(lease=model)
    expected = rating.estimate(
        plan="pflops_year", unit_price=rate, units=D(1), start=MARCH, end=rating.month_bounds(MARCH)[1]
    ).amount
    assert expected > 0
    prepaid(alice.org)
    credit(alice.org, str(expected - D("0.01")), "W1")
    error = refused(lambda: services.lease_create(org=alice.org, plan="pflops_year", pflops=D("5"), end_at=end))
    assert (D(error.extra["needed"]), error.extra["shortfall"]) == (expected, "0.01")
    credit(alice.org, "0.01", "W2")
    services.lease_create(org=alice.org, plan="pflops_year", pflops=D("5"), end_at=end)


def test_growing_a_lease_is_admitted_like_a_new_one_and_a_402_keeps_what_it_had(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "5.00", "W1")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    services.lease_resize(lease=lease, gpu_count=2)  # 2.50 running + 2.50 more = 5.00
    error = refused(lambda: services.lease_resize(lease=lease, gpu_count=3))
    assert (error.extra["needed"], error.extra["shortfall"]) == ("2.50", "2.50")
    lease.refresh_from_db()
    assert lease.gpu_count == 2
    assert Allocation.objects.filter(lease=lease).count() == 2
    services.lease_resize(lease=lease, gpu_count=1)  # shrinking is never refused


def test_a_monthly_cap_refuses_what_would_pass_it(clock, alice, servers):
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=None, currency="USD")
    funds.spend_limit_set(org=alice.org, monthly_cap=D("12.00"))
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)  # 5.00 for its first hour
    error = refused(lambda: services.lease_create(org=alice.org, plan="card_hour", gpu_count=3))
    assert error.extra == {"shortfall": "0.50", "needed": "7.50", "currency": "USD", "limit": "monthly_cap"}
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)


def test_postpaid_without_a_limit_is_never_refused_or_stopped(check, clock, alice, servers):
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=None, currency="USD")
    take_off(alice.org, "1000.00")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=16)
    for hours in (1, 5, 50):
        clock.move_to(MARCH + timedelta(hours=hours))
        check()
    lease.refresh_from_db()
    assert lease.state == "active"
    assert not FundsNotice.objects.exists() and mail.outbox == []


def test_the_default_mode_is_prepaid_without_credit(clock, alice, servers, settings):
    settings.SUANLI_DEFAULT_PAYMENT_MODE = "prepaid"
    refused(lambda: services.lease_create(org=alice.org, plan="card_hour", gpu_count=1))
    assert standing(alice.org).available == 0


# --- racing requests ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fifty_racing_requests_against_a_balance_for_ten_grant_exactly_ten():
    provider = ProviderFactory()
    for index in range(3):  # 24 cards: capacity is not what limits
        online_server(organization=provider, offer=PRICES, name=f"race-{index}")
    customer = OrganizationFactory()
    prepaid(customer)
    credit(customer, "25.00", "RACE")  # ten hours of a card at 2.50, or one hour of ten cards

    outcomes = race(50, lambda i: services.lease_create(org=customer, plan="card_hour", gpu_count=1))

    connections["default"].close()
    assert outcomes == Counter({"granted": 10, "insufficient_funds": 40})
    assert Lease.objects.count() == Allocation.objects.count() == 10
    assert standing(customer).burn_per_hour == D("25.00")


@pytest.mark.django_db(transaction=True)
def test_racing_requests_never_grant_more_than_the_balance_when_capacity_is_short():
    provider = ProviderFactory()
    online_server(organization=provider, offer=PRICES, name="race-small", gpus=6)
    customer = OrganizationFactory()
    prepaid(customer)
    credit(customer, "25.00", "RACE")

    outcomes = race(50, lambda i: services.lease_create(org=customer, plan="card_hour", gpu_count=1))

    assert outcomes["granted"] == 6
    assert set(outcomes) <= {"granted", "insufficient_funds", "no_capacity"}
    assert Lease.objects.count() == Allocation.objects.count() == 6


# --- the funds job -----------------------------------------------------------------------------------------


def test_a_notice_then_a_stop_at_zero_once_the_notice_is_old_enough(check, clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "10.00", "W1")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)  # 5.00 an hour: out at 2 h

    clock.move_to(MARCH + 59 * MINUTE)
    assert check()["notified"] == 0
    clock.move_to(MARCH + 61 * MINUTE)
    assert check()["notified"] == 1
    notice = FundsNotice.objects.get(organization=alice.org, kind="low")
    assert (notice.created_at, notice.resolved_at) == (MARCH + 61 * MINUTE, None)
    # Out at 2 h, give or take what rounding the spending to the cent moves (a cent is 7.2 s at 5.00 an hour).
    assert abs(notice.runs_out_at - (MARCH + timedelta(hours=2))) < timedelta(seconds=8)
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"] and "running out" in mail.outbox[0].subject
    for minutes in range(62, 121):  # at zero from minute 120, but the notice is only 59 minutes old
        clock.move_to(MARCH + minutes * MINUTE)
        assert check() == {"notified": 0, "stopped": 0, "recovered": 0, "alerts": 0, "volume_reminders": 0}
    lease.refresh_from_db()
    assert lease.state == "active" and len(mail.outbox) == 1

    clock.move_to(MARCH + 121 * MINUTE)
    assert check()["stopped"] == 1

    lease.refresh_from_db()
    assert (lease.state, lease.end_reason, lease.ended_at) == ("ended", "funds_exhausted", MARCH + 121 * MINUTE)
    event = LeaseEvent.objects.filter(lease=lease).order_by("-id").first()
    assert (event.kind, event.data["reason"]) == ("ended", "funds_exhausted")
    assert Lease.objects.filter(pk=lease.pk).exists()  # never deleted
    stopped = FundsNotice.objects.get(organization=alice.org, kind="stopped")
    assert stopped.contracts_on_credit == 0
    notice.refresh_from_db()
    assert notice.resolved_at == MARCH + 121 * MINUTE
    assert len(mail.outbox) == 2 and "stopped" in mail.outbox[1].subject
    # What ran is billed: 121 minutes of 2 cards.
    assert standing(alice.org).month_to_date == rating.to_money(D(121) / 60 * 5)
    clock.move_to(MARCH + 130 * MINUTE)
    assert check() == {"notified": 0, "stopped": 0, "recovered": 0, "alerts": 0, "volume_reminders": 0}
    assert len(mail.outbox) == 2


def test_a_stopped_leases_workload_leaves_its_servers_desired_state(check, clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "2.50", "W1")
    lease = workload_services.lease_create(
        org=alice.org,
        user=alice.user,
        plan="card_hour",
        gpu_count=1,
        workload={"image": "ghcr.io/acme/trainer:1.0@sha256:" + "a" * 64},
    )
    workload = Workload.objects.get(lease=lease)
    Workload.objects.filter(pk=workload.pk).update(state="running", started_at=MARCH)  # as the agent reports
    assert [w["lease"] for w in desired_state_serve(server=workload.server)["workloads"]] == [lease.pk]

    clock.move_to(MARCH + 30 * MINUTE)
    check()
    clock.move_to(MARCH + 90 * MINUTE)
    assert check()["stopped"] == 1

    lease.refresh_from_db()
    assert (lease.state, lease.end_reason) == ("ended", "funds_exhausted")
    assert desired_state_serve(server=workload.server)["workloads"] == []


def test_contracts_run_on_credit_and_are_flagged_while_card_hours_stop(check, clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "13000.00", "W1")
    contract = services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=MARCH + timedelta(days=60))
    hours = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    take_off(alice.org, "12990.00")  # 10.00 left before what ran
    check()
    assert FundsNotice.objects.filter(kind="low").count() == 1
    clock.move_to(MARCH + 2 * timedelta(hours=1))
    assert check()["stopped"] == 1

    hours.refresh_from_db()
    contract.refresh_from_db()
    assert (hours.state, contract.state) == ("ended", "active")
    assert FundsNotice.objects.get(kind="stopped").contracts_on_credit == 1


def test_a_top_up_resolves_the_notice(check, clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "5.00", "W1")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    assert check()["notified"] == 1
    clock.move_to(MARCH + 30 * MINUTE)
    credit(alice.org, "100.00", "W2")
    assert check()["recovered"] == 1
    assert FundsNotice.objects.get(kind="low").resolved_at == MARCH + 30 * MINUTE
    clock.move_to(MARCH + 5 * timedelta(hours=1))
    check()
    lease.refresh_from_db()
    assert lease.state == "active"
    # Running low again is a new notice, mailed again.
    clock.move_to(MARCH + 20 * timedelta(hours=1) + 30 * MINUTE)
    assert check()["notified"] == 1
    assert FundsNotice.objects.filter(kind="low").count() == 2
    assert len(mail.outbox) == 2


def test_spend_alerts_at_half_and_ninety_percent_once_each_per_month(check, clock, alice, servers):
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=None, currency="USD")
    funds.spend_limit_set(org=alice.org, monthly_cap=D("100.00"))
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=4, end_at=MARCH + timedelta(hours=40))

    sent = []
    for minutes in range(0, 12 * 60, 15):  # 10.00 an hour
        clock.move_to(MARCH + minutes * MINUTE)
        sent.append((minutes, check()["alerts"]))
    assert [m for m, n in sent if n] == [5 * 60, 9 * 60]
    alerts = FundsNotice.objects.filter(kind="cap_alert").order_by("threshold")
    assert [(a.period, a.threshold) for a in alerts] == [("2026-03", D("0.5")), ("2026-03", D("0.9"))]
    assert [m.subject for m in mail.outbox] == [
        "[Suanli] Suanli spend alert: 50 % of your monthly cap",
        "[Suanli] Suanli spend alert: 90 % of your monthly cap",
    ]


def test_spend_alerts_come_again_next_month(check, clock, alice, servers):
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=None, currency="USD")
    funds.spend_limit_set(org=alice.org, monthly_cap=D("100.00"), alert_at=["0.5"])
    end = rating.month_bounds(MARCH)[1]
    clock.move_to(end - timedelta(hours=10))
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=4)
    clock.move_to(end - MINUTE)
    assert check()["alerts"] == 1
    clock.move_to(end + timedelta(hours=5))
    assert check()["alerts"] == 1
    assert list(FundsNotice.objects.filter(kind="cap_alert").values_list("period", flat=True).order_by("period")) == [
        "2026-03",
        "2026-04",
    ]


def test_funds_check_twice_at_the_same_minute_changes_nothing_more(check, clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "2.50", "W1")
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    clock.move_to(MARCH + 2 * timedelta(hours=1))
    first = check()
    second = check()
    assert first["notified"] == 1 and second == {
        "notified": 0,
        "stopped": 0,
        "recovered": 0,
        "alerts": 0,
        "volume_reminders": 0,
    }
    assert BalanceEntry.objects.count() == 1


def test_bad_spend_limits_are_a_400(alice):
    for cap, shares in (("-1", None), ("10", []), ("10", ["0"]), ("10", ["1.5"]), ("10", ["x"])):
        with pytest.raises(DomainError):
            funds.spend_limit_set(org=alice.org, monthly_cap=cap, alert_at=shares)


def test_an_organisation_on_credit_is_told_once_not_every_hour_until_it_recovers(check, clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "13000.00", "W1")
    services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=MARCH + timedelta(days=60))
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    take_off(alice.org, "12990.00")
    for minutes in range(0, 6 * 60, 5):
        clock.move_to(MARCH + minutes * MINUTE)
        check()
    # One notice, one stop; the contract runs on credit and nobody is mailed again while nothing changes.
    assert sorted(FundsNotice.objects.values_list("kind", flat=True)) == ["low", "stopped"]
    assert len(mail.outbox) == 2

    credit(alice.org, "20000.00", "W2")
    assert check()["recovered"] == 1
    assert not FundsNotice.objects.filter(resolved_at__isnull=True).exists()
    # Out again later: told again.
    take_off(alice.org, "20000.00")
    assert check()["notified"] == 1
    assert len(mail.outbox) == 3


def test_reservations_each_keep_their_first_hour_of_the_balance(clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "7.50", "W1")

    def reserve(cards: int, days: int = 3) -> Lease:
        at = MARCH + timedelta(days=days)
        return services.lease_create(
            org=alice.org, plan="card_hour", gpu_count=cards, start_at=at, end_at=at + timedelta(hours=5)
        )

    reserve(2)  # keeps 5.00
    error = refused(lambda: reserve(2, days=4))
    assert (error.extra["needed"], error.extra["shortfall"]) == ("5.00", "2.50")
    error = refused(lambda: services.lease_create(org=alice.org, plan="card_hour", gpu_count=2))
    assert error.extra["shortfall"] == "2.50"
    reserve(1, days=4)
    assert Lease.objects.filter(state="scheduled").count() == 2


def test_money_gone_at_once_still_gets_the_whole_notice_before_a_stop(check, clock, alice, servers):
    prepaid(alice.org)
    credit(alice.org, "100.00", "W1")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    clock.move_to(MARCH + 10 * MINUTE)
    take_off(alice.org, "100.00")  # a refund, say: below zero at once
    assert check()["notified"] == 1
    for minutes in range(15, 70, 5):
        clock.move_to(MARCH + minutes * MINUTE)
        assert check()["stopped"] == 0
    lease.refresh_from_db()
    assert lease.state == "active"
    clock.move_to(MARCH + 70 * MINUTE)
    assert check()["stopped"] == 1
