"""Lost updates (issue 13, defect 6): a write made from a row read earlier must not undo a change committed
in between — a delist under a stale offer form, a staff undrain or a cleaning drain during a report's ingest,
or the state of the report just before."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from accounts.errors import Conflict, InvalidInput
from inventory import health, ingest, telemetry
from inventory.models import Gpu, GpuHealthEvent, Offer, Server
from marketplace.services import offer_delist, offer_update
from tests.factories import OfferFactory, ServerFactory, online_server
from workloads.checks import workloads_check

# --- offers ------------------------------------------------------------------------------------------------


def test_an_edit_from_a_form_opened_before_a_delist_does_not_list_the_offer_again(bob):
    offer = OfferFactory(server=ServerFactory(organization=bob.org))
    stale = Offer.objects.get(pk=offer.pk)  # the edit form, opened before the delist
    offer_delist(offer=Offer.objects.get(pk=offer.pk))
    with pytest.raises(Conflict) as refused:
        offer_update(offer=stale, prices={"card_hour": Decimal("3.0000")})
    assert refused.value.code == "invalid_state"
    offer.refresh_from_db()
    assert offer.delisted_at is not None
    assert offer.card_hour_price == Decimal("2.5000")


def test_an_edit_writes_only_the_fields_it_changes(bob):
    offer = OfferFactory(server=ServerFactory(organization=bob.org))
    stale = Offer.objects.get(pk=offer.pk)
    offer_update(offer=Offer.objects.get(pk=offer.pk), prices={"card_hour": Decimal("3.0000")}, host_access=True)
    updated = offer_update(offer=stale, min_gpus=2)
    offer.refresh_from_db()
    assert (offer.card_hour_price, offer.host_access, offer.min_gpus) == (Decimal("3.0000"), True, 2)
    assert (updated.card_hour_price, updated.min_gpus) == (Decimal("3.0000"), 2)


def test_a_stale_edit_is_checked_against_the_stored_prices(bob):
    """An interruptible price below the on-demand price of the stale copy, but not below the stored one: refused."""
    offer = OfferFactory(server=ServerFactory(organization=bob.org))  # card_hour 2.50, interruptible 1.25
    stale = Offer.objects.get(pk=offer.pk)
    offer_update(
        offer=Offer.objects.get(pk=offer.pk),
        prices={"card_hour": Decimal("1.0000")},
        interruptible_prices={"card_hour": Decimal("0.5000")},
    )
    with pytest.raises(InvalidInput):
        offer_update(offer=stale, interruptible_prices={"card_hour": Decimal("2.0000")})
    offer.refresh_from_db()
    assert (offer.card_hour_price, offer.card_hour_interruptible_price) == (Decimal("1.0000"), Decimal("0.5000"))


# --- agent reports -----------------------------------------------------------------------------------------


def _report(server: Server, seq: int, **samples: dict) -> dict:
    gpus = [
        {"uuid": gpu.uuid, "utilization_pct": 50, "temperature_c": 60, "ecc_dbe": 0, **samples.get(gpu.uuid, {})}
        for gpu in server.gpus.order_by("index")
    ]
    return ingest.check_report({"seq": seq, "sent_at": datetime.now(UTC).isoformat(), "gpus": gpus})


def _meanwhile(monkeypatch, write) -> list[threading.Thread]:
    """Run `write` on a connection of its own once the report has read its cards (at the first health
    verdict), giving it a second to commit before the report writes."""
    started: list[threading.Thread] = []

    def other_connection():
        try:
            write()
        finally:
            connection.close()

    evaluate = health.evaluate

    def evaluate_after_a_concurrent_write(*args, **kwargs):
        if not started:
            thread = threading.Thread(target=other_connection, daemon=True)
            started.append(thread)
            thread.start()
            thread.join(timeout=1)  # done at once unless the report holds the card's row lock
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(health, "evaluate", evaluate_after_a_concurrent_write)
    return started


@pytest.mark.django_db(transaction=True)
def test_a_staff_undrain_during_a_report_survives_it(monkeypatch):
    server = online_server(gpus=2, offer=False)
    card = server.gpus.get(index=0)
    Gpu.objects.filter(pk=card.pk).update(drained=True, drained_reason="automatic: not reported clean")
    staff = _meanwhile(monkeypatch, lambda: Gpu.objects.filter(pk=card.pk).update(drained=False, drained_reason=""))
    assert ingest.report_ingest(server=server, report=_report(server, 1), now=timezone.now()).accepted
    staff[0].join(timeout=10)
    assert not staff[0].is_alive()
    card.refresh_from_db()
    assert (card.drained, card.drained_reason) == (False, "")
    assert card.last_sample is not None, "the report's own columns are written"


@pytest.mark.django_db(transaction=True)
def test_a_drain_for_an_unclean_card_during_a_report_survives_it(monkeypatch):
    server = online_server(gpus=2, offer=False)
    card = server.gpus.get(index=1)
    Gpu.objects.filter(pk=card.pk).update(needs_cleaning=True, clean_requested_at=datetime(2020, 1, 1, tzinfo=UTC))
    sweep = _meanwhile(monkeypatch, workloads_check)
    assert ingest.report_ingest(server=server, report=_report(server, 1), now=timezone.now()).accepted
    sweep[0].join(timeout=10)
    card.refresh_from_db()
    assert card.drained and "not reported clean" in card.drained_reason


@pytest.mark.django_db(transaction=True)
def test_the_health_rules_still_drain_a_card_while_staff_touch_another(monkeypatch):
    server = online_server(gpus=2, offer=False)
    faulty, other = server.gpus.get(index=0), server.gpus.get(index=1)
    Gpu.objects.filter(pk=other.pk).update(drained=True, drained_reason="by staff")
    staff = _meanwhile(monkeypatch, lambda: Gpu.objects.filter(pk=other.pk).update(drained=False, drained_reason=""))
    report = _report(server, 1, **{faulty.uuid: {"xid_errors": [79]}})
    assert ingest.report_ingest(server=server, report=report, now=timezone.now()).accepted
    staff[0].join(timeout=10)
    faulty.refresh_from_db()
    other.refresh_from_db()
    assert faulty.health == "failed" and faulty.drained and "XID 79" in faulty.drained_reason
    assert not other.drained


def test_a_report_starts_from_the_state_the_report_before_it_left(monkeypatch):
    """Report 2 is received while report 1 (a fatal XID) is being stored: report 2 must see the latched fault,
    not the state read before report 1 committed."""
    server = online_server(gpus=2, offer=False)
    faulty = server.gpus.get(index=0)
    first = _report(server, 1, **{faulty.uuid: {"xid_errors": [79]}})
    raw_window = telemetry.raw_window
    ran: list[bool] = []

    def first_report_lands(now):
        if not ran:
            ran.append(True)
            assert ingest.report_ingest(server=Server.objects.get(pk=server.pk), report=first, now=now).accepted
        return raw_window(now)

    monkeypatch.setattr(telemetry, "raw_window", first_report_lands)
    assert ingest.report_ingest(server=server, report=_report(server, 2), now=timezone.now()).accepted
    assert ran
    faulty.refresh_from_db()
    assert faulty.health == "failed" and faulty.drained and faulty.fault_latched_reason
    events = GpuHealthEvent.objects.filter(gpu=faulty)
    assert [(e.from_health, e.to_health) for e in events] == [("healthy", "failed")]
