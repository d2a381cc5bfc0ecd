"""GPU telemetry storage: raw samples in daily partitions, 1-minute and 1-hour roll-ups, and range queries.

Why this shape (100,000 GPUs every 10 s is 10,000 rows/s, ~860 M rows a day):
- raw samples go to `inventory_gpusample`, RANGE-partitioned by day on `ts`; rows arrive by COPY, carry no
  primary key (a report is de-duplicated once, by its `seq`, before its rows are written), and expiry is
  `DROP TABLE` of a whole day instead of a DELETE that would bloat the table;
- `inventory_gpusample_1m` / `_1h` hold per-GPU aggregates keyed (gpu_id, bucket) and are upserted, so a
  roll-up can be recomputed for any window any number of times with the same result;
- charts read the coarsest table whose bucket fits the requested step, so any range costs about the same.
Late samples (an agent's spool draining after an outage) are noted per server and minute in
`inventory_telemetrybackfill`, and the next roll-up recomputes exactly those minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction

from accounts.databases import read_alias

RAW = "inventory_gpusample"
ONE_MINUTE = "inventory_gpusample_1m"
ONE_HOUR = "inventory_gpusample_1h"
BACKFILL = "inventory_telemetrybackfill"

# Columns of a raw sample, in COPY order. `extra` keeps every other field the agent sent (jsonb).
SAMPLE_COLUMNS = (
    "ts",
    "gpu_id",
    "server_id",
    "utilization_pct",
    "memory_used_mb",
    "temperature_c",
    "power_w",
    "sm_clock_mhz",
    "ecc_sbe",
    "ecc_dbe",
    "extra",
)
SERIES_FIELDS = ("utilization_pct", "memory_used_mb", "temperature_c", "power_w")

CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {RAW} (
    ts timestamptz NOT NULL,
    gpu_id bigint NOT NULL,
    server_id bigint NOT NULL,
    utilization_pct real,
    memory_used_mb integer,
    temperature_c real,
    power_w real,
    sm_clock_mhz integer,
    ecc_sbe bigint,
    ecc_dbe bigint,
    extra jsonb
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS {RAW}_gpu_ts ON {RAW} (gpu_id, ts);
CREATE INDEX IF NOT EXISTS {RAW}_server_ts ON {RAW} (server_id, ts);
CREATE TABLE IF NOT EXISTS {ONE_MINUTE} (
    gpu_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    server_id bigint NOT NULL,
    samples integer NOT NULL,
    utilization_pct real,
    utilization_max real,
    memory_used_mb real,
    memory_used_max integer,
    temperature_c real,
    temperature_max real,
    power_w real,
    PRIMARY KEY (gpu_id, bucket)
);
CREATE INDEX IF NOT EXISTS {ONE_MINUTE}_server_bucket ON {ONE_MINUTE} (server_id, bucket);
CREATE INDEX IF NOT EXISTS {ONE_MINUTE}_bucket ON {ONE_MINUTE} (bucket);
CREATE TABLE IF NOT EXISTS {ONE_HOUR} (LIKE {ONE_MINUTE} INCLUDING ALL);
CREATE TABLE IF NOT EXISTS {BACKFILL} (
    server_id bigint NOT NULL,
    minute timestamptz NOT NULL,
    PRIMARY KEY (server_id, minute)
);
CREATE TABLE IF NOT EXISTS inventory_telemetrywatermark (
    name text PRIMARY KEY,
    upto timestamptz NOT NULL
);
"""
DROP_SQL = f"DROP TABLE IF EXISTS {RAW}, {ONE_MINUTE}, {ONE_HOUR}, {BACKFILL}, inventory_telemetrywatermark CASCADE;"

# Each roll-up re-aggregates this far behind its watermark, for reports that were in flight when the last one ran.
LATE_AFTER = timedelta(minutes=3)
# A report older than this when it arrives is "late": its minutes are queued for re-aggregation. Less than LATE_AFTER
# by more than a request can take, so a report whose request started before a roll-up and committed after it (its
# minute then behind the next look-back) is queued too.
BACKFILL_AFTER = LATE_AFTER - timedelta(seconds=90)


def _partition_name(day: date) -> str:
    return f"{RAW}_{day:%Y%m%d}"


def ensure_partitions(*, today: date | None = None, ahead_days: int = 2) -> list[str]:
    """Create the daily partitions covering the retention window and `ahead_days` ahead (idempotent)."""
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=settings.SUANLI_TELEMETRY_RAW_DAYS)
    created = []
    with connection.cursor() as cursor:
        day = first
        while day <= today + timedelta(days=ahead_days):
            name = _partition_name(day)
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {RAW} "  # noqa: S608 (names are ours)
                f"FOR VALUES FROM ('{day.isoformat()}T00:00:00+00') "
                f"TO ('{(day + timedelta(days=1)).isoformat()}T00:00:00+00')"
            )
            created.append(name)
            day += timedelta(days=1)
    return created


