"""The demo's past (issue 17): two closed months before the current one, made by the real services with the clock
set to each moment, so a fresh demo has invoices, statements, a payout, a credit note and charts to show.

What it makes, month by month (A is the month before last, B last month, both closed):
- A: Demo Labs (prepaid, USD) rents two H100 cards by the hour for two weeks; on day 10 one of them fails (its
  agent reports a row remap pending), the scheduler moves the lease to another card and the card is healthy again
  after a reset. Qiming Research Lab (prepaid, CNY) rents four RTX 4090 cards by the hour for three weeks.
- B: Demo Labs rents four H100 cards interruptible (the spot price) on bob-h100-03; five days later an on-demand
  request for that whole server preempts it (after the notice), runs two days and ends. Qiming takes a
  PFLOPS-year capacity contract on RTX 4090 cards for ten days. Hengtai Enterprise AI (postpaid) starts its
  server-month contract on an A800 server on the 13th, with a workload: it still runs today.
- This month (once it is four days old): Demo Labs rents two H100 cards for a day and a half.
- Each month is metered and closed by `close_period` an hour after its end: the prepaid customers' invoices are
  paid from their balance (bank transfers staff recorded through the ledger, one before each month), Hengtai's
  invoice for B is left open (postpaid, not due yet). After A closes, staff issue Demo Labs a credit note for the
  failed card and pay Bob IDC's statement of A by bank (the one payout); Shenzhen Compute's statements stay
  unpaid.

Everything goes through the services, with `now` where they take it and the process clock moved by time-machine
(every `created_at` then reads the moment it happened); nothing is inserted that a service would not write. The
one exception is telemetry (`telemetry_history`): the charts' last seven days are written straight into the
telemetry tables in their own shape (raw samples for the last hour, one-minute roll-ups for the last day, hourly
ones for the week), busy (~90 %) where a lease held the card and idle (~0 %) elsewhere, as the agents would have
reported it.

It is built once, on a database where it fits: no demo customer has a lease yet and neither the meter nor a close
has reached those months (`blocker` says why not otherwise; the demo then starts in the present as before).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection

from accounts.models import Organization, User
from billing import services as billing_services
from billing.invoicing import Period, period_containing, previous_period
from billing.metering import metered_until
from billing.models import Invoice, ProviderStatement
from billing.rating import platform_zone
from inventory import telemetry
from inventory.ingest import check_report, report_ingest
from inventory.models import Gpu, GpuModel, Server
from inventory.services import server_mark_seen
from scheduler import services as scheduler_services
from scheduler.lifecycle import leases_run
from scheduler.models import Allocation, Lease

# The days of the week of telemetry the charts get (their longest range is 7 days).
TELEMETRY_DAYS = 7


@dataclass(frozen=True)
class Months:
    first: Period  # the month before last
    second: Period  # last month
    current: Period

    @property
    def start(self) -> datetime:
        """When the demo world is made: ten days before the first month."""
        return self.first.start - timedelta(days=10)


def months(now: datetime) -> Months:
    second = previous_period(now)
    return Months(first=previous_period(second.start), second=second, current=period_containing(now))


def day(period: Period, days: int, hour: int = 9) -> datetime:
    """`hour` o'clock on day `days + 1` of `period`, in the platform's time zone."""
    local = period.start.astimezone(platform_zone()) + timedelta(days=days)
    return local.replace(hour=hour, minute=0, second=0, microsecond=0)


def blocker(now: datetime, customers: list[str]) -> str:
    """Why the history cannot be built on this database ('' when it can)."""
    span = months(now)
    if Lease.objects.filter(organization__name__in=customers).exists():
        return "the demo customers already have leases"
    watermark = metered_until()
    if watermark is not None and watermark > span.start:
        return f"usage is metered up to {watermark:%Y-%m-%d %H:%M} already"
    labels = [span.first.label, span.second.label]
    if (
        Invoice.objects.filter(period__in=labels).exists()
        or ProviderStatement.objects.filter(period__in=labels).exists()
    ):
        return f"{span.first.label} or {span.second.label} has been closed already"
    return ""


@contextmanager
def clock_at(moment: datetime):
    """The process clock at `moment` (ticking) while inside: every timezone.now() and auto_now_add reads it."""
    import time_machine

    with time_machine.travel(moment, tick=True):
        yield


@dataclass
class Demo:
    """What the history needs from seed_demo: the staff user, the organisations by name, and how to make a
    customer's own leases (seed_demo's `_leases`) at a given moment."""

    staff: User
    orgs: dict[str, Organization]
    live_leases: Callable[[Organization, datetime], None]
    say: Callable[[str], None]


def _transfer(demo: Demo, org: str, amount: str, reference: str, at: datetime) -> None:
    with clock_at(at):
        billing_services.adjustment_record(
            org=demo.orgs[org],
            amount=amount,
            currency=demo.orgs[org].currency,
            reason="Bank transfer received (demo data)",
            reference=reference,
            by=demo.staff,
            now=at,
        )


def _rent(demo: Demo, org: str, at: datetime, **lease) -> Lease:
    with clock_at(at):
        made = scheduler_services.lease_create(org=demo.orgs[org], now=at, **lease)
    demo.say(
        f"  {at:%Y-%m-%d}: {org} rented {made.gpu_count} cards ({made.plan}{', interruptible' * made.interruptible})"
    )
    return made


def _end(lease: Lease, at: datetime) -> None:
    with clock_at(at):
        scheduler_services.lease_end(lease=lease, now=at)


def _run_leases(at: datetime) -> None:
    """What the scheduler's beat job does at `at`: due starts and ends, preemptions, failover."""
    with clock_at(at):
        leases_run(now=at)


