"""Metering: allocation periods -> usage records, one per allocation and hour (or the part of it that was held).

A customer pays for what was usable: a card_hour or interruptible lease that runs a workload is charged on each
server from its workload's first `running` report there (workloads.Workload.started_at), not from allocation; one
that never ran is never charged. Contracts (server_month, pflops_year) are charged from their start.

PostgreSQL cuts each allocation period into hour slots of the platform clock (months begin on an hour of it, so
no slot straddles two months) and measures, per slot, the seconds held and the seconds the card was down: failed
(from its health events until it was healthy again) or its server unreachable (inventory ServerOutage). `meter`
writes only slots that are over, with one INSERT ... SELECT per kind of record that rates them in SQL
(`_rated_sql`: billing/rating.py's curve to the last of its 12 places, half to even; tests/billing/test_meter_sql.py)
and ON CONFLICT DO NOTHING on (allocation, slot), so it is idempotent and safe to run concurrently; `lease_usage`
runs the same slot query up to now for a lease and rates what is not metered yet with billing/rating.py in Python,
so the cost a customer sees live is the one they are invoiced.

Storage (issue 16) is metered in the same run and under the same watermark: each volume's life [created_at,
wiped_at or until) is cut into the same hour slots and rated like a server-month with units = size_gb (price per
GB-month pro-rated per second of the calendar month), one StorageRecord per (volume, slot), ON CONFLICT DO NOTHING.
A volume-second is billed once whatever happens around it: lease stops, grace, period closes, moves. Only volumes their
agents have made (`ready_at`) are metered: one being made waits (its agent makes it, or it is given up, within
SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS, at most the hour the meter looks back), and one never made is never billed.

A volume moved to another server (workloads/volume_moves.py) is billed on its old server, to its old provider at its
old price, until the start of the platform-clock hour after its switch, and on the new one from then on: each hour
slot lies wholly on one server, so there is still one record per (volume, slot) and every second once. The old
copy's wipe after the switch is the old provider's and is not billed.

A resale lease's allocation (issue 20: `Allocation.backing`, the reseller's contract allocation of the same card) is
metered like any other at its own prices, but its provider is the reseller (the backing lease's organisation), not
the server's owner: the renter's charge is the reseller's revenue, on the reseller's statement less the commission.
The backing contract's own records are untouched (billed to the reseller, earned by the server's owner).

Data-access sessions (workloads.data_access) likewise: each session's running time [its container's first
`running` report, the earlier of its end and its `ends_at`) cut into the same slots and rated per hour (one unit of
a card-hour's curve at its price), one DataAccessRecord per (session, slot), ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from billing import rating
from billing.models import MeterRun
from scheduler.models import Lease

# Slots are re-examined this far behind the watermark (a late report of a failure); existing records are kept.
LOOKBACK = timedelta(hours=1)
BATCH = 5000

_SLOTS_SQL = """
WITH a AS (
    SELECT al.id AS allocation_id, al.lease_id, al.gpu_id, al.server_id, al.unit_price, al.units,
           l.organization_id, l.plan, l.currency, coalesce(bl.organization_id, s.organization_id) AS provider_id,
           al.period * tstzrange(%(since)s, %(until)s, '[)')
               * CASE WHEN ws.id IS NOT NULL AND (l.plan = 'card_hour' OR l.interruptible)
                      THEN tstzrange(coalesce(w.started_at, 'infinity'), NULL, '[)')
                      ELSE tstzrange(NULL, NULL) END AS p
    FROM scheduler_allocation al
    JOIN scheduler_lease l ON l.id = al.lease_id
    JOIN inventory_server s ON s.id = al.server_id
    LEFT JOIN scheduler_allocation ba ON ba.id = al.backing_id
    LEFT JOIN scheduler_lease bl ON bl.id = ba.lease_id
    LEFT JOIN workloads_workloadspec ws ON ws.lease_id = al.lease_id
    LEFT JOIN workloads_workload w ON w.lease_id = al.lease_id AND w.server_id = al.server_id
    WHERE al.period && tstzrange(%(since)s, %(until)s, '[)') {filters}
),
slots AS (
    SELECT a.*, h AS slot_start, a.p * tstzrange(h, h + interval '1 hour', '[)') AS part
    FROM a, LATERAL generate_series(
        date_trunc('hour', lower(a.p), %(zone)s), upper(a.p) - interval '1 microsecond', interval '1 hour'
    ) AS h
    WHERE NOT isempty(a.p)
),
events AS (
    SELECT e.gpu_id, e.at, e.to_health, lead(e.at) OVER (PARTITION BY e.gpu_id ORDER BY e.at, e.id) AS next_at
    FROM inventory_gpuhealthevent e
    WHERE e.gpu_id IN (SELECT gpu_id FROM a)
),
down_periods AS (
    SELECT gpu_id, tstzrange(at, coalesce(next_at, 'infinity'), '[)') AS r
    FROM events WHERE to_health = 'failed' AND (next_at IS NULL OR next_at > at)
    UNION ALL
    SELECT g.id, tstzrange(o.started_at, coalesce(o.ended_at, 'infinity'), '[)')
    FROM inventory_serveroutage o JOIN inventory_gpu g ON g.server_id = o.server_id
    WHERE o.server_id IN (SELECT server_id FROM a) AND (o.ended_at IS NULL OR o.ended_at > o.started_at)
),
down AS (SELECT gpu_id, range_agg(r) AS mr FROM down_periods GROUP BY gpu_id)
SELECT s.allocation_id, s.lease_id, s.organization_id, s.provider_id, s.server_id, s.plan, s.currency,
       s.unit_price, s.units, s.slot_start, lower(s.part), upper(s.part),
       extract(epoch FROM upper(s.part) - lower(s.part)),
       coalesce((SELECT sum(extract(epoch FROM upper(r) - lower(r))) FROM unnest(multirange(s.part) * d.mr) AS r), 0)