_known_days: set[date] = set()


def ensure_partition_for(day: date) -> None:
    """Make sure the raw partition of `day` exists; checked once per day per process, so the day's first
    report creates it even when the maintenance job has not run. Call it outside a report's transaction."""
    if day in _known_days:
        return
    name = _partition_name(day)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is None:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {RAW} "
                f"FOR VALUES FROM ('{day.isoformat()}T00:00:00+00') "
                f"TO ('{(day + timedelta(days=1)).isoformat()}T00:00:00+00')"
            )
    _known_days.add(day)


def drop_expired(*, today: date | None = None) -> list[str]:
    """Drop raw partitions past retention and delete roll-ups past theirs (idempotent)."""
    today = today or datetime.now(UTC).date()
    oldest_kept = today - timedelta(days=settings.SUANLI_TELEMETRY_RAW_DAYS)
    dropped = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [RAW],
        )
        for (name,) in cursor.fetchall():
            day = datetime.strptime(name.rsplit("_", 1)[1], "%Y%m%d").date()  # noqa: DTZ007 (a date only)
            if day < oldest_kept:
                cursor.execute(f"DROP TABLE IF EXISTS {name}")
                dropped.append(name)
                _known_days.discard(day)
        now = datetime.now(UTC)
        cursor.execute(
            f"DELETE FROM {ONE_MINUTE} WHERE bucket < %s",  # noqa: S608
            [now - timedelta(days=settings.SUANLI_TELEMETRY_1M_DAYS)],
        )
        cursor.execute(
            f"DELETE FROM {ONE_HOUR} WHERE bucket < %s",  # noqa: S608
            [now - timedelta(days=settings.SUANLI_TELEMETRY_1H_DAYS)],
        )
    return dropped


def raw_window(now: datetime) -> tuple[datetime, datetime]:
    """The span raw partitions exist for: samples outside it are not stored."""
    start = datetime.combine(now.date() - timedelta(days=settings.SUANLI_TELEMETRY_RAW_DAYS), datetime.min.time(), UTC)
    return start, now + timedelta(days=1)


def copy_samples(rows: Iterable[Sequence[Any]]) -> int:
    """Write raw sample rows (SAMPLE_COLUMNS order) with COPY; must run inside the caller's transaction."""
    count = 0
    with connection.cursor() as cursor:
        raw_cursor = cursor.cursor  # the psycopg 3 cursor under Django's wrapper
        with raw_cursor.copy(f"COPY {RAW} ({', '.join(SAMPLE_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count


def note_backfill(server_id: int, timestamps: Iterable[datetime]) -> None:
    minutes = {ts.replace(second=0, microsecond=0) for ts in timestamps}
    if not minutes:
        return
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {BACKFILL} (server_id, minute) VALUES (%s, %s) ON CONFLICT DO NOTHING",  # noqa: S608
            [(server_id, minute) for minute in sorted(minutes)],
        )


_ROLLUP_1M = f"""
INSERT INTO {ONE_MINUTE} AS r (gpu_id, bucket, server_id, samples, utilization_pct, utilization_max,
    memory_used_mb, memory_used_max, temperature_c, temperature_max, power_w)
SELECT gpu_id, date_trunc('minute', ts), max(server_id), count(*), avg(utilization_pct), max(utilization_pct),
    avg(memory_used_mb), max(memory_used_mb), avg(temperature_c), max(temperature_c), avg(power_w)
FROM {RAW} WHERE ts >= %(start)s AND ts < %(end)s {{server_filter}}
GROUP BY gpu_id, date_trunc('minute', ts)
ON CONFLICT (gpu_id, bucket) DO UPDATE SET samples = EXCLUDED.samples,
    utilization_pct = EXCLUDED.utilization_pct, utilization_max = EXCLUDED.utilization_max,
    memory_used_mb = EXCLUDED.memory_used_mb, memory_used_max = EXCLUDED.memory_used_max,
    temperature_c = EXCLUDED.temperature_c, temperature_max = EXCLUDED.temperature_max, power_w = EXCLUDED.power_w
"""  # noqa: S608

_ROLLUP_1H = f"""
INSERT INTO {ONE_HOUR} AS r (gpu_id, bucket, server_id, samples, utilization_pct, utilization_max,
    memory_used_mb, memory_used_max, temperature_c, temperature_max, power_w)
SELECT gpu_id, date_trunc('hour', bucket), max(server_id), sum(samples),
    sum(utilization_pct * samples) / sum(samples), max(utilization_max),
    sum(memory_used_mb * samples) / sum(samples), max(memory_used_max),
    sum(temperature_c * samples) / sum(samples), max(temperature_max), sum(power_w * samples) / sum(samples)
FROM {ONE_MINUTE} WHERE bucket >= %(start)s AND bucket < %(end)s {{server_filter}}
GROUP BY gpu_id, date_trunc('hour', bucket)
ON CONFLICT (gpu_id, bucket) DO UPDATE SET samples = EXCLUDED.samples,
    utilization_pct = EXCLUDED.utilization_pct, utilization_max = EXCLUDED.utilization_max,
    memory_used_mb = EXCLUDED.memory_used_mb, memory_used_max = EXCLUDED.memory_used_max,
    temperature_c = EXCLUDED.temperature_c, temperature_max = EXCLUDED.temperature_max, power_w = EXCLUDED.power_w
"""  # noqa: S608


