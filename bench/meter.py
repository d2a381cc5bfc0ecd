"""How long does the meter take to write a month of usage records, next to writing the same records raw?

    .venv/bin/python bench/meter.py                         # the whole month: 1,000,000 usage records, 3 runs
    .venv/bin/python bench/meter.py --hours 48 --runs 3     # the month's last 48 hours only (about 65,000 records)

Its own database (--database-url, else BENCH_METER_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/suanli_bench_meter; a DATABASE_URL exported for the tests is not followed, and a
database whose name lacks "bench" is refused, since the bench empties it), created when missing and migrated.

The month is bench/close_period.py's (the same `--leases`, `--records`, `--period`, `--seed`: 500 customers, 50
providers, whole servers, PFLOPS contracts and card-hour leases, built once and kept), and one lease in fifty has
each of its cards failed for half an hour in twenty (GPU health events: failed, then healthy 30 minutes later), so
the meter's down-time path is taken as in a real month.

The slice metered is the last `--hours` hours of the month (0, the default: all of it). Per run, each timed from an
empty slice (its usage records deleted, the table vacuumed) to its commit:
- meter: `billing.metering.meter(until=<the month's end>)` with the watermark one look-back after the slice's start,
  so it writes exactly the slice's records;
- INSERT ... SELECT: the same records (kept from the first meter run in `bench_meter_reference_<hours>`) inserted
  by one statement from that table;
- COPY: the same records sent by `COPY billing_usagerecord FROM STDIN` from the client (read out beforehand).
The reference table is made by the first meter run and kept: a later run of the bench (another version of the
meter) is checked field for field against it (every column but id and created_at), and says so.
Medians of `--runs` runs, records/s and the ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import timedelta
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import close_period  # noqa: E402 (the bench folder is not a package): its month

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench_meter"
COLUMNS = (
    'allocation_id, lease_id, organization_id, provider_id, server_id, plan, slot_start, start, "end", seconds, '
    "down_seconds, units, unit_price, currency, quantity, amount"
)

FAILURES_SQL = """
INSERT INTO inventory_gpuhealthevent (gpu_id, server_id, at, from_health, to_health, reason, handled_at, created_at)
SELECT a.gpu_id, a.server_id, h + e.offset_, e.from_, e.to_, 'bench', h, now()
FROM scheduler_allocation a
CROSS JOIN LATERAL generate_series(lower(a.period), upper(a.period) - interval '1 hour', interval '20 hours') AS h
CROSS JOIN (VALUES (interval '0', 'healthy', 'failed'), (interval '30 minutes', 'failed', 'healthy'))
    AS e(offset_, from_, to_)
