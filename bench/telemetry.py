"""What does keeping the telemetry roll-ups current cost per card, next to writing the samples themselves?

    .venv/bin/python bench/telemetry.py                          # 10,000 cards, the hour half over, 3 runs
    .venv/bin/python bench/telemetry.py --cards 2000 --runs 1    # a quick look

The beat runs `inventory.telemetry.rollup()` every minute (CELERY_BEAT_SCHEDULE "telemetry-rollup"). In the steady
state each run re-aggregates the raw samples from `LATE_AFTER` (3 minutes) before its watermark, so about four
minutes of every card's samples, into the 1-minute table, then recomputes the current hour of the 1-hour table from
all of that hour's 1-minute rows: its cost grows with the cards and with the minutes into the hour. This bench builds
exactly that state and times one run:

- its own database (--database-url, else BENCH_TELEMETRY_DATABASE_URL, default
  postgres://postgres@127.0.0.1:5432/suanli_bench_telemetry; the name must contain "bench": the tables are emptied),
  created when missing, holding only the telemetry tables (`telemetry.CREATE_SQL` and today's partitions): the
  roll-up reads and writes nothing else, so nothing is migrated;
- per run, from empty tables: `--cards` cards (8 a server), the 1-minute rows of the hour so far up to
  `--minute-of-hour` minus four (as earlier roll-ups left them), the raw samples of the last four minutes (one per
  card every 10 s, sent through `telemetry.copy_samples`, one COPY), the watermark one minute back;
- baseline, same run: the COPY of one minute of every card's samples (cards x 6 rows), i.e. the rows ingest writes in
  the minute the roll-up has to keep up with;
- `telemetry.rollup(now=...)`, timed with PostgreSQL's CPU (`_common.CpuMeter` on the database's backends);
- after the runs: the on-disk size of a raw sample and a 1-minute row (table and indexes), for the retention maths.

Printed: roll-up seconds and PostgreSQL CPU seconds a minute, per 1,000 cards, the ratio to the minute's COPY, and
what that makes in PostgreSQL cores at 100,000 and 1,000,000 cards (CPU seconds a minute / 60), medians of `--runs`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402 (the bench folder is not a package)

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench_telemetry"
GPUS_PER_SERVER = 8
SAMPLE_EVERY_S = 10
RAW_MINUTES = 4  # LATE_AFTER (3 min) behind the watermark, plus the minute just finished

ONE_MINUTE_ROWS_SQL = """
INSERT INTO inventory_gpusample_1m (gpu_id, bucket, server_id, samples, utilization_pct, utilization_max,
    memory_used_mb, memory_used_max, temperature_c, temperature_max, power_w)
SELECT g, m, (g - 1) / %(per_server)s + 1, 6, 50 + (g %% 40), 90, 40000, 60000, 60, 70, 500
FROM generate_series(1, %(cards)s) AS g,
     generate_series(%(first)s::timestamptz, %(last)s::timestamptz, interval '1 minute') AS m