def _report(server: Server, gpu: Gpu, at: datetime, received: datetime, **sample) -> None:
    """One agent report for one card, taken at `at`, through the ingest the agent API uses. It is received at
    `received` (today: as a spooled report an agent sends late), so its card's health changes at `at` and no raw
    sample is stored for a day past the raw retention. Its seq is the report's second, as a fresh agent's spool
    counts, so the live agent's reports still come after it."""
    body = {
        "seq": int(at.timestamp()),
        "sent_at": at.isoformat(),
        "gpus": [{"uuid": gpu.uuid, "utilization_pct": 0, "temperature_c": 41, **sample}],
    }
    with clock_at(at):
        report_ingest(server=server, report=check_report(body), now=received)


def _close(demo: Demo, period: Period) -> None:
    """The month's end as the beat jobs see it: the hourly meter a few minutes past it, then the close an hour on."""
    metered = period.end + timedelta(minutes=5)
    with clock_at(metered):
        billing_services.meter(until=metered)
    at = period.end + timedelta(hours=1)
    _run_leases(at)
    with clock_at(at):
        made = billing_services.close_period(period.label, now=at)
    demo.say(f"  closed {period.label}: {made['invoices']} invoices, {made['statements']} statements")


def build(demo: Demo, now: datetime) -> None:
    """The two closed months of the module docstring, in the order they happened. Call inside a transaction."""
    span = months(now)
    a, b = span.first, span.second
    h100 = GpuModel.objects.get(slug="h100-sxm5-80gb")
    rtx = GpuModel.objects.get(slug="rtx-4090-24gb")
    demo.say(f"The demo's past ({a.label} and {b.label}, closed):")

    # Money in before the first month (the prepaid customers' second bank transfers; seed_demo recorded the first).
    _transfer(demo, "Demo Labs", "4000.00", f"DEMO-WIRE-DL-{a.label}", day(a, -3, 10))
    _transfer(demo, "Qiming Research Lab", "20000.00", f"DEMO-CMB-QM-{a.label}", day(a, -2, 10))

    # Month A: two card-hour leases; one card fails and is replaced.
    labs_a = _rent(demo, "Demo Labs", day(a, 1), plan="card_hour", gpu_count=2, gpu_model=h100)
    qiming_a = _rent(demo, "Qiming Research Lab", day(a, 4, 14), plan="card_hour", gpu_count=4, gpu_model=rtx)
    failed = Allocation.objects.filter(lease=labs_a).select_related("gpu", "server").order_by("gpu__index").first()
    broke, mended = day(a, 9, 14), day(a, 9, 18)
    _report(failed.server, failed.gpu, broke, now, remap_pending=True)
    _run_leases(broke + timedelta(minutes=2))  # the failover: another card for the lease
    _report(failed.server, failed.gpu, mended, now, remap_pending=False)
    demo.say(f"  {broke:%Y-%m-%d}: card {failed.gpu.uuid} of {failed.server.name} failed; the lease moved")
    _end(labs_a, day(a, 15, 18))
    _end(qiming_a, day(a, 25, 10))
    _close(demo, a)

    # After A closed: a credit note for the failed card, and Bob IDC's statement paid by bank.
    invoice = Invoice.objects.get(organization=demo.orgs["Demo Labs"], period=a.label)
    hours = Decimal(4)
    with clock_at(a.end + timedelta(days=2, hours=3)):
        note = billing_services.credit_note_issue(
            invoice=invoice,
            amount=(labs_a.unit_price * hours).quantize(Decimal("0.01")),
            reason=(
                f"Card {failed.gpu.uuid} failed on {broke:%Y-%m-%d} (row remapping pending) until it was reset "
                f"{hours:.0f} hours later: those card-hours back"
            ),
            lease=labs_a,
            by=demo.staff,
        )
    demo.say(f"  credit note {note.number} of {note.amount} {note.currency} on {invoice.number}")
    statement = ProviderStatement.objects.get(organization=demo.orgs["Bob IDC"], period=a.label, currency="USD")
    with clock_at(a.end + timedelta(days=5, hours=2)):
        payout = billing_services.payout_record_bank(
            statement=statement, reference=f"DEMO-PAYOUT-BOB-{a.label}", by=demo.staff
        )
    demo.say(f"  paid Bob IDC {payout.amount} {payout.currency} for {a.label} by bank")

    # Month B: an interruptible lease preempted by an on-demand one; a capacity contract; Hengtai's server-month.
    _transfer(demo, "Demo Labs", "3000.00", f"DEMO-WIRE-DL-{b.label}", day(b, -1, 11))
    server = Server.objects.get(organization=demo.orgs["Bob IDC"], name="bob-h100-03")
    spot = _rent(
        demo, "Demo Labs", day(b, 2), plan="card_hour", gpu_count=4, gpu_model=h100, server=server, interruptible=True
    )
    claim = _rent(demo, "Demo Labs", day(b, 7, 10), plan="card_hour", gpu_count=8, gpu_model=h100, server=server)
    _run_leases(day(b, 7, 10) + timedelta(minutes=5))  # the notice ran out: the spot lease is preempted
    spot.refresh_from_db()
    demo.say(f"  {day(b, 7, 10):%Y-%m-%d}: the interruptible lease {spot.pk} was {spot.state}")
    _end(claim, day(b, 9, 10))
    _rent(
        demo,
        "Qiming Research Lab",
        day(b, 9, 12),
        plan="pflops_year",
        pflops=Decimal("0.5"),
        gpu_model=rtx,
        end_at=day(b, 19, 12),
    )
    demo.live_leases(demo.orgs["Hengtai Enterprise AI"], day(b, 12, 10))
    _close(demo, b)

    # This month, when it is a few days old: a short card-hour run of Demo Labs, so its month to date has spending.
    c = span.current
    if now >= day(c, 3, 12):
        this_month = _rent(demo, "Demo Labs", day(c, 1), plan="card_hour", gpu_count=2, gpu_model=h100)
        _end(this_month, day(c, 2, 21))