WHERE a.lease_id %% %(every)s = 0
"""


def ensure_failures() -> int:
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM inventory_gpuhealthevent WHERE reason = 'bench'")
        (events,) = cursor.fetchone()
        if events:
            return events
        with transaction.atomic():
            cursor.execute(FAILURES_SQL, {"every": 50})
            events = cursor.rowcount
        cursor.execute("ANALYZE inventory_gpuhealthevent")
    return events


def reset(slice_start, *, whole: bool) -> None:
    """An empty slice, the table vacuumed, and the watermark where the meter starts the slice."""
    from django.db import connection, transaction

    from billing.metering import LOOKBACK

    with transaction.atomic(), connection.cursor() as cursor:
        if whole:
            cursor.execute("TRUNCATE billing_usagerecord")
        else:
            cursor.execute("DELETE FROM billing_usagerecord WHERE slot_start >= %s", [slice_start])
        cursor.execute("DELETE FROM billing_meterrun")
        cursor.execute(
            "INSERT INTO billing_meterrun (until, records, created_at) VALUES (%s, 0, now())",
            [slice_start + LOOKBACK],
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE billing_usagerecord")


def run_meter(period) -> tuple[float, int]:
    from billing import metering

    started = time.perf_counter()
    made = metering.meter(until=period.end)
    return time.perf_counter() - started, made


def run_insert_select(reference: str) -> tuple[float, int]:
    from django.db import connection, transaction

    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO billing_usagerecord ({COLUMNS}, created_at) SELECT {COLUMNS}, now() FROM {reference}"
        )
        made = cursor.rowcount
    return time.perf_counter() - started, made


def read_out(reference: str) -> bytes:
    from django.db import connection

    connection.ensure_connection()
    chunks = []
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY (SELECT {COLUMNS}, now() FROM {reference}) TO STDOUT") as copy:
            for chunk in copy:
                chunks.append(bytes(chunk))
    return b"".join(chunks)


def run_copy(data: bytes) -> tuple[float, int]:
    from django.db import connection, transaction

    connection.ensure_connection()
    started = time.perf_counter()
    with transaction.atomic(), connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY billing_usagerecord ({COLUMNS}, created_at) FROM STDIN") as copy:
            for start in range(0, len(data), 1 << 20):
                copy.write(data[start : start + (1 << 20)])
        made = cursor.rowcount
    return time.perf_counter() - started, made


def differences(reference: str, slice_start) -> int:
    """Records of the slice not in the reference, and the reverse (every column but id and created_at)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {COLUMNS} FROM billing_usagerecord WHERE slot_start >= %(s)s "
            f"EXCEPT ALL SELECT {COLUMNS} FROM {reference}) AS extra) + "
            f"(SELECT count(*) FROM (SELECT {COLUMNS} FROM {reference} EXCEPT ALL "
            f"SELECT {COLUMNS} FROM billing_usagerecord WHERE slot_start >= %(s)s) AS missing)",
            {"s": slice_start},
        )
        return cursor.fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--hours", type=int, default=0, help="meter the month's last HOURS hours (0: all of it)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--period", default="2026-10")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_METER_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    if "bench" not in urlsplit(args.database_url).path:
        raise SystemExit(f"refusing {args.database_url}: the bench empties its database; name it *bench*")

    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DB_POOL"] = "0"
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    close_period.ensure_database(args.database_url)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from billing import invoicing

    settings.DEBUG = False  # no query log kept in memory while timing
    call_command("migrate", verbosity=0)
    period = invoicing.period_of(args.period)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    print(f"machine: {close_period.machine()}; PostgreSQL {pg_version}; Python {platform.python_version()}")
    print(f"database: {urlsplit(args.database_url).path.lstrip('/')}; platform time zone {settings.PLATFORM_TIME_ZONE}")

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM scheduler_lease")
        leases = cursor.fetchone()[0]
    if leases != args.leases:  # the month's usage records are the meter's here, so only the leases are counted
        started = time.perf_counter()
        close_period.build_month(period, args.leases, args.records, args.seed)
        with connection.cursor() as cursor:  # references of an earlier month are no use
            cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", ["bench\\_meter\\_reference\\_%"])
            for (table,) in cursor.fetchall():
                cursor.execute(f"DROP TABLE {table}")
        print(f"built {args.period} in {time.perf_counter() - started:.1f} s")
    events = ensure_failures()
    whole = args.hours <= 0
    slice_start = period.start if whole else period.end - timedelta(hours=args.hours)
    reference = f"bench_meter_reference_{0 if whole else args.hours}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [reference])
        have_reference = cursor.fetchone()[0]
    print(f"{args.period}: {args.leases:,} leases, {events:,} health events; metering from {slice_start.isoformat()}")

    meters, inserts, copies, made = [], [], [], None
    for run in range(args.runs):
        reset(slice_start, whole=whole)
        seconds, made = run_meter(period)
        meters.append(seconds)
        with connection.cursor() as cursor:
            if not have_reference:
                cursor.execute(
                    f"CREATE TABLE {reference} AS SELECT {COLUMNS} FROM billing_usagerecord WHERE slot_start >= %s",
                    [slice_start],
                )
                have_reference = True
                print(f"  reference: the {made:,} records of this first meter run, kept in {reference}")
            elif run == 0:
                diff = differences(reference, slice_start)
                verdict = "the same" if not diff else "NOT THE SAME"
                print(f"  the meter's records against {reference}: {diff} differ ({verdict})")
        data = read_out(reference)
        reset(slice_start, whole=whole)
        insert, inserted = run_insert_select(reference)
        inserts.append(insert)
        reset(slice_start, whole=whole)
        copy_seconds, copied = run_copy(data)
        copies.append(copy_seconds)
        assert made == inserted == copied, (made, inserted, copied)
        print(
            f"  run {run + 1}: meter {seconds:7.2f} s ({made:,} records)   INSERT ... SELECT {insert:6.2f} s   "
            f"COPY {copy_seconds:6.2f} s"
        )
    reset(slice_start, whole=whole)
    run_meter(period)  # leave the month metered
    meter, insert, copy = (statistics.median(x) for x in (meters, inserts, copies))
    print(f"\nmedians of {args.runs} runs ({made:,} records):")
    print(
        f"  meter              {meter:8.2f} s  {made / meter:12,.0f} records/s  {1e6 * meter / made:8.1f} us a record"
    )
    print(f"  INSERT ... SELECT  {insert:8.2f} s  {made / insert:12,.0f} records/s")
    print(f"  COPY               {copy:8.2f} s  {made / copy:12,.0f} records/s")
    ratio_insert = statistics.median(m / i for m, i in zip(meters, inserts, strict=True))
    ratio_copy = statistics.median(m / c for m, c in zip(meters, copies, strict=True))
    print(f"  meter / INSERT ... SELECT = {ratio_insert:.2f}   meter / COPY = {ratio_copy:.2f}")


if __name__ == "__main__":
    main()
