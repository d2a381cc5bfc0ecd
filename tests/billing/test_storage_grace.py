"""Running out of money never wipes data at once (issue 16): a stop puts the organisation's volumes into a grace
period (SUANLI_VOLUME_GRACE_DAYS), a top-up releases them, it is told when they enter grace, 3 days and 1 day
before the wipe and when they are wiped (each once), and workloads' wipe job moves them to wiping after wipe_at."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from billing import funds
from billing.balances import standing
from billing.models import FundsNotice, VolumeNotice
from tests.billing.test_balances import MARCH, PRICES, credit, prepaid
from tests.billing.test_storage import make_volume
from tests.factories import online_server
from workloads import volumes as workload_volumes
from workloads.models import Volume

D = Decimal
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
GRACE = timedelta(days=15)


@pytest.fixture
def clock():
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


@pytest.fixture
def server(clock, bob):
    return online_server(organization=bob.org, offer=PRICES, name="gr-1")


@pytest.fixture
def check(django_capture_on_commit_callbacks):
    """The funds job as beat runs it: its e-mails go when its transaction commits (here, at once)."""

    def run() -> dict[str, int]:
        with django_capture_on_commit_callbacks(execute=True):
            return funds.funds_check()

    return run


@pytest.fixture
def wipe_job(django_capture_on_commit_callbacks):
    """Workloads' wipe job (beat `wipe-volumes`), with billing's mail registered on it."""

    def run() -> dict[str, int]:
        with django_capture_on_commit_callbacks(execute=True):
            return workload_volumes.wipe_volumes()

    return run


@pytest.fixture
def broke(clock, alice, server, check):
    """Alice, prepaid with 2.00, keeps two volumes burning 1.00 an hour together (744 hours in March): told at
    1 hour, stopped at 2 hours, when her volumes go into grace."""
    prepaid(alice.org)
    credit(alice.org, "2.00", "W1")
    data = make_volume(alice.org, server, name="data", size_gb=372, price="1.0000")
    logs = make_volume(alice.org, server, name="logs", size_gb=372, price="1.0000")
    clock.move_to(MARCH + HOUR + MINUTE)
    assert check()["notified"] == 1
    assert "volumes are then kept for 15 days" in mail.outbox[-1].body
    clock.move_to(MARCH + 2 * HOUR + 2 * MINUTE)
    check()
    return {"data": data, "logs": logs, "stopped_at": MARCH + 2 * HOUR + 2 * MINUTE}


def states(*volumes: Volume) -> list[tuple[str, object]]:
    return [(v.state, v.wipe_at) for v in Volume.objects.filter(pk__in=[v.pk for v in volumes]).order_by("name")]


def test_a_stop_puts_volumes_into_grace_and_says_when_they_are_wiped(broke, alice):
    wipe_at = broke["stopped_at"] + GRACE
    assert states(broke["data"], broke["logs"]) == [("grace", wipe_at), ("grace", wipe_at)]
    assert FundsNotice.objects.filter(organization=alice.org, kind="stopped", resolved_at__isnull=True).exists()
    told = mail.outbox[-1]
    assert told.to == ["alice@example.com"] and "wiped unless you top up" in told.subject
    assert "data (372 GB): wiped at 2026-03-15 18:02 UTC" in told.body
    assert "logs (372 GB)" in told.body
    assert VolumeNotice.objects.filter(kind="grace").count() == 2


def test_a_volume_made_while_stopped_gets_a_grace_period_of_its_own(broke, alice, server, clock, check):
    clock.move_to(broke["stopped_at"] + timedelta(days=2))
    later = make_volume(alice.org, server, name="later", size_gb=1, at=timezone.now())
    sent = len(mail.outbox)
    check()
    check()
    wipe_at = broke["stopped_at"] + timedelta(days=2) + GRACE
    assert states(later, broke["data"]) == [("grace", broke["stopped_at"] + GRACE), ("grace", wipe_at)]
    assert len(mail.outbox) == sent + 1 and "later (1 GB)" in mail.outbox[-1].body
    assert "data (372 GB)" not in mail.outbox[-1].body


def test_the_grace_period_is_a_setting(clock, alice, server, check, settings):
    settings.SUANLI_VOLUME_GRACE_DAYS = 3
    prepaid(alice.org)
    volume = make_volume(alice.org, server, size_gb=744, price="1.0000")
    clock.move_to(MARCH + MINUTE)
    check()  # out already: told
    clock.move_to(MARCH + HOUR + 2 * MINUTE)
    check()  # the notice is an hour old: stopped
    volume.refresh_from_db()
    assert (volume.state, volume.wipe_at) == ("grace", MARCH + HOUR + 2 * MINUTE + timedelta(days=3))


def test_a_top_up_releases_the_volumes(broke, alice, clock, check):
    clock.move_to(broke["stopped_at"] + 5 * HOUR)
    credit(alice.org, "500.00", "W2")
    assert check()["recovered"] == 1
    assert states(broke["data"], broke["logs"]) == [("ready", None), ("ready", None)]
    assert not FundsNotice.objects.filter(organization=alice.org, resolved_at__isnull=True).exists()
    # Released, then out again much later: a new grace period, told again.
    sent = len(mail.outbox)
    clock.move_to(broke["stopped_at"] + timedelta(days=30))
    check()
    clock.move_to(broke["stopped_at"] + timedelta(days=30, hours=1, minutes=1))
    check()
    wipe_at = broke["stopped_at"] + timedelta(days=30, hours=1, minutes=1) + GRACE
    assert states(broke["data"])[0] == ("grace", wipe_at)
    assert VolumeNotice.objects.filter(volume=broke["data"], kind="grace").count() == 2
    assert len(mail.outbox) > sent


def test_reminders_3_days_and_1_day_before_the_wipe_go_once_each(broke, clock, check):
    wipe_at = broke["stopped_at"] + GRACE
    sent = len(mail.outbox)
    clock.move_to(wipe_at - timedelta(days=3, minutes=1))
    assert check()["volume_reminders"] == 0
    for _ in range(2):
        clock.move_to(wipe_at - timedelta(days=3) + MINUTE)
        check()
    assert len(mail.outbox) == sent + 1
    assert "wiped in 3 days" in mail.outbox[-1].subject and "data (372 GB)" in mail.outbox[-1].body
    clock.move_to(wipe_at - timedelta(days=2))
    assert check()["volume_reminders"] == 0
    for _ in range(2):
        clock.move_to(wipe_at - timedelta(hours=23))
        check()
    assert len(mail.outbox) == sent + 2 and "wiped in 1 day" in mail.outbox[-1].subject
    kinds = sorted(VolumeNotice.objects.filter(volume=broke["data"]).values_list("kind", flat=True))
    assert kinds == ["days_1", "days_3", "grace"]


def test_the_wipe_job_moves_volumes_to_wiping_after_wipe_at_and_tells_once(broke, clock, wipe_job):
    wipe_at = broke["stopped_at"] + GRACE
    clock.move_to(wipe_at - MINUTE)
    assert wipe_job() == {"wiping": 0}
    assert states(broke["data"])[0] == ("grace", wipe_at)
    sent = len(mail.outbox)
    clock.move_to(wipe_at + MINUTE)
    assert wipe_job() == {"wiping": 2}
    assert [state for state, _ in states(broke["data"], broke["logs"])] == ["wiping", "wiping"]
    assert len(mail.outbox) == sent + 1
    last = mail.outbox[-1]
    assert "being wiped" in last.subject and "data (372 GB)" in last.body and "logs (372 GB)" in last.body
    assert wipe_job() == {"wiping": 0} and len(mail.outbox) == sent + 1
    assert VolumeNotice.objects.filter(kind="wiping").count() == 2


def test_volumes_in_grace_stay_billed_until_wiped(broke, alice, clock):
    clock.move_to(broke["stopped_at"] + 10 * HOUR)
    money = standing(alice.org)
    assert money.burn_per_hour == D("1.00")
    # 12 hours and 2 minutes of each volume at 0.50 an hour (6.0167), each line rounded as on the invoice.
    assert money.month_to_date == D("12.04")