def servers_seen(servers: list[Server], now: datetime) -> None:
    """The demo servers were heard from now (the history's reports, and their enrolment, were in the past)."""
    for server in servers:
        server_mark_seen(server_id=server.pk, now=now)


# --- telemetry -------------------------------------------------------------------------------------------------

# One row per card and bucket over [since, until) at `step`, busy where an allocation held the card at the bucket's
# start. Noise is a hash of the card and the time, so the same seed makes the same charts.
_TELEMETRY_SQL = """
WITH cards AS (
    SELECT g.id AS gpu_id, g.server_id, m.memory_gb * 1024 AS memory_mb, coalesce(m.tdp_w, 400) AS tdp_w
    FROM inventory_gpu g
    JOIN inventory_server s ON s.id = g.server_id
    JOIN inventory_gpumodel m ON m.id = s.gpu_model_id
    WHERE g.server_id = ANY(%(servers)s)
),
held AS (
    SELECT gpu_id, range_agg(period) AS periods FROM scheduler_allocation
    WHERE gpu_id IN (SELECT gpu_id FROM cards) AND period && tstzrange(%(since)s, %(until)s)
    GROUP BY gpu_id
),
points AS (
    SELECT c.*, t, coalesce(h.periods @> t, false) AS busy,
           (abs(hashtext(c.gpu_id::text || ':' || extract(epoch FROM t)::bigint::text)) %% 1000) / 1000.0 AS r
    FROM cards c LEFT JOIN held h ON h.gpu_id = c.gpu_id,
         generate_series(%(since)s::timestamptz, %(until)s::timestamptz - interval '1 second',
                         make_interval(secs => %(step)s)) AS t
),
readings AS (
    SELECT *,
           CASE WHEN busy THEN 88 + 10 * r ELSE 0.4 * r END AS util,
           CASE WHEN busy THEN memory_mb * (0.84 + 0.08 * r) ELSE 512 END AS mem,
           CASE WHEN busy THEN 68 + 8 * r ELSE 31 + 3 * r END AS temp,
           CASE WHEN busy THEN tdp_w * (0.82 + 0.1 * r) ELSE tdp_w * 0.09 + 10 * r END AS power
    FROM points
)
"""