FROM slots s LEFT JOIN down d ON d.gpu_id = s.gpu_id
WHERE NOT isempty(s.part)
ORDER BY s.allocation_id, s.slot_start
"""


_STORAGE_SQL = """
WITH moves AS (
    SELECT m.volume_id, m.source_id, m.source_price, m.switched_at,
           date_trunc('hour', m.switched_at, %(zone)s)
               + CASE WHEN date_trunc('hour', m.switched_at, %(zone)s) = m.switched_at
                      THEN interval '0' ELSE interval '1 hour' END AS handover
    FROM workloads_volumemove m
    WHERE m.state = 'done'
),
stints AS (
    -- A volume's stay on each server: on a move's source until its handover (from the move before's), and on
    -- the volume's own server from its last handover on.
    SELECT volume_id, source_id AS server_id, source_price AS price,
           lag(handover) OVER (PARTITION BY volume_id ORDER BY switched_at) AS lo, handover AS hi
    FROM moves
    UNION ALL
    SELECT v.id, v.server_id, v.price_per_gb_month, (SELECT max(handover) FROM moves WHERE moves.volume_id = v.id),
           NULL
    FROM workloads_volume v
),
v AS (
    SELECT v.id AS volume_id, v.organization_id, s.organization_id AS provider_id, st.server_id, v.size_gb,
           st.price AS price_per_gb_month, v.currency,
           tstzrange(v.created_at, greatest(v.created_at, coalesce(v.wiped_at, 'infinity')), '[)')
               * tstzrange(st.lo, CASE WHEN st.hi IS NULL THEN NULL ELSE greatest(st.lo, st.hi) END, '[)')
               * tstzrange(%(since)s, %(until)s, '[)') AS p
    FROM workloads_volume v
    JOIN stints st ON st.volume_id = v.id
    JOIN inventory_server s ON s.id = st.server_id
    WHERE v.ready_at IS NOT NULL AND v.created_at < %(until)s AND (v.wiped_at IS NULL OR v.wiped_at > %(since)s)
          {filters}
),
slots AS (
    SELECT v.*, h AS slot_start, v.p * tstzrange(h, h + interval '1 hour', '[)') AS part
    FROM v, LATERAL generate_series(
        date_trunc('hour', lower(v.p), %(zone)s), upper(v.p) - interval '1 microsecond', interval '1 hour'
    ) AS h
    WHERE NOT isempty(v.p)
)
SELECT volume_id, organization_id, provider_id, server_id, size_gb, price_per_gb_month, currency, slot_start,
       lower(part), upper(part), extract(epoch FROM upper(part) - lower(part))
FROM slots
WHERE NOT isempty(part)
ORDER BY volume_id, slot_start
"""


@dataclass(frozen=True)
class StorageSlot:
    """The part of one hour slot a volume existed in, rated like a server-month of `size_gb` units."""

    volume_id: int
    organization_id: int
    provider_id: int
    server_id: int
    size_gb: int
    unit_price: Decimal  # per GB-month
    currency: str
    slot_start: datetime
    start: datetime
    end: datetime
    seconds: Decimal

    def rated(self) -> rating.Rated:
        return rating.rate(
            plan=STORAGE_PLAN,
            seconds=self.seconds,
            units=Decimal(self.size_gb),
            unit_price=self.unit_price,
            at=self.start,  # telescopes from slot to slot, as a server-month does
        )


# Storage is priced per GB-month, pro-rated per second of the calendar month: the server-month's curve.
STORAGE_PLAN = "server_month"


def storage_slots(
    *,
    since: datetime,
    until: datetime,
    volume_id: int | None = None,
    organization_id: int | None = None,
    provider_id: int | None = None,
) -> Iterator[StorageSlot]:
    """Every slot part in [since, until) in which a volume existed (from created_at until wiped_at) of the volumes
    their agents have made (`ready_at`: one still being made is not metered yet, one never made is never billed):
    of one volume, one organisation's volumes or one provider's servers when asked."""
    columns = {"volume": "v.id", "organization": "v.organization_id", "provider": "s.organization_id"}
    ids = {"volume": volume_id, "organization": organization_id, "provider": provider_id}
    for row in _rows(_STORAGE_SQL, columns, since=since, until=until, ids=ids):
        yield StorageSlot(*row[:10], seconds=Decimal(row[10]).quantize(Decimal("0.000001")))


def _rows(
    template: str, columns: dict[str, str], *, since: datetime, until: datetime, ids: dict[str, int | None]
) -> Iterator[tuple]:
    """The rows of a slot query over [since, until), in batches, its `{filters}` narrowed to the ids given (name ->
    id; `columns` names the column of each)."""
    params = {"since": since, "until": until, "zone": settings.PLATFORM_TIME_ZONE, **ids}
    sql = template.format(filters="".join(f" AND {columns[name]} = %({name})s" for name, v in ids.items() if v))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(BATCH):
            yield from rows


_ACCESS_SQL = """
WITH d AS (
    SELECT d.id AS data_access_id, d.organization_id, s.organization_id AS provider_id, d.server_id,
           d.price_per_hour, d.currency,
           tstzrange(w.started_at, greatest(w.started_at, least(d.ends_at, coalesce(d.ended_at, 'infinity'))), '[)')
               * tstzrange(%(since)s, %(until)s, '[)') AS p
    FROM workloads_dataaccess d
    JOIN workloads_workload w ON w.data_access_id = d.id
    JOIN inventory_server s ON s.id = d.server_id
    WHERE w.started_at IS NOT NULL AND w.started_at < %(until)s
      AND least(d.ends_at, coalesce(d.ended_at, 'infinity')) > %(since)s {filters}
),
slots AS (
    SELECT d.*, h AS slot_start, d.p * tstzrange(h, h + interval '1 hour', '[)') AS part
    FROM d, LATERAL generate_series(
        date_trunc('hour', lower(d.p), %(zone)s), upper(d.p) - interval '1 microsecond', interval '1 hour'
    ) AS h
    WHERE NOT isempty(d.p)
)
SELECT data_access_id, organization_id, provider_id, server_id, price_per_hour, currency, slot_start,
       lower(part), upper(part), extract(epoch FROM upper(part) - lower(part))
FROM slots
WHERE NOT isempty(part)
ORDER BY data_access_id, slot_start
"""

# A data-access session is priced per hour: the card-hour's curve with one unit.
ACCESS_PLAN = "card_hour"


@dataclass(frozen=True)
class AccessSlot:
    """The part of one hour slot a data-access session ran in (from its container's first `running` report until
    it ended or reached its `ends_at`), rated per hour."""

    data_access_id: int
    organization_id: int
    provider_id: int
    server_id: int
    unit_price: Decimal  # per hour
    currency: str
    slot_start: datetime
    start: datetime
    end: datetime
    seconds: Decimal

    def rated(self) -> rating.Rated:
        return rating.rate(
            plan=ACCESS_PLAN, seconds=self.seconds, units=Decimal(1), unit_price=self.unit_price, at=self.start
        )


def access_slots(
    *,
    since: datetime,
    until: datetime,
    data_access_id: int | None = None,
    organization_id: int | None = None,
    provider_id: int | None = None,
) -> Iterator[AccessSlot]:
    """Every slot part in [since, until) in which a data-access session ran: of one session, one organisation's
    sessions or one provider's servers when asked."""
    columns = {"data_access": "d.id", "organization": "d.organization_id", "provider": "s.organization_id"}
    ids = {"data_access": data_access_id, "organization": organization_id, "provider": provider_id}
    for row in _rows(_ACCESS_SQL, columns, since=since, until=until, ids=ids):
        yield AccessSlot(*row[:9], seconds=Decimal(row[9]).quantize(Decimal("0.000001")))


@dataclass(frozen=True)
class Slot:
    allocation_id: int
    lease_id: int
    organization_id: int
    provider_id: int
    server_id: int
    plan: str
    currency: str
    unit_price: Decimal
    units: Decimal
    slot_start: datetime
    start: datetime
    end: datetime
    seconds: Decimal
    down_seconds: Decimal

    def rated(self) -> rating.Rated:
        return rating.rate(
            plan=self.plan,
            seconds=self.seconds - self.down_seconds,
            units=self.units,
            unit_price=self.unit_price,
            at=self.start,  # where the held part begins, so the slots of an allocation telescope (rating.py)
        )


def slots(
    *,
    since: datetime,
    until: datetime,
    lease_id: int | None = None,
    organization_id: int | None = None,
    provider_id: int | None = None,
) -> Iterator[Slot]:
    """Every held slot part in [since, until), with its seconds and down seconds, allocation by allocation: of one
    lease, one customer organisation's leases or one provider's servers when asked."""
    columns = {
        "lease": "al.lease_id",
        "organization": "l.organization_id",
        "provider": "coalesce(bl.organization_id, s.organization_id)",
    }
    ids = {"lease": lease_id, "organization": organization_id, "provider": provider_id}
    for row in _rows(_SLOTS_SQL, columns, since=since, until=until, ids=ids):
        seconds, down = Decimal(row[12]).quantize(Decimal("0.000001")), Decimal(row[13])
        yield Slot(*row[:12], seconds=seconds, down_seconds=min(down.quantize(Decimal("0.000001")), seconds))


def handover(switched_at: datetime) -> datetime:
    """When a moved volume's billing passes to its new server: the first platform-clock hour boundary at or after
    its switch (the SQL above computes the same)."""
    floor = hour_floor(switched_at)
    return floor if floor == switched_at else floor + timedelta(hours=1)


def hour_floor(at: datetime) -> datetime:
    """The start of the platform-clock hour containing `at` (UTC)."""
    zone = rating.platform_zone()
    local = at.astimezone(zone).replace(minute=0, second=0, microsecond=0)
    return local.astimezone(UTC)


def meter(*, until: datetime | None = None) -> int:
    """Write the usage, storage and data-access records of every slot that is over by `until` (default now), each
    kind in one INSERT ... SELECT rated in SQL (`_rated_sql`, the same figures as rating.rate), all in one
    transaction with the watermark. Returns how many were new (of all kinds)."""
    until = hour_floor(until or timezone.now())
    last = MeterRun.objects.aggregate(m=Max("until"))["m"]
    since = (last - LOOKBACK) if last else datetime(2000, 1, 1, tzinfo=UTC)
    if since >= until:
        return 0
    params = {
        "since": since,
        "until": until,
        "zone": settings.PLATFORM_TIME_ZONE,
        "now": timezone.now(),  # created_at, from the application's clock as auto_now_add had it
        **_months(since, until),
    }
    created = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in (_METER_USAGE_SQL, _METER_STORAGE_SQL, _METER_ACCESS_SQL):
            cursor.execute(sql, params)
            created += cursor.rowcount  # ON CONFLICT DO NOTHING: the new rows only
        MeterRun.objects.create(until=until, records=created)
    return created


def _months(since: datetime, until: datetime) -> dict[str, list[datetime]]:
    """The calendar months (platform time zone) that [since, until) touches, as rating.month_bounds makes them:
    each one's first wall-clock instant (`month_wall`, naive) and its bounds as UTC instants."""
    zone = rating.platform_zone()
    walls, lows, highs = [], [], []
    low, high = rating.month_bounds(since, zone)
    while low < until:
        local = low.astimezone(zone)
        walls.append(datetime(local.year, local.month, 1))  # noqa: DTZ001 - a wall-clock month, matched in SQL
        lows.append(low)
        highs.append(high)
        low, high = rating.month_bounds(high, zone)
    return {"month_wall": walls, "month_lo": lows, "month_hi": highs}


# rating.rate rounds amounts and quantities at 12 places (EXACT): scaled up by 10^12 to round to a whole number,
# and back by a multiplication, which is exact in numeric (a division would round again).
_TEN_12 = 10 ** -rating.EXACT.as_tuple().exponent
_EXACT = f"{rating.EXACT:f}"


def _half_even(n: str) -> str:
    """SQL: `n / k.per` rounded to a whole number, half to even (Decimal's default, as rating.rate's quantize
    rounds), exactly: numeric div() and mod() do not round, whatever the size of `n`."""
    return (
        f"(div({n}, k.per) + CASE sign(2 * mod({n}, k.per) - k.per)"
        f" WHEN 1 THEN 1 WHEN 0 THEN mod(div({n}, k.per), 2) ELSE 0 END)"
    )


def _rated_sql(*, at: str, seconds: str, units: str, price: str, plan: str) -> str:
    """SQL joins that rate each row as rating.rate(plan, seconds, units, unit_price, at) does, to the last of the
    12 places: `rated.quantity` and `rated.amount`, each the difference of the curve from the start of the month of
    `at` (platform time zone) at the two ends of the held part. The month is matched on the wall-clock month of `at`
    (an instant has one local time), its bounds are those of rating.month_bounds (`_months`); a row without its
    month would be left without an amount, which the NOT NULL of the record refuses."""
    units_price = f"({units}) * ({price})"
    return f"""
LEFT JOIN unnest(%(month_wall)s::timestamp[], %(month_lo)s::timestamptz[], %(month_hi)s::timestamptz[])
    AS m(wall, lo, hi) ON m.wall = date_trunc('month', ({at}) AT TIME ZONE %(zone)s)
CROSS JOIN LATERAL (
    SELECT CASE {plan} WHEN 'card_hour' THEN {rating.HOUR_SECONDS}
                       WHEN 'server_month' THEN extract(epoch FROM m.hi - m.lo)
                       WHEN 'pflops_year' THEN {rating.YEAR_SECONDS} END AS per,
           extract(epoch FROM ({at}) - m.lo) * {_TEN_12} AS b,
           (extract(epoch FROM ({at}) - m.lo) + ({seconds})) * {_TEN_12} AS e
) AS k
CROSS JOIN LATERAL (
    SELECT ({_half_even(f"k.e * ({units})")} - {_half_even(f"k.b * ({units})")}) * {_EXACT} AS quantity,
           ({_half_even(f"k.e * {units_price}")} - {_half_even(f"k.b * {units_price}")}) * {_EXACT} AS amount
) AS rated
"""  # noqa: S608 (column expressions of the callers' own SQL)


_METER_USAGE_SQL = f"""
INSERT INTO billing_usagerecord (allocation_id, lease_id, organization_id, provider_id, server_id, plan, slot_start,
                                 start, "end", seconds, down_seconds, units, unit_price, currency, quantity, amount,
                                 created_at)
SELECT p.allocation_id, p.lease_id, p.organization_id, p.provider_id, p.server_id, p.plan, p.slot_start, p.start,
       p."end", p.seconds, p.down, p.units, p.unit_price, p.currency, rated.quantity, rated.amount, %(now)s
FROM (
    SELECT s.allocation_id, s.lease_id, s.organization_id, s.provider_id, s.server_id, s.plan, s.currency,
           s.unit_price, s.units, s.slot_start, s.start, s."end", s.seconds, least(s.down, s.seconds) AS down
    FROM ({_SLOTS_SQL.format(filters="")}) AS s(allocation_id, lease_id, organization_id, provider_id, server_id, plan,
                                                 currency, unit_price, units, slot_start, start, "end", seconds, down)
) AS p
{_rated_sql(at="p.start", seconds="p.seconds - p.down", units="p.units", price="p.unit_price", plan="p.plan")}
ORDER BY p.allocation_id, p.slot_start
ON CONFLICT (allocation_id, slot_start) DO NOTHING
"""  # noqa: S608 (the module's own SQL; values are parameters)

_METER_STORAGE_SQL = f"""
INSERT INTO billing_storagerecord (volume_id, organization_id, provider_id, server_id, slot_start, start, "end",
                                   seconds, size_gb, unit_price, currency, quantity, amount, created_at)
SELECT p.volume_id, p.organization_id, p.provider_id, p.server_id, p.slot_start, p.start, p."end", p.seconds,
       p.size_gb, p.unit_price, p.currency, rated.quantity, rated.amount, %(now)s
FROM ({_STORAGE_SQL.format(filters="")}) AS p(volume_id, organization_id, provider_id, server_id, size_gb, unit_price,
                                               currency, slot_start, start, "end", seconds)
{_rated_sql(at="p.start", seconds="p.seconds", units="p.size_gb", price="p.unit_price", plan=f"'{STORAGE_PLAN}'")}
ORDER BY p.volume_id, p.slot_start
ON CONFLICT (volume_id, slot_start) DO NOTHING
"""  # noqa: S608

_METER_ACCESS_SQL = f"""
INSERT INTO billing_dataaccessrecord (data_access_id, organization_id, provider_id, server_id, slot_start, start,
                                      "end", seconds, unit_price, currency, quantity, amount, created_at)
SELECT p.data_access_id, p.organization_id, p.provider_id, p.server_id, p.slot_start, p.start, p."end", p.seconds,
       p.unit_price, p.currency, rated.quantity, rated.amount, %(now)s
FROM ({_ACCESS_SQL.format(filters="")}) AS p(data_access_id, organization_id, provider_id, server_id, unit_price,
                                              currency, slot_start, start, "end", seconds)
{_rated_sql(at="p.start", seconds="p.seconds", units="1", price="p.unit_price", plan=f"'{ACCESS_PLAN}'")}
ORDER BY p.data_access_id, p.slot_start
ON CONFLICT (data_access_id, slot_start) DO NOTHING
"""  # noqa: S608


def metered_until() -> datetime | None:
    return MeterRun.objects.aggregate(m=Max("until"))["m"]


@dataclass(frozen=True)
class UsageLine:
    plan: str
    unit: str
    unit_price: Decimal
    quantity: Decimal
    seconds: Decimal
    down_seconds: Decimal
    amount: Decimal  # rounded to the cent


@dataclass(frozen=True)
class LeaseUsage:
    amount: Decimal
    currency: str
    seconds: Decimal
    down_seconds: Decimal
    lines: list[UsageLine]
    metered_until: datetime | None
    as_of: datetime


def lease_usage(*, lease: Lease, now: datetime | None = None) -> LeaseUsage:
    """Cost so far: the lease's usage records plus, rated the same way, what was held since the meter last ran."""
    now = now or timezone.now()
    watermark = metered_until()
    totals: dict[tuple[str, Decimal], list[Decimal]] = {}

    def add(plan: str, price: Decimal, quantity: Decimal, seconds: Decimal, down: Decimal, amount: Decimal) -> None:
        entry = totals.setdefault((plan, price), [Decimal(0)] * 4)
        for index, value in enumerate((quantity, seconds, down, amount)):
            entry[index] += value

    records = lease.usage.all()
    if watermark:
        records = records.filter(slot_start__lt=watermark)
    for row in records.values("plan", "unit_price").annotate(
        q=Sum("quantity"), s=Sum("seconds"), d=Sum("down_seconds"), a=Sum("amount")
    ):
        add(row["plan"], row["unit_price"], row["q"], row["s"], row["d"], row["a"])
    since = watermark or lease.start_at
    if since < now:
        for slot in slots(since=since, until=now, lease_id=lease.pk):
            rated = slot.rated()
            add(slot.plan, slot.unit_price, rated.quantity, slot.seconds, slot.down_seconds, rated.amount)
    lines = [
        UsageLine(
            plan=plan,
            unit=rating.UNIT_NAMES[plan],
            unit_price=price,
            quantity=q.quantize(Decimal("0.000001")),
            seconds=s,
            down_seconds=d,
            amount=rating.to_money(a),
        )
        for (plan, price), (q, s, d, a) in sorted(totals.items())
    ]
    return LeaseUsage(
        amount=sum((line.amount for line in lines), Decimal(0)),
        currency=lease.currency,
        seconds=sum((line.seconds for line in lines), Decimal(0)),
        down_seconds=sum((line.down_seconds for line in lines), Decimal(0)),
        lines=lines,
        metered_until=watermark,
        as_of=now,
    )
