"""How many GPU samples/s can the platform ingest? Signed agent reports against the production server.

    .venv/bin/python bench/ingest.py                       # 200 servers x 8 GPUs, 3 x 20 s, 2 gunicorn workers
    .venv/bin/python bench/ingest.py --servers 50 --seconds 5 --repeats 1 --profile 50      # a quick look

What it does, loopback only, and stops by itself:
1. its own database (`--database-url` or BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/suanli_bench;
   the name must contain "bench"): created when missing, migrated, its raw telemetry emptied; then a provider with
   `--servers` servers of 8 H100 SXM cards each, registered and enrolled through the services behind the API
   (`server_register`, then `agent_enroll`, which is what POST /api/v1/agent/enroll/ calls; the API itself is
   rate-limited to 30 enrolments a minute);
2. the production server: `gunicorn config.wsgi --workers W --threads 1` (sync workers), DJANGO_DEBUG=0, logging
   at WARNING, Redis db 8 as the cache, the per-agent report rate limit counted but out of reach;
3. three measurements per repeat, `--repeats` times, medians printed at the end (the server and card tables
   vacuumed before each, as autovacuum keeps them on a production server; this machine's PostgreSQL runs without
   it, so every earlier run's dead row versions stayed in them):
   - ingest: `--load-procs` spawned processes with `--concurrency` connections in flight in all post signed
     8-GPU reports (the agent's shape and size, ~5 KB), each server's `seq` increasing, for `--seconds` after
     `--warmup`; 202s, other statuses and errors are counted, latency p50/p95 taken per request;
   - bare view: the same load generator GETs `/healthz` (a bare Django JSON view) through the same gunicorn;
   - COPY: the same rows (same columns, same partitioned table) written by `COPY ... FROM STDIN` from one psycopg
     connection, as one statement and again as one 8-row COPY + commit per report (1,000 reports);
   and the CPU each party used during the ingest window (gunicorn, every postgres process, the load generator);
4. with gunicorn stopped, `--profile N` reports through the ingest code in this process: time per step (verify,
   parse, store, and within store the health rules, the claim + locked read of the cards, the one statement
   that writes the samples and the cards, and the commit), per SQL statement, and the
   whole request through Django's handler next to GET /healthz.
The machine's cores are shared by the load generator, gunicorn and PostgreSQL, as on any one-box deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402 (the bench folder is not a package)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench"
REPORT_PATH = "/api/v1/agent/reports/"
GPUS_PER_SERVER = 8
GPU_MODEL_SLUG = "h100-sxm5-80gb"  # NVML name "NVIDIA H100 80GB HBM3"
COPY_REPORTS = 1000  # 8-row COPY + commit per report: the price of a commit per report, without Django
TARGET_SAMPLES_PER_S = 10_000  # DESIGN.md: 100,000 GPUs reporting every 10 s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--servers", type=int, default=200, help="enrolled servers of 8 GPUs (default 200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each run (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight in all (default 16)")
    parser.add_argument("--load-procs", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    parser.add_argument("--copy-rows", type=int, default=100_000, help="rows per bulk COPY run (default 100,000)")
    parser.add_argument("--profile", type=int, default=100, help="reports profiled in-process; 0 skips (100)")
    args = parser.parse_args(argv)
    if "bench" not in common.database_name(args.database_url):
        parser.error("the database name must contain 'bench': this script empties its raw telemetry")
    if not args.load_procs <= args.concurrency <= args.servers:
        parser.error("need --load-procs <= --concurrency <= --servers (each connection drives its own servers)")
    return args


def server_env(database_url: str) -> dict[str, str]:
    """The environment of the production server under test (and of this process's Django)."""
    return common.server_env(database_url, bench_name="ingest", redis_db=8)


# --- setup -----------------------------------------------------------------------------------------------


def setup_database(url: str) -> None:
    common.migrate_database(url)
    from django.db import connection

    from inventory import telemetry

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {telemetry.RAW}")  # the bench's own samples from earlier runs
    telemetry.ensure_partitions()


def vacuum(url: str) -> None:
    """What autovacuum keeps in production: the server and card rows every report rewrites, without the dead
    versions of earlier runs (this machine's PostgreSQL runs without autovacuum, so they would pile up and every
    later run would read through them)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) inventory_server, inventory_gpu")


def make_fleet(count: int) -> list[dict[str, Any]]:
    """`count` servers of 8 H100s in a fresh provider organisation, each enrolled: agent id, secret, cards."""
    from accounts.models import User
    from accounts.services import organization_create
    from inventory import ingest, services
    from inventory.models import Gpu, GpuModel

    tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]
    user = User.objects.create_user(email=f"bench-{tag}@example.invalid", password=None)
    org = organization_create(user=user, name=f"bench {tag}", kind="provider")
    model = GpuModel.objects.get(slug=GPU_MODEL_SLUG)
    fleet = []
    for n in range(count):
        server, token = services.server_register(
            org=org,
            name=f"bench-{tag}-{n:05d}",
            region="bench",
            gpu_model=model,
            gpu_count=GPUS_PER_SERVER,
            cpu_cores=192,
            ram_gb=2048,
            disk_gb=30_000,
        )
        cards = [
            {"index": i, "uuid": f"GPU-{uuid.uuid4()}", "name": model.nvml_names[0], "memory_total_mb": 81_559}
            for i in range(GPUS_PER_SERVER)
        ]
        server, secret = ingest.agent_enroll(enrollment_token=token, hostname=f"bench-{n}", gpus=cards)
        fleet.append({"agent_id": str(server.agent_id), "secret": secret, "server": server.pk, "uuids": []})
    by_server: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for uuid_, pk, server_id in Gpu.objects.filter(server__organization=org).values_list("uuid", "pk", "server_id"):
        by_server[server_id].append((uuid_, pk))
    for entry in fleet:
        cards = sorted(by_server[entry["server"]])
        entry["uuids"] = [u for u, _ in cards]
        entry["gpu_pks"] = [pk for _, pk in cards]
    return fleet


# --- the measurements ------------------------------------------------------------------------------------


def run_http(args: argparse.Namespace, port: int, mode: str, fleet: list[dict], groups: dict) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "mode": mode,
        "path": REPORT_PATH if mode == "report" else "/healthz",
        "threads": max(1, args.concurrency // args.load_procs),
        "warmup": args.warmup,
        "seconds": args.seconds,
        # Microseconds since the epoch: larger than any seq an earlier run reached, so every report is new.
        "seq_base": time.time_ns() // 1000,
        "agents": [[f["agent_id"], f["secret"], f["uuids"]] for f in fleet] if mode == "report" else [],
    }
    result = common.run_load(spec, args.load_procs, cpu_groups=groups if mode == "report" else None)
    result["per_s"] = result["requests"] / args.seconds
    wanted = 202 if mode == "report" else 200
    result["ok"] = result["statuses"].get(wanted, 0)
    result["ok_per_s"] = result["ok"] / args.seconds
    result["bad"] = result["requests"] - result["ok"]
    return result


def copy_rows(fleet: list[dict], count: int, at: datetime) -> list[tuple]:
    """Rows as report_ingest builds them from the agent's samples: same columns, same values, same `extra`."""
    from inventory import telemetry

    rng = random.Random(7)
    skip = {*telemetry.SAMPLE_COLUMNS, "uuid", "index", "name"}  # parse_report keeps neither index nor name
    rows = []
    for n in range(count):
        entry = fleet[(n // GPUS_PER_SERVER) % len(fleet)]
        index = n % GPUS_PER_SERVER
        sample = common.sample_values(rng, entry["uuids"][index], index)
        extra = {k: v for k, v in sample.items() if k not in skip}
        rows.append(
            (
                at,
                entry["gpu_pks"][index],
                entry["server"],
                sample["utilization_pct"],
                sample["memory_used_mb"],
                sample["temperature_c"],
                sample["power_w"],
                sample["sm_clock_mhz"],
                sample["ecc_sbe"],
                sample["ecc_dbe"],
                json.dumps(extra),
            )
        )
    return rows


def run_copy(url: str, fleet: list[dict], count: int) -> dict[str, float]:
    """COPY `count` rows as one statement, then the first COPY_REPORTS reports' worth as an 8-row COPY + commit each."""
    import psycopg

    from inventory import telemetry

    statement = f"COPY {telemetry.RAW} ({', '.join(telemetry.SAMPLE_COLUMNS)}) FROM STDIN"
    rows = copy_rows(fleet, count, datetime.now(UTC))
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        bulk_s = time.perf_counter() - started
        reports = min(COPY_REPORTS, count // GPUS_PER_SERVER)
        started = time.perf_counter()
        for n in range(reports):
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows[n * GPUS_PER_SERVER : (n + 1) * GPUS_PER_SERVER]:
                    copy.write_row(row)
            conn.commit()
        small_s = time.perf_counter() - started
    return {"bulk_rows_per_s": count / bulk_s, "report_rows_per_s": reports * GPUS_PER_SERVER / small_s}


# --- where the time goes (in-process) --------------------------------------------------------------------


class StepClock:
    """Wall time per named step, summed over calls, by wrapping functions in place (undone by `restore`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attribute: str, step: str) -> None:
        original = getattr(owner, attribute)
        had_own = attribute in vars(owner)  # `connection.commit` is the class's: delete the wrapper, not set back

        def timed(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.seconds[step] += time.perf_counter() - started

        setattr(owner, attribute, timed)
        self._undo.append(lambda: setattr(owner, attribute, original) if had_own else delattr(owner, attribute))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _sql_kind(sql: str) -> str:
    """The verb and the first table named: "UPDATE inventory_gpu", "SELECT inventory_server", ..."""
    table = re.search(r'\b(?:FROM|UPDATE|INTO)\s+"?(\w+)', sql, re.IGNORECASE)
    return f"{sql.split(None, 1)[0].upper()} {table.group(1) if table else ''}".strip()


def profile(fleet: list[dict], count: int) -> str:
    """Run `count` reports through the ingest code in this process (nothing else running) and say where the
    time goes: per step, per SQL statement, and the whole request through Django's handler."""
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from agents import signing
    from inventory import health, ingest

    rng = random.Random(11)
    seq = [time.time_ns() // 1000]

    def next_report(n: int) -> tuple[bytes, dict[str, str]]:
        entry = fleet[n % len(fleet)]
        seq[0] += 1
        now = time.time()
        body = common.report_body(rng, seq[0], entry["uuids"], now)
        return body, signing.headers(entry["agent_id"], entry["secret"], body, timestamp=int(now))

    def one(n: int) -> None:
        body, headers = next_report(n)
        now = timezone.now()
        started = time.perf_counter()
        server = ingest.authenticate_report(
            agent_id=headers[signing.HEADER_ID],
            timestamp=headers[signing.HEADER_TIMESTAMP],
            signature=headers[signing.HEADER_SIGNATURE],
            body=body,
            now=now,
        )
        verified = time.perf_counter()
        report = ingest.parse_report(body)
        parsed = time.perf_counter()
        result = ingest.report_ingest(server=server, report=report, now=now)
        assert result.accepted, result
        clock.seconds["1 verify (authenticate_report)"] += verified - started
        clock.seconds["2 parse (parse_report)"] += parsed - verified
        clock.seconds["3 store (report_ingest)"] += time.perf_counter() - parsed

    sql_time: dict[str, float] = defaultdict(float)
    sql_calls: dict[str, int] = defaultdict(int)

    def sql_timer(execute: Callable, sql: str, params: Any, many: bool, context: dict) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            sql_time[_sql_kind(sql)] += time.perf_counter() - started
            sql_calls[_sql_kind(sql)] += 1

    clock = StepClock()
    for n in range(min(50, count)):  # warm caches, connections, the day's partition
        one(n)
    clock.seconds.clear()
    clock.wrap(health, "evaluate", "3a health rules (health.evaluate, x8)")
    clock.wrap(ingest, "_claim", "3b claim of the seq + read of the locked cards (_claim)")
    clock.wrap(ingest, "_write", "3c samples + the 8 Gpu rows, one statement (_write)")
    clock.wrap(connection, "commit", "3d commit")
    # ingest's own statements run on a psycopg cursor of their own (prepared), not through Django's wrappers.
    execute = ingest._execute
    ingest._execute = lambda sql, params, **kw: sql_timer(lambda s, p, _m, _c: execute(s, p, **kw), sql, params, 0, {})
    try:
        with connection.execute_wrapper(sql_timer):
            for n in range(count):
                one(n)
    finally:
        ingest._execute = execute
    clock.restore()

    warnings.filterwarnings("ignore", message="No directory at")  # whitenoise: no collectstatic for a bench
    client = Client(HTTP_HOST="127.0.0.1")  # the whole request: middleware, URL routing, DRF view
    started = time.perf_counter()
    for n in range(count):
        body, headers = next_report(n)
        response = client.post(REPORT_PATH, data=body, content_type="application/json", headers=headers)
        assert response.status_code == 202, response.content
    whole = (time.perf_counter() - started) / count
    started = time.perf_counter()
    for _ in range(count):
        client.get("/healthz")
    healthz = (time.perf_counter() - started) / count

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"in-process, {count} reports of {GPUS_PER_SERVER} GPUs, gunicorn stopped, load average {load}:"]
    lines.append("  steps (wall ms per report, DB round trips included):")
    for step in sorted(clock.seconds):
        indent = "    " if step[1] == " " else "      "
        lines.append(f"{indent}{step:<{56 - len(indent)}} {1000 * clock.seconds[step] / count:7.3f}")
    steps = sum(seconds for step, seconds in clock.seconds.items() if step[1] == " ") / count
    lines.append("  SQL through Django's cursor (ms per report, statements per report):")
    for kind in sorted(sql_time, key=sql_time.__getitem__, reverse=True):
        lines.append(f"    {kind:<52} {1000 * sql_time[kind] / count:7.3f}  x{sql_calls[kind] / count:.2f}")
    lines.append(f"  {'whole POST through Django (test client), ms per report':<54} {1000 * whole:7.3f}")
    lines.append(f"    {'of which middleware, routing, DRF view':<52} {1000 * (whole - steps):7.3f}")
    lines.append(f"  {'GET /healthz through the same handler, ms':<54} {1000 * healthz:7.3f}")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = server_env(args.database_url)
    os.environ.update(env)
    os.chdir(common.REPO)
    setup_database(args.database_url)
    started = time.perf_counter()
    fleet = make_fleet(args.servers)
    print(
        f"{len(fleet)} servers x {GPUS_PER_SERVER} GPUs enrolled in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    from django.db import connections

    connections.close_all()

    runs: list[dict[str, float]] = []
    logdir = tempfile.mkdtemp(prefix="suanli-bench-ingest-")
    server = common.Gunicorn(env, workers=args.workers, log_path=os.path.join(logdir, "gunicorn.log"))
    try:
        server.wait_ready()
        print(
            f"gunicorn (pid {server.proc.pid}) on 127.0.0.1:{server.port}, {args.workers} sync workers; "
            f"load: {args.load_procs} processes, {args.concurrency} in flight; "
            f"{args.repeats} x ({args.warmup:g} s warm-up + {args.seconds:g} s)",
            flush=True,
        )
        groups = {"gunicorn": server.pids, "postgres": common.postgres_pids(args.database_url)}
        for repeat in range(1, args.repeats + 1):
            vacuum(args.database_url)
            report = run_http(args, server.port, "report", fleet, groups)
            bare = run_http(args, server.port, "get", fleet, groups)
            copy = run_copy(args.database_url, fleet, args.copy_rows)
            runs.append(figures(report, bare, copy))
            print(
                f"run {repeat}: {runs[-1]['ingest GPU samples/s']:,.0f} samples/s "
                f"(p50 {report['p50_ms']:.0f} ms), /healthz {bare['ok_per_s']:,.0f} req/s, "
                f"COPY {copy['bulk_rows_per_s']:,.0f} rows/s; statuses {report['statuses']} and {bare['statuses']}, "
                f"errors {(report['errors'] + bare['errors'])[:3]}",
                flush=True,
            )
            if report["ok"] == 0:
                print(server.log_tail(), file=sys.stderr)
                raise SystemExit("no report was accepted: see gunicorn's log above")
    finally:
        server.stop()
    print(summary(args, runs), flush=True)
    if args.profile > 0:
        print(flush=True)
        print(profile(fleet, args.profile), flush=True)
    return 0


def figures(report: dict, bare: dict, copy: dict) -> dict[str, float]:
    """One run's figures, by name: the rows of the summary."""
    samples = report["ok_per_s"] * GPUS_PER_SERVER
    out = {
        "ingest reports/s (202)": report["ok_per_s"],
        "ingest GPU samples/s": samples,
        "ingest latency p50 ms": report["p50_ms"],
        "ingest latency p95 ms": report["p95_ms"],
        "ingest non-202 + errors": float(report["bad"]),
        "bare view /healthz req/s": bare["ok_per_s"],
        "bare view p50 ms": bare["p50_ms"],
        "COPY rows/s, one statement": copy["bulk_rows_per_s"],
        "COPY rows/s, 8 rows + commit each": copy["report_rows_per_s"],
        "ratio samples/s / COPY rows/s": samples / copy["bulk_rows_per_s"],
        "ratio samples/s / 8-row COPY rows/s": samples / copy["report_rows_per_s"],
        "ratio reports/s / bare view req/s": report["ok_per_s"] / bare["ok_per_s"],
    }
    out.update({f"CPU during ingest: {part} %": pct for part, pct in report["cpu"].items()})
    # CPU time per report hardly depends on what else shares the machine: the robust figure.
    for part in ("gunicorn", "postgres", "load"):
        out[f"CPU ms per report: {part}"] = 10 * report["cpu"][part] / report["ok_per_s"]
    return out


def summary(args: argparse.Namespace, runs: list[dict[str, float]]) -> str:
    rows = [[name, *(run[name] for run in runs), common.median(run[name] for run in runs)] for name in runs[0]]
    samples = common.median(run["ingest GPU samples/s"] for run in runs)
    return "\n".join(
        [
            "",
            f"summary: {args.servers} servers x {GPUS_PER_SERVER} GPUs, gunicorn {args.workers} sync workers, "
            f"{args.concurrency} in flight from {args.load_procs} processes, {args.seconds:g} s per run, "
            f"{os.cpu_count()} CPUs",
            common.table(["measure", *(f"run {n}" for n in range(1, len(runs) + 1)), "median"], rows),
            f"target {TARGET_SAMPLES_PER_S:,} GPU samples/s: reached {samples:,.0f} "
            f"({100 * samples / TARGET_SAMPLES_PER_S:.0f} %), i.e. {samples * 10:,.0f} GPUs at a 10 s interval",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