def _floor(moment: datetime, unit: str) -> datetime:
    moment = moment.replace(second=0, microsecond=0)
    return moment.replace(minute=0) if unit == "hour" else moment


def rollup(*, now: datetime | None = None) -> dict[str, int]:
    """Aggregate complete minutes (and the hours they touch) since the last run, plus noted late minutes.

    Idempotent and safe to run concurrently: an advisory lock lets one run at a time, and every write is
    an upsert of a full recomputation.
    """
    now = now or datetime.now(UTC)
    end = _floor(now, "minute")
    done = {"minutes": 0, "hours": 0, "late_minutes": 0}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext('suanli.telemetry.rollup'))")
        if not cursor.fetchone()[0]:
            return done
        cursor.execute("SELECT upto FROM inventory_telemetrywatermark WHERE name = 'rollup'")
        row = cursor.fetchone()
        start = row[0] if row else end - timedelta(minutes=10)
        # Re-aggregate a few minutes behind the watermark: reports in flight when it last ran.
        start = min(start - LATE_AFTER, end)
        if start < end:
            cursor.execute(_ROLLUP_1M.format(server_filter=""), {"start": start, "end": end})
            done["minutes"] = cursor.rowcount
            cursor.execute(
                _ROLLUP_1H.format(server_filter=""),
                {"start": _floor(start, "hour"), "end": _floor(end, "hour") + timedelta(hours=1)},
            )
            done["hours"] = cursor.rowcount
        cursor.execute(f"DELETE FROM {BACKFILL} RETURNING server_id, minute")  # noqa: S608
        late = cursor.fetchall()
        for server_id, minute in late:
            window = {"start": minute, "end": minute + timedelta(minutes=1), "server": server_id}
            cursor.execute(_ROLLUP_1M.format(server_filter="AND server_id = %(server)s"), window)
            hour = _floor(minute, "hour")
            cursor.execute(
                _ROLLUP_1H.format(server_filter="AND server_id = %(server)s"),
                {"start": hour, "end": hour + timedelta(hours=1), "server": server_id},
            )
        done["late_minutes"] = len(late)
        cursor.execute(
            "INSERT INTO inventory_telemetrywatermark (name, upto) VALUES ('rollup', %s) "
            "ON CONFLICT (name) DO UPDATE SET upto = GREATEST(inventory_telemetrywatermark.upto, EXCLUDED.upto)",
            [end],
        )
    return done


def choose_source(step: int, since: datetime, now: datetime) -> str:
    """The coarsest table whose bucket is no wider than `step` and that still holds `since`."""
    raw_start, _ = raw_window(now)
    if step >= 3600:
        return ONE_HOUR
    if step >= 60 or since < raw_start:
        return ONE_MINUTE
    return RAW


def series(*, server_id: int, since: datetime, until: datetime, step: int, now: datetime | None = None) -> dict:
    """Per-GPU points in [since, until) at `step` seconds: averages, from the table that fits the step."""
    now = now or datetime.now(UTC)
    source = choose_source(step, since, now)
    time_column = "ts" if source == RAW else "bucket"
    averages = ", ".join(f"avg({field})" for field in SERIES_FIELDS)
    query = (
        f"SELECT gpu_id, date_bin(make_interval(secs => %(step)s), {time_column}, %(origin)s) AS t, {averages} "  # noqa: S608
        f"FROM {source} WHERE server_id = %(server)s AND {time_column} >= %(since)s AND {time_column} < %(until)s "
        "GROUP BY gpu_id, t ORDER BY gpu_id, t"
    )
    params = {
        "step": step,
        "origin": datetime(2000, 1, 1, tzinfo=UTC),
        "server": server_id,
        "since": since,
        "until": until,
    }
    points: dict[int, list[dict]] = {}
    # Charts read the replica when there is one (accounts/databases.py): at most the replication delay behind.
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(query, params)
        for gpu_id, t, *values in cursor.fetchall():
            point = {"t": t.isoformat()}
            point.update(
                {name: (round(v, 2) if v is not None else None) for name, v in zip(SERIES_FIELDS, values, strict=True)}
            )
            points.setdefault(gpu_id, []).append(point)
    return {"source": source.removeprefix("inventory_gpusample").lstrip("_") or "raw", "points": points}


def maintain(*, today: date | None = None) -> dict[str, list[str]]:
    """The daily housekeeping: partitions ahead created, expired ones dropped (idempotent)."""
    return {"ensured": ensure_partitions(today=today), "dropped": drop_expired(today=today)}
