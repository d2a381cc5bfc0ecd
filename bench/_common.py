"""Helpers shared by the benchmarks: a bench database, a gunicorn under test, a loopback load generator.

Only the standard library, psycopg, psutil and the agent's `signing` are imported here, so a load-generator
process spawned from it starts fast and carries no Django.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def server_env(database_url: str, *, bench_name: str, redis_db: int, **extra: str) -> dict[str, str]:
    """The environment of a production server under test (gunicorn, jobs, and a bench's own Django): debug off,
    loopback only, logging at WARNING, its own Redis database, and the per-agent report limit counted but out of
    reach (a bench's servers report many times a minute). The secret key is fixed per bench (`bench_name`):
    agent secrets of a kept fleet are sealed with a key derived from it. Its customers pay postpaid with no credit
    limit (as before balances): the benches measure placement, serving and billing, not a balance's admission check,
    whose cost grows with the allocations an organisation holds (see billing/funds.py)."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url,
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=f"bench-{bench_name}-only-not-a-real-secret-" + "0123456789abcdef" * 2,
        SECURE_SSL_REDIRECT="0",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        REDIS_URL=f"redis://127.0.0.1:6379/{redis_db}",
        STATIC_MANIFEST="0",
        LOG_LEVEL="WARNING",
        RATE_LIMIT_AGENT_REPORTS="1000000000/60",
        PYTHONUNBUFFERED="1",
        DEFAULT_PAYMENT_MODE="postpaid",
        SUANLI_ALLOW_CONSOLE_EMAIL="1",  # debug off refuses the console mail backend otherwise (config/settings.py)
        **extra,
    )
    return env


# --- numbers ---------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width text table, right-aligned numbers."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# --- the bench database ----------------------------------------------------------------------------------


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def ensure_database(url: str) -> bool:
    """Create the database named in `url` when it is missing (through the `postgres` database of the same
    server). Returns True when it was created."""
    import psycopg
    from psycopg import sql

    name = database_name(url)
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def migrate_database(url: str) -> None:
    """Create the bench's database when missing, set Django up on it (DATABASE_URL in the environment already
    names it) and migrate it."""
    created = ensure_database(url)
    print(f"database {database_name(url)}: {'created' if created else 'exists'}; migrating ...", flush=True)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def approved_provider(name: str, tag: str) -> Any:
    """The bench's provider organisation `name`, approved; made on first use with an owner and a staff user whose
    emails carry `tag`."""
    from accounts.models import Organization, User
    from accounts.services import organization_approve, organization_create

    org = Organization.objects.filter(name=name, kind=Organization.Kind.PROVIDER).first()
    if org is None:
        owner = User.objects.create_user(email=f"{tag}-provider@example.invalid", password=None)
        org = organization_create(user=owner, name=name, kind=Organization.Kind.PROVIDER)
    if org.status == Organization.Status.PENDING:
        staff, _ = User.objects.get_or_create(email=f"{tag}-staff@example.invalid", defaults={"is_staff": True})
        organization_approve(org=org, staff=staff)
    return org


# --- the server under test -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """`gunicorn config.wsgi` (sync workers) on 127.0.0.1 in its own process group; `stop()` ends the group."""

    def __init__(self, env: dict[str, str], *, workers: int, log_path: str, port: int | None = None) -> None:
        self.port = port or free_port()  # a port of an earlier one: the platform back on the same address
        self.log_path = log_path
        gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
        argv = [gunicorn, "config.wsgi", "-b", f"127.0.0.1:{self.port}", "--workers", str(workers)]
        self.log = open(log_path, "ab")  # closed in stop(); appended to by a restart on the same port
        self.proc = subprocess.Popen(
            [*argv, "--threads", "1", "--log-level", "warning"],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer /healthz within {timeout:.0f} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        """The master and its workers."""
        import psutil

        try:
            return [self.proc.pid] + [child.pid for child in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return [self.proc.pid]

    def log_tail(self, chars: int = 4000) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as fh:
            return fh.read()[-chars:].decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL if it lingers; safe to call twice."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()


# --- CPU accounting --------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) used by groups of processes between `start()` and `stop()`, as % of one core.

    Groups are callables returning pids, called at `start()`; a process counts for the part of the window it
    lived through both samples. `stop()` adds `other`: the busy time of all cores that none of the groups used
    (another job on the machine, the bench's own parent)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    @staticmethod
    def _cpu(pid: int) -> float | None:
        import psutil

        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return None
        return times.user + times.system

    @staticmethod
    def _machine() -> float:
        import psutil

        cpu = psutil.cpu_times()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")  # guest time is inside user already
        return sum(getattr(cpu, field, 0.0) for field in busy)

    def start(self) -> None:
        self.c0 = {(name, pid): self._cpu(pid) for name, pids in self.groups.items() for pid in pids()}
        self.m0, self.t0 = self._machine(), time.monotonic()

    def stop(self) -> dict[str, float]:
        seconds = dict.fromkeys(self.groups, 0.0)
        for (name, pid), before in self.c0.items():
            after = self._cpu(pid)
            if before is not None and after is not None:
                seconds[name] += after - before
        seconds["other"] = self._machine() - self.m0 - sum(seconds.values())
        wall = time.monotonic() - self.t0
        return {name: 100 * value / wall for name, value in seconds.items()}


def postgres_pids(url: str) -> Callable[[], list[int]]:
    """The PostgreSQL processes working for the database of `url`: its backends and the server's background
    processes (WAL writer, checkpointer, ...), not the backends of other databases on the same server."""

    def pids() -> list[int]:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND (datname = current_database() OR backend_type <> 'client backend')"
            ).fetchall()
        return [pid for (pid,) in rows]

    return pids


# --- the load generator ----------------------------------------------------------------------------------

# A load spec is a plain dict, so it pickles into a spawned process:
#   host, port, mode ("report" | "get"), path, threads, start_at (time.time()), warmup, seconds,
#   agents: [[agent_id, secret, [gpu uuid, ...]], ...] for "report", seq_base: int


def sample_values(rng: random.Random, uuid: str, index: int) -> dict[str, Any]:
    """One card's sample, shaped like the agent's (`suanli-agent --simulate 8 once`): a busy, healthy H100."""
    return {
        "uuid": uuid,
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "utilization_pct": rng.randint(85, 100),
        "memory_util_pct": rng.randint(30, 60),
        "memory_used_mb": rng.randint(60_000, 80_000),
        "memory_total_mb": 81_559,
        "temperature_c": rng.randint(55, 72),
        "power_w": round(rng.uniform(450, 690), 1),
        "power_limit_w": 700.0,
        "sm_clock_mhz": rng.randint(1700, 1980),
        "mem_clock_mhz": 2619,
        "ecc_sbe": 0,
        "ecc_dbe": 0,
        "ecc_sbe_aggregate": 2,
        "ecc_dbe_aggregate": 0,
        "remapped_rows_correctable": 0,
        "remapped_rows_uncorrectable": 0,
        "remap_pending": False,
        "remap_failed": False,
        "throttle_reasons": [],
        "pcie_replay_count": 0,
        "xid_errors": [],
    }


def report_body(rng: random.Random, seq: int, uuids: list[str], wall: float) -> bytes:
    from datetime import UTC, datetime

    report = {
        "seq": seq,
        "sent_at": datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds"),
        "interval_s": 10.0,
        "agent_version": "0.1.0",
        "hostname": "bench",
        "gpus": [sample_values(rng, uuid, index) for index, uuid in enumerate(uuids)],
    }
    return json.dumps(report, separators=(",", ":")).encode()


def _load_thread(spec: dict[str, Any], agents: list[list[Any]], out: dict[str, Any]) -> None:
    """One connection sending requests back to back; counts those that end inside the measured window."""
    from agents import signing

    rng = random.Random()
    measure_from = spec["start_at"] + spec["warmup"]
    stop_at = measure_from + spec["seconds"]
    seqs = [spec["seq_base"]] * len(agents)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    conn = http.client.HTTPConnection(spec["host"], spec["port"], timeout=30)
    turn = 0
    time.sleep(max(0.0, spec["start_at"] - time.time()))
    while (now := time.time()) < stop_at:
        method, body, headers = "GET", None, {}
        if spec["mode"] == "report":
            slot = turn % len(agents)
            turn += 1
            agent_id, secret, uuids = agents[slot]
            seqs[slot] += 1
            method, body = "POST", report_body(rng, seqs[slot], uuids, now)
            headers = {
                **signing.headers(agent_id, secret, body, timestamp=int(now)),
                "Content-Type": "application/json",
            }
        started = time.perf_counter()
        try:
            conn.request(method, spec["path"], body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conn = http.client.HTTPConnection(spec["host"], spec["port"], timeout=30)
            status = 0
            if len(errors) < 5:
                errors.append(repr(exc))
        elapsed = time.perf_counter() - started
        if measure_from <= time.time() < stop_at:
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(elapsed * 1000)
    conn.close()
    out.update(statuses=statuses, latencies=latencies, errors=errors)


def _merge(outs: list[dict[str, Any]]) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    for out in outs:
        for status, count in out["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "statuses": statuses,
        "latencies": [ms for out in outs for ms in out["latencies"]],
        "errors": [error for out in outs for error in out["errors"]],
    }


def load_process(spec: dict[str, Any], queue: Any) -> None:
    """Entry point of a spawned load process: `threads` connections in flight, results to `queue`."""
    try:
        agents = spec["agents"] or [[None, None, []]]
        outs: list[dict[str, Any]] = [{} for _ in range(spec["threads"])]
        threads = [
            threading.Thread(target=_load_thread, args=(spec, agents[n :: spec["threads"]], out), daemon=True)
            for n, out in enumerate(outs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        queue.put(_merge(outs))
    except BaseException as exc:  # reported to the parent, which must not wait forever
        queue.put({"fatal": repr(exc)})


def run_load(
    spec: dict[str, Any], processes: int, cpu_groups: dict[str, Callable[[], list[int]]] | None = None
) -> dict[str, Any]:
    """Run `processes` spawned load processes (spec["threads"] threads each) and merge their results.

    `agents` is split between processes and threads, so each server's seq is driven by one thread only. With
    `cpu_groups`, the CPU of those groups, of the load processes (`load`) and of the rest of the machine
    (`other`) over the measured window comes back under `cpu`, in % of one core."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: no Django, no inherited connections
    queue = ctx.Queue()
    spec = dict(spec, start_at=time.time() + 2.0)  # spawn + import time, so every process starts together
    procs = [
        ctx.Process(target=load_process, args=(dict(spec, agents=spec["agents"][n::processes]), queue), daemon=True)
        for n in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        cpu: dict[str, float] = {}
        if cpu_groups is not None:
            meter = CpuMeter({**cpu_groups, "load": lambda: [proc.pid for proc in procs]})
            time.sleep(max(0.0, spec["start_at"] + spec["warmup"] - time.time()))
            meter.start()
            time.sleep(max(0.0, spec["start_at"] + spec["warmup"] + spec["seconds"] - time.time()))
            cpu = meter.stop()
        results = [queue.get(timeout=spec["warmup"] + spec["seconds"] + 120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    fatal = [r["fatal"] for r in results if "fatal" in r]
    if fatal:
        raise RuntimeError(f"load process failed: {fatal[0]}")
    merged = _merge(results)
    latencies = sorted(merged.pop("latencies"))
    return {
        **merged,
        "requests": sum(merged["statuses"].values()),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "cpu": cpu,
    }