_INSERT_RAW = f"""
INSERT INTO {telemetry.RAW} (ts, gpu_id, server_id, utilization_pct, memory_used_mb, temperature_c, power_w,
    sm_clock_mhz, ecc_sbe, ecc_dbe, extra)
SELECT t, gpu_id, server_id, util, mem::integer, temp, power, CASE WHEN busy THEN 1980 ELSE 345 END, 0, 0,
       '{{"seeded": true}}'::jsonb
FROM readings
"""  # noqa: S608 (table names are ours)

_INSERT_ROLLUP = """
INSERT INTO {table} (gpu_id, bucket, server_id, samples, utilization_pct, utilization_max, memory_used_mb,
    memory_used_max, temperature_c, temperature_max, power_w)
SELECT gpu_id, t, server_id, %(samples)s, util, least(100, util + 2), mem, mem::integer, temp, temp + 2, power
FROM readings
ON CONFLICT (gpu_id, bucket) DO NOTHING
"""


def telemetry_history(servers: list[Server], now: datetime) -> int:
    """The last TELEMETRY_DAYS of the servers' cards, as the charts read them: hourly roll-ups for the week, minute
    roll-ups for the last day, raw 10-second samples for the last hour. Returns the rows written."""
    ids = [server.pk for server in servers]
    telemetry.ensure_partitions(today=now.date())
    minute = now.replace(second=0, microsecond=0)
    hour = minute.replace(minute=0)
    spans = [
        (f"{_TELEMETRY_SQL}{_INSERT_ROLLUP.format(table=telemetry.ONE_HOUR)}", hour - timedelta(days=TELEMETRY_DAYS),
         hour, 3600, 360),
        (f"{_TELEMETRY_SQL}{_INSERT_ROLLUP.format(table=telemetry.ONE_MINUTE)}", minute - timedelta(days=1),
         minute, 60, 6),
        (f"{_TELEMETRY_SQL}{_INSERT_RAW}", minute - timedelta(hours=1), minute, 10, 1),
    ]  # fmt: skip
    written = 0
    with connection.cursor() as cursor:
        for sql, since, until, step, samples in spans:
            params = {"servers": ids, "since": since, "until": until, "step": step, "samples": samples}
            cursor.execute(sql, params)
            written += cursor.rowcount
    return written