"""


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{len(os.sched_getaffinity(0))} CPUs ({model or platform.processor()}), load average {load}"


def sample_rows(cards: int, start: datetime, minutes: int) -> list[tuple]:
    extra = json.dumps({"fan_pct": 40})
    rows = []
    for second in range(0, minutes * 60, SAMPLE_EVERY_S):
        ts = start + timedelta(seconds=second)
        for gpu in range(1, cards + 1):
            server = (gpu - 1) // GPUS_PER_SERVER + 1
            rows.append((ts, gpu, server, 50.0 + gpu % 40, 40_000, 60.0, 500.0, 1_980, 0, 0, extra))
    return rows


def empty_tables() -> None:
    from django.db import connection

    from inventory import telemetry

    with connection.cursor() as cursor:
        cursor.execute(
            f"TRUNCATE {telemetry.RAW}, {telemetry.ONE_MINUTE}, {telemetry.ONE_HOUR}, {telemetry.BACKFILL}, "
            "inventory_telemetrywatermark"
        )


def one_run(args: argparse.Namespace, now: datetime, meter: common.CpuMeter) -> dict[str, float]:
    from django.db import connection, transaction

    from inventory import telemetry

    empty_tables()
    hour = now.replace(minute=0)
    raw_start = now - timedelta(minutes=RAW_MINUTES)
    with connection.cursor() as cursor:
        if raw_start > hour:  # the hour's minutes before the raw window, rolled up by earlier runs
            cursor.execute(
                ONE_MINUTE_ROWS_SQL,
                {
                    "cards": args.cards,
                    "per_server": GPUS_PER_SERVER,
                    "first": hour,
                    "last": raw_start - timedelta(minutes=1),
                },
            )
        cursor.execute(
            "INSERT INTO inventory_telemetrywatermark (name, upto) VALUES ('rollup', %s)", [now - timedelta(minutes=1)]
        )
    rows = sample_rows(args.cards, raw_start, RAW_MINUTES - 1)
    minute = sample_rows(args.cards, now - timedelta(minutes=1), 1)
    with transaction.atomic():
        telemetry.copy_samples(rows)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {telemetry.ONE_MINUTE}")  # noqa: S608 (ours)
        cursor.execute("CHECKPOINT")

    started = time.perf_counter()
    with transaction.atomic():  # baseline: the last minute's samples, in one COPY
        telemetry.copy_samples(minute)
    copy_s = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {telemetry.RAW}")  # noqa: S608 (ours)
        cursor.execute("CHECKPOINT")

    meter.start()
    started = time.perf_counter()
    done = telemetry.rollup(now=now + timedelta(seconds=5))
    rollup_s = time.perf_counter() - started
    cpu = meter.stop()
    pg_cpu_s = cpu["postgres"] / 100 * rollup_s
    print(
        f"  roll-up {rollup_s:.2f} s (PostgreSQL CPU {pg_cpu_s:.2f} s; {done['minutes']:,} minute rows, "
        f"{done['hours']:,} hour rows); COPY of the minute's {len(minute):,} samples {copy_s:.2f} s; "
        f"others on the machine {cpu['other']:.0f} % of one core",
        flush=True,
    )
    expected_minutes = args.cards * RAW_MINUTES
    if done["minutes"] != expected_minutes or done["hours"] != args.cards:
        raise SystemExit(f"the roll-up wrote {done}, expected {expected_minutes} minute and {args.cards} hour rows")
    return {"rollup_s": rollup_s, "pg_cpu_s": pg_cpu_s, "copy_s": copy_s}


def sizes() -> dict[str, float]:
    from django.db import connection

    from inventory import telemetry

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [telemetry.RAW],
        )
        raw_bytes = cursor.fetchone()[0] or 0
        cursor.execute(f"SELECT count(*) FROM {telemetry.RAW}")  # noqa: S608 (ours)
        raw_rows = cursor.fetchone()[0]
        cursor.execute(
            "SELECT pg_total_relation_size(%s), (SELECT count(*) FROM inventory_gpusample_1m)", [telemetry.ONE_MINUTE]
        )
        minute_bytes, minute_rows = cursor.fetchone()
    return {"raw": float(raw_bytes) / max(raw_rows, 1), "minute": float(minute_bytes) / max(minute_rows, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_TELEMETRY_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--cards", type=int, default=10_000, help="cards reporting (default 10,000)")
    parser.add_argument("--minute-of-hour", type=int, default=30, help="minutes into the hour (default 30, the mean)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if "bench" not in common.database_name(args.database_url):
        parser.error("the database name must contain 'bench': this script empties its telemetry tables")
    if not RAW_MINUTES <= args.minute_of_hour <= 59 or args.cards < GPUS_PER_SERVER or args.runs < 1:
        parser.error(f"--minute-of-hour {RAW_MINUTES}..59, --cards at least {GPUS_PER_SERVER}, --runs at least 1")
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DB_POOL"] = "0"
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    created = common.ensure_database(args.database_url)
    import django

    django.setup()
    from django.db import connection

    from inventory import telemetry

    today = datetime.now(UTC).date()
    now = datetime(today.year, today.month, today.day, 12, args.minute_of_hour, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(telemetry.CREATE_SQL)
        cursor.execute("SELECT version()")
        pg_version = cursor.fetchone()[0].split(" on ")[0]
    telemetry.ensure_partitions(today=today)
    print(f"machine: {machine()}; {pg_version}; Python {platform.python_version()}")
    print(
        f"database {common.database_name(args.database_url)} ({'created' if created else 'exists'}); {args.cards:,} "
        f"cards, {args.minute_of_hour} minutes into the hour, {args.runs} run(s)",
        flush=True,
    )
    connection.ensure_connection()
    meter = common.CpuMeter({"postgres": common.postgres_pids(args.database_url)})
    runs = []
    for n in range(args.runs):
        print(f"run {n + 1}:", flush=True)
        runs.append(one_run(args, now, meter))
    per_row = sizes()
    empty_tables()

    rollup_s = statistics.median(r["rollup_s"] for r in runs)
    pg_cpu_s = statistics.median(r["pg_cpu_s"] for r in runs)
    copy_s = statistics.median(r["copy_s"] for r in runs)
    ratio = statistics.median(r["rollup_s"] / r["copy_s"] for r in runs)
    per_k = pg_cpu_s / args.cards * 1000
    print()
    print(
        common.table(
            ["", "median", "per 1,000 cards"],
            [
                ["roll-up, a minute's run", f"{rollup_s:.2f} s", f"{rollup_s / args.cards * 1000:.3f} s"],
                ["  PostgreSQL CPU", f"{pg_cpu_s:.2f} s", f"{per_k:.3f} s"],
                ["COPY of the minute's samples (baseline)", f"{copy_s:.2f} s", f"{copy_s / args.cards * 1000:.3f} s"],
            ],
        )
    )
    print(f"roll-up / COPY of the same minute: {ratio:.2f} (median of the per-run ratios)")
    for fleet in (100_000, 1_000_000):
        print(
            f"at {fleet:,} cards, {args.minute_of_hour} minutes into the hour: {per_k * fleet / 1000:.0f} s of "
            f"PostgreSQL CPU a minute = {per_k * fleet / 1000 / 60:.2f} cores for the roll-up alone"
        )
    print(
        f"on disk: {per_row['raw']:.0f} bytes a raw sample (table and its two indexes), {per_row['minute']:.0f} bytes "
        f"a 1-minute row; a day of raw samples at 100,000 cards (8.64 x 10^8 rows): "
        f"{per_row['raw'] * 864e6 / 1e9:.0f} GB"
    )


if __name__ == "__main__":
    main()
