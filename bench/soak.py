"""Soak: a fleet reporting, customers renting, the periodic jobs running, for minutes; then nothing double-booked,
every held second billed exactly once.

    .venv/bin/python bench/soak.py                               # 12,500 servers x 8 cards, 10 minutes
    .venv/bin/python bench/soak.py --servers 200 --minutes 1 --customers 8      # a quick look

What it does, loopback only, and stops by itself:
1. its own database (`--database-url` or BENCH_SOAK_DATABASE_URL, default
   postgres://postgres@127.0.0.1:5432/suanli_bench_soak; the name must contain "bench"): created when missing and
   migrated; the rows of earlier runs (leases, allocations, lease events, usage records, meter runs, idempotency
   records, raw telemetry) are emptied and the server and card tables vacuumed. The fleet is kept between runs:
   a provider "soak provider" with servers of 8 H100 SXM cards, registered, enrolled and listed through the
   services (`server_register`, `agent_enroll`, `offer_create` at 2.00-3.50 USD a card-hour), 30-90 ms a server
   on the 2-vCPU box, so 12,500 take 7-20 minutes the first time (more on a crowded box; `--enrol-only` does just
   this); later runs reuse them (the agent secrets are unsealed from the database), enrol only what is missing and
   delist the servers beyond `--servers`.
   `--customers` customer organisations (one in five billed in CNY) get a new API key each run;
2. the production server, as a deployment that serves a fleet runs it (docs/scaling.md): two pools of the same code,
   `gunicorn config.wsgi --threads 1` (sync workers) for the customers' API (`--workers`, default 2) and another for
   the agents' reports (`--agent-workers`, default 3), so a lease request never queues behind thousands of reports;
   `--agent-workers 0` serves both from one pool, as the soaks before issue 18's did with `--workers 4`.
   DJANGO_DEBUG=0, logging at WARNING, Redis db 9 as the cache, a connection pool of 2 per worker, each pool's
   PostgreSQL sessions named by their application_name (soak-api, soak-agents; soak-jobs); the per-agent report
   rate limit is counted in Redis but out of reach, as in bench/ingest.py (the load paces each server at its 10 s
   interval anyway);
3. for `--minutes`, from spawned processes that import no Django:
   - agent reports: `--load-procs` processes, `--concurrency` connections in all, each server driven by one
     connection, paced at the agent interval (10 s a server, i.e. servers / 10 reports/s; 1,250/s for 12,500), never
     faster; when the machine cannot keep up each connection sends back to back and the achieved rate is reported.
     Each report is built and signed (HMAC over the exact bytes, as the agent does) when its turn comes, from what is
     made once per server (its cards' uuids, its key) and one of 64 pre-rendered card samples, and sent as bytes on
     a socket of its own (a sync worker closes the connection after each answer); a report counts when answered
     202, its latency from the connect to the answer's last byte;
   - customers: one connection each, a random action every `--think` s (exponential): rent a card_hour lease of 1-4
     cards (POST /api/v1/leases/ with an Idempotency-Key; one in ten sent twice, and the replay must answer the same
     lease), end one (/end/), resize one (/resize/, 1-4 cards) or list them; at most `--cards-per-customer` cards held
     and `--max-leases` leases asked for in all; a 5xx or a dropped connection is retried twice with the same key;
   - the periodic jobs in a process of their own, as the beat would run them: `billing.metering.meter()`,
     `close_last_period()` and `invoices_mark_overdue()` every `--meter-every` s, `scheduler.lifecycle.leases_run()`
     every 30 s (inventory's check_agents is not run: a fleet reporting slower than its interval would be marked
     unreachable and failed over, which would measure the load generator, not the platform);
   and, per `--progress` s, a line: requests, p95, error count per kind, live leases and cards, double-booked cards,
   and CPU by party in % of one core: each gunicorn pool (web), its PostgreSQL backends (pg, by application_name),
   the jobs and their backend, PostgreSQL's rest (background processes, this process), the load generators, this
   process, and everything else on the machine (other); the summary gives it per report and per customer request,
   each customer request kind's time at the client against inside its worker (the API pool's access log), and what
   each party's PostgreSQL sessions were doing (idle, in a transaction, running, waiting on what), sampled;
4. afterwards, with gunicorn stopped: every live lease is ended (`lease_end`) and the meter run once more, through
   the end of the hour in progress (every allocation is closed by then, so its slots are final), then:
   - booking: no two allocations of a card overlap (self-join on `&&`); no card was held by two live leases (also
     sampled every progress line); every active lease held exactly `gpu_count` cards when the load stopped; no
     ended lease holds a card past its end, no allocation is left open;
   - billing: `billing.metering.slots()` (the meter's own SQL) from the first allocation to now cuts every allocation
     into hour slots that are contiguous, inside their hour, once per slot, and sum to the allocation's length to the
     microsecond; every usage record the meter wrote is one of those slots, field for field (period, seconds, down
     seconds, quantity, amount), and every slot over by the meter's watermark has its record; the rated amounts equal
     an independent raw-SQL sum of length x units x unit price / 3600 (to 1e-12 per slot), lease by lease to the cent;
   - ingest: raw samples stored = 8 x reports answered 202 (plus at most 8 per dropped request);
   and the run's rows are emptied again unless `--keep-db`.
Exit status 1 when a check fails, a job raised, a replay answered another lease, or 5xx and dropped connections
exceed `--max-error-rate` of the requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import os
import queue as queue_module
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import astuple
from datetime import timedelta
from decimal import Decimal
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402 (the bench folder is not a package)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench_soak"
REPORT_PATH = "/api/v1/agent/reports/"
LEASES_PATH = "/api/v1/leases/"
GPUS_PER_SERVER = 8
GPU_MODEL_SLUG = "h100-sxm5-80gb"
PROVIDER_NAME = "soak provider"
AGENT_INTERVAL_S = 10.0
TARGET_REPORTS_PER_S = 1250.0  # issue 7: 12,500 servers at their 10 s interval
LEASES_RUN_EVERY_S = 30.0  # the beat's run-leases schedule
ACCESS_FORMAT = "%(m)s %(U)s %(s)s %(D)s"
WAIT_SAMPLE_S = 0.5  # how often the PostgreSQL sessions' states are sampled
HTTP_TIMEOUT_S = 60.0
KINDS = ["report", "lease create", "lease create replay", "lease resize", "lease end", "lease list"]
# Answers that are part of the contract: 409 is no_capacity when renting or growing.
EXPECTED = {
    "report": {202},
    "lease create": {201, 409},
    "lease create replay": {201, 409},
    "lease resize": {200, 409},
    "lease end": {200},
    "lease list": {200},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    url = os.environ.get("BENCH_SOAK_DATABASE_URL", DEFAULT_DATABASE_URL)
    parser.add_argument("--database-url", default=url)
    parser.add_argument("--servers", type=int, default=12_500, help="servers of 8 cards (default 12,500)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    parser.add_argument("--customers", type=int, default=20, help="customer organisations, one connection each (20)")
    parser.add_argument("--think", type=float, default=3.0, help="mean seconds between a customer's actions (3)")
    parser.add_argument("--cards-per-customer", type=int, default=16, help="most cards one customer holds (16)")
    parser.add_argument("--max-leases", type=int, default=20_000, help="lease requests in all, at most (20,000)")
    parser.add_argument("--workers", type=int, default=2, help="sync workers of the customers' gunicorn (2)")
    parser.add_argument(
        "--agent-workers",
        type=int,
        default=3,
        help="sync workers of the agents' own gunicorn (3); 0: the reports share the customers' (one pool, as before)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="agent report connections in all (8)")
    parser.add_argument("--load-procs", type=int, default=2, help="agent report processes (default 2)")
    parser.add_argument("--meter-every", type=float, default=60.0, help="seconds between billing job runs (60)")
    parser.add_argument("--progress", type=float, default=60.0, help="seconds between progress lines (60)")
    parser.add_argument("--max-error-rate", type=float, default=0.001, help="5xx + dropped, of all (0.001)")
    parser.add_argument("--keep-db", action="store_true", help="keep this run's leases, usage and telemetry")
    parser.add_argument("--enrol-only", action="store_true", help="build the fleet and customers, then stop")
    args = parser.parse_args(argv)
    if "bench" not in common.database_name(args.database_url):
        parser.error("the database name must contain 'bench': this script empties its leases and telemetry")
    if not 0 < args.minutes <= 120:
        parser.error("--minutes: more than 0, at most 120")
    if args.workers < 1 or args.agent_workers < 0:
        parser.error("need --workers >= 1 and --agent-workers >= 0")
    if not args.load_procs <= args.concurrency <= args.servers:
        parser.error("need --load-procs <= --concurrency <= --servers (each connection drives its own servers)")
    if not 1 <= args.customers <= 500 or args.cards_per_customer < 1 or args.think <= 0:
        parser.error("need 1 to 500 customers, --cards-per-customer >= 1 and --think > 0")
    if args.customers * args.cards_per_customer > args.servers * GPUS_PER_SERVER:
        parser.error("the customers could hold more cards than the fleet has: lower --cards-per-customer")
    return args


def server_env(database_url: str, party: str = "soak") -> dict[str, str]:
    """The environment of the production server under test (the jobs and this process add DB_POOL=0). Its
    PostgreSQL sessions carry `party` as their application_name, so their backends' CPU is counted per party."""
    # DB_POOL_MAX 2: a sync worker serves one request at a time; the server is shared with others' tests.
    url = f"{database_url}{'&' if '?' in database_url else '?'}application_name={party}"
    return common.server_env(url, bench_name="soak", redis_db=9, DB_POOL="1", DB_POOL_MIN="1", DB_POOL_MAX="2")


# --- setup (Django) --------------------------------------------------------------------------------------

RUN_TABLES = (
    "scheduler_leaseevent, scheduler_allocation, scheduler_lease, billing_usagerecord, billing_meterrun, "
    "accounts_idempotencyrecord, inventory_gpusample"
)


def setup_database(url: str) -> None:
    common.migrate_database(url)
    empty_run_rows()
    from inventory import telemetry

    telemetry.ensure_partitions()


def empty_run_rows() -> None:
    """The rows a run makes (CASCADE: invoices and their lines, should a run have crossed a month's close)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {RUN_TABLES} CASCADE")
        # Every report rewrote its server's and cards' rows: make the dead versions reusable, so that each run starts
        # from the same tables whether or not the server runs autovacuum (this machine's does not).
        cursor.execute("VACUUM (ANALYZE) inventory_server, inventory_gpu")


def ensure_fleet(count: int) -> list[dict[str, Any]]:
    """`count` enrolled, listed servers of the soak provider, enrolling what is missing; agent id, secret, cards."""
    from django.db import connection

    from inventory import ingest, secretbox, services
    from inventory.models import Gpu, GpuModel, Offer, Server
    from marketplace.services import offer_create, offer_delist

    org = common.approved_provider(PROVIDER_NAME, "soak")
    model = GpuModel.objects.get(slug=GPU_MODEL_SLUG)
    enrolled = Server.objects.filter(organization=org, status=Server.Status.ONLINE).exclude(agent_secret_sealed="")
    have = enrolled.count()
    started = time.perf_counter()
    for n in range(have, count):
        server, token = services.server_register(
            org=org,
            name=f"soak-{uuid.uuid4().hex[:12]}",
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
        server, _ = ingest.agent_enroll(enrollment_token=token, hostname=f"soak-{n}", gpus=cards)
        price = Decimal("2.00") + Decimal("0.25") * (server.pk % 7)
        offer_create(org=org, server=server, prices={"card_hour": price})
        if (n + 1 - have) % 500 == 0:
            print(f"  enrolled {n + 1 - have} of {count - have} ...", flush=True)
    if count > have:
        print(f"enrolled {count - have} servers in {time.perf_counter() - started:.1f} s", flush=True)
    servers = list(enrolled.order_by("pk").values_list("pk", "agent_id", "agent_secret_sealed")[:count])
    chosen = [pk for pk, _, _ in servers]
    for offer in Offer.objects.live().filter(organization=org).exclude(server_id__in=chosen):
        offer_delist(offer=offer)  # the fleet is `count` servers: the rest are off the storefront
    listed = set(Offer.objects.live().filter(server_id__in=chosen).values_list("server_id", flat=True))
    for server in Server.objects.filter(pk__in=set(chosen) - listed):
        offer_create(org=org, server=server, prices={"card_hour": Decimal("2.00") + Decimal("0.25") * (server.pk % 7)})
    uuids: dict[int, list[str]] = defaultdict(list)
    for server_id, uuid_ in (
        Gpu.objects.filter(server_id__in=chosen).order_by("server_id", "index").values_list("server_id", "uuid")
    ):
        uuids[server_id].append(uuid_)
    with connection.cursor() as cursor:
        # Every table's statistics, as autovacuum keeps them on a production server (this machine's runs without
        # it): plans for the fleet's real size, and for the small tables too. Without them the allocator's best
        # fit (scheduler.selectors.best_fit_capacity) was planned from a guess about the organisation table and
        # read all 12,500 servers on every lease (~110 ms of PostgreSQL) instead of walking its index (~1 ms).
        cursor.execute("ANALYZE")
    return [
        {"agent_id": str(agent_id), "secret": secretbox.unseal(sealed), "uuids": uuids[pk]}
        for pk, agent_id, sealed in servers
    ]


def ensure_customers(count: int) -> list[dict[str, Any]]:
    """`count` customer organisations (one in five in CNY), each with a fresh API key (the older ones revoked)."""
    from accounts.models import ApiKey, Organization, User
    from accounts.services import api_key_create, api_key_revoke, organization_create

    customers = []
    for n in range(count):
        email = f"soak-customer-{n:03d}@example.invalid"
        user = User.objects.filter(email=email).first() or User.objects.create_user(email=email, password=None)
        org = Organization.objects.filter(memberships__user=user).first()
        if org is None:
            currency = "CNY" if n % 5 == 4 else "USD"
            org = organization_create(user=user, name=f"soak customer {n:03d}", kind="customer", currency=currency)
        for key_id in ApiKey.objects.filter(user=user, revoked_at__isnull=True).values_list("pk", flat=True):
            api_key_revoke(user=user, key_id=key_id)
        _, token = api_key_create(user=user, name="soak")
        customers.append({"org": org.pk, "token": token})
    Organization.objects.filter(pk__in=[c["org"] for c in customers]).update(billing_hold=False)
    return customers


# --- the load (spawned processes, no Django) -------------------------------------------------------------


class Recorder:
    """Statuses and latencies per request kind, for the whole run and for the current progress window."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.window: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.notes: Counter = Counter()
        self.examples: list[str] = []

    def add(self, kind: str, status: int, ms: float) -> None:
        with self.lock:
            self.statuses[kind][status] += 1
            self.latencies[kind].append(ms)
            self.window[kind].append((status, ms))

    def note(self, what: str, example: str = "") -> None:
        with self.lock:
            self.notes[what] += 1
            if example and len(self.examples) < 10:
                self.examples.append(f"{what}: {example}")

    def take_window(self) -> dict[str, list[tuple[int, float]]]:
        with self.lock:
            window, self.window = self.window, defaultdict(list)
        return dict(window)


class Client:
    """One loopback connection (gunicorn's sync workers close it after each answer; http.client reopens)."""

    def __init__(self, spec: dict[str, Any], recorder: Recorder) -> None:
        self.conn = http.client.HTTPConnection(spec["host"], spec["port"], timeout=HTTP_TIMEOUT_S)
        self.recorder = recorder

    def call(self, kind: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        started = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data, status = resp.read(), resp.status
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            data, status = repr(exc).encode(), 0
        self.recorder.add(kind, status, (time.perf_counter() - started) * 1000)
        if status not in EXPECTED[kind]:
            self.recorder.note(f"{kind} {status}", data[:200].decode(errors="replace"))
        try:
            return status, json.loads(data) if data and status else None
        except ValueError:
            return status, None


SAMPLE_VARIANTS = 64  # distinct card samples a report thread draws from


def sample_variants(rng: random.Random) -> list[str]:
    """Card samples as `common.sample_values` draws them, rendered once: the JSON of each after its uuid and index
    (the load generator's CPU goes to sending reports, not to rendering the same kind of numbers again)."""
    variants = []
    for _ in range(SAMPLE_VARIANTS):
        values = common.sample_values(rng, "", 0)
        del values["uuid"], values["index"]
        variants.append(json.dumps(values, separators=(",", ":"))[1:])  # without its opening brace
    return variants


def report_bytes(seq: int, wall: float, cards: list[str], variants: list[str], rng: random.Random) -> bytes:
    """The JSON of `common.report_body` (same fields, same shape), each card a random one of `variants`."""
    sent_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}+00:00"
    gpus = ",".join(card + variants[rng.randrange(SAMPLE_VARIANTS)] for card in cards)
    return (
        f'{{"seq":{seq},"sent_at":"{sent_at}","interval_s":10.0,"agent_version":"0.1.0","hostname":"bench",'
        f'"gpus":[{gpus}]}}'
    ).encode()


def raw_exchange(address: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    """One request on a connection of its own, read to the server's close (gunicorn's sync workers close after each
    answer; the request says `Connection: close`): the status and the body; 0 and the error when it failed."""
    try:
        with socket.create_connection(address, timeout=HTTP_TIMEOUT_S) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    except (OSError, ValueError, IndexError) as exc:
        return 0, repr(exc).encode()


def report_thread(spec: dict[str, Any], agents: list[list[Any]], recorder: Recorder, offset: float) -> None:
    """Reports of `agents` in turn, one every `gap` s (each agent every 10 s), never ahead of the schedule.

    Each report is built, signed (`agents.signing`, HMAC-SHA256 over the exact bytes sent, as the agent does) and
    sent when its turn comes; what is the same in every report of a server (its cards' uuids and indexes, its key,
    the request line) is made once, and a card's values are one of `SAMPLE_VARIANTS` rendered samples. The request
    goes out on a plain socket, as bytes: the latency is from the connect to the last byte of the answer."""
    from agents import signing

    rng = random.Random()
    variants = sample_variants(rng)
    address = (spec["host"], spec["port"])
    cards = [[f'{{"uuid":"{uuid_}","index":{i},' for i, uuid_ in enumerate(uuids)] for _, _, uuids in agents]
    keys = [secret.encode() for _, secret, _ in agents]
    heads = [
        f"POST {REPORT_PATH} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\n{signing.HEADER_ID}: {agent_id}\r\n"
        for agent_id, _, _ in agents
    ]
    gap = spec["threads_total"] / spec["report_rate"]
    seqs = [spec["seq_base"]] * len(agents)
    next_at, turn = spec["start_at"] + offset, 0
    while (now := time.time()) < spec["stop_at"]:
        if next_at > now:
            time.sleep(min(next_at, spec["stop_at"]) - now)
            continue
        slot = turn % len(agents)
        seqs[slot] += 1
        body = report_bytes(seqs[slot], now, cards[slot], variants, rng)
        timestamp = int(now)
        request = (
            f"{heads[slot]}{signing.HEADER_TIMESTAMP}: {timestamp}\r\n"
            f"{signing.HEADER_SIGNATURE}: {signing.sign(keys[slot], timestamp, body)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        started = time.perf_counter()
        status, answer = raw_exchange(address, request)
        recorder.add("report", status, (time.perf_counter() - started) * 1000)
        if status not in EXPECTED["report"]:
            recorder.note(f"report {status}", answer[:200].decode(errors="replace"))
        turn += 1
        next_at = max(next_at + gap, time.time() - gap)  # behind: catch up by one gap at most, no burst


def customer_thread(spec: dict[str, Any], customer: dict[str, Any], recorder: Recorder, seed: int) -> None:
    """A customer renting, resizing, ending and listing card_hour leases until the end or its lease budget."""
    client = Client(spec, recorder)
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {customer['token']}", "Content-Type": "application/json"}
    live: dict[int, int] = {}  # lease id -> cards
    asked = 0
    cap = spec["cards_per_customer"]

    def post(kind: str, path: str, payload: dict | None, key: str) -> tuple[int, Any]:
        body = json.dumps(payload).encode() if payload is not None else b""
        for _ in range(3):  # a 5xx or a dropped connection: the same key again, as a careful client would
            status, data = client.call(kind, "POST", path, body, {**auth, "Idempotency-Key": key})
            if status and status < 500:
                break
        return status, data

    time.sleep(max(0.0, spec["start_at"] + rng.uniform(0, spec["think"]) - time.time()))
    while time.time() < spec["stop_at"]:
        held = sum(live.values())
        roll = rng.random()
        if asked < spec["leases_per_customer"] and held < cap and (not live or roll < 0.45):
            asked += 1
            payload = {"plan": "card_hour", "gpu_count": rng.randint(1, min(4, cap - held))}
            key = str(uuid.uuid4())
            status, data = post("lease create", LEASES_PATH, payload, key)
            if status == 201:
                live[data["id"]] = data["gpu_count"]
                if rng.random() < 0.1:
                    again, replay = post("lease create replay", LEASES_PATH, payload, key)
                    if again != 201 or (replay or {}).get("id") != data["id"]:
                        recorder.note("replay answered another lease", f"{data['id']} -> {again} {replay}")
            elif status == 409:
                recorder.note("lease create: no capacity")
        elif live and roll < 0.70:
            lease_id = rng.choice(sorted(live))
            status, _ = post("lease end", f"{LEASES_PATH}{lease_id}/end/", None, str(uuid.uuid4()))
            if status == 200:
                del live[lease_id]
        elif live and roll < 0.85:
            lease_id = rng.choice(sorted(live))
            room = cap - held + live[lease_id]
            choices = [n for n in range(1, min(4, room) + 1) if n != live[lease_id]]
            if choices:
                path = f"{LEASES_PATH}{lease_id}/resize/"
                status, data = post("lease resize", path, {"gpu_count": rng.choice(choices)}, str(uuid.uuid4()))
                if status == 200:
                    live[lease_id] = data["gpu_count"]
                elif status == 409:
                    recorder.note("lease resize: no capacity")
        else:
            client.call("lease list", "GET", f"{LEASES_PATH}?state=active", None, auth)
        time.sleep(max(0.0, min(rng.expovariate(1 / spec["think"]), spec["stop_at"] - time.time())))


def load_process(spec: dict[str, Any], queue: Any) -> None:
    """Entry point of a spawned load process (role "reports" or "customers"); windows and totals to `queue`."""
    try:
        recorder = Recorder()
        if spec["role"] == "reports":
            agents, threads_here = spec["agents"], spec["threads"]
            gap = spec["threads_total"] / spec["report_rate"]
            first = spec["index"] * threads_here  # threads of all processes spread evenly over one gap
            targets = [
                (report_thread, (spec, agents[n::threads_here], recorder, gap * (first + n) / spec["threads_total"]))
                for n in range(threads_here)
            ]
        else:
            targets = [(customer_thread, (spec, customer, recorder, n)) for n, customer in enumerate(spec["customers"])]
        threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in targets]
        for thread in threads:
            thread.start()
        for k, boundary in enumerate(spec["boundaries"]):
            time.sleep(max(0.0, boundary - time.time()))
            queue.put({"progress": k, "proc": spec["name"], "window": recorder.take_window()})
        for thread in threads:
            thread.join(timeout=HTTP_TIMEOUT_S * 4)
        queue.put(
            {
                "final": spec["name"],
                "statuses": {kind: dict(c) for kind, c in recorder.statuses.items()},
                "latencies": dict(recorder.latencies),
                "notes": dict(recorder.notes),
                "examples": recorder.examples,
            }
        )
    except BaseException as exc:  # reported to the parent, which must not wait forever
        queue.put({"fatal": spec["name"], "error": repr(exc)})


# --- the periodic jobs (a spawned process with Django) ---------------------------------------------------


def jobs_process(spec: dict[str, Any], queue: Any) -> None:
    """The beat's billing jobs every `meter_every` s and run_leases every 30 s, until `stop_at`."""
    summary: dict[str, Any] = {"runs": Counter(), "seconds": defaultdict(list), "records": 0, "errors": []}
    try:
        os.environ.update(spec["env"])
        import django

        django.setup()
        from django.db import connections

        from billing import invoicing, metering
        from scheduler import lifecycle

        def run(name: str, job: Any) -> Any:
            started = time.perf_counter()
            try:
                return job()
            except Exception as exc:  # a soak goes on and reports it
                summary["errors"].append(f"{name}: {exc!r}")
                connections.close_all()
                return None
            finally:
                summary["runs"][name] += 1
                summary["seconds"][name].append(time.perf_counter() - started)

        next_meter = next_leases = spec["start_at"]
        while time.time() < spec["stop_at"]:
            if time.time() >= next_meter:
                created = run("meter", metering.meter) or 0
                summary["records"] += created
                run("close_last_period", invoicing.close_last_period)
                run("invoices_mark_overdue", invoicing.invoices_mark_overdue)
                queue.put({"jobs": f"meter wrote {created} usage records in {summary['seconds']['meter'][-1]:.2f} s"})
                next_meter += spec["meter_every"]
            if time.time() >= next_leases:
                run("run_leases", lifecycle.leases_run)
                next_leases += LEASES_RUN_EVERY_S
            time.sleep(max(0.0, min(next_meter, next_leases, spec["stop_at"]) - time.time()))
        connections.close_all()
    except BaseException as exc:
        summary["errors"].append(f"jobs process: {exc!r}")
    queue.put({"jobs_final": {**summary, "runs": dict(summary["runs"]), "seconds": dict(summary["seconds"])}})


# --- checks (Django, this process) -----------------------------------------------------------------------

SQL_OVERLAPS = """
SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b
  ON a.gpu_id = b.gpu_id AND a.id < b.id AND a.period && b.period
"""
SQL_LIVE = """
SELECT count(DISTINCT l.id), count(al.id),
       (SELECT count(*) FROM (SELECT al2.gpu_id FROM scheduler_allocation al2
          JOIN scheduler_lease l2 ON l2.id = al2.lease_id
          WHERE l2.state IN ('scheduled', 'active') AND (upper_inf(al2.period) OR upper(al2.period) > now())
          GROUP BY al2.gpu_id HAVING count(DISTINCT al2.lease_id) > 1) twice)
FROM scheduler_lease l LEFT JOIN scheduler_allocation al
  ON al.lease_id = l.id AND (upper_inf(al.period) OR upper(al.period) > now())
WHERE l.state IN ('scheduled', 'active')
"""
SQL_WRONG_COUNT = """
SELECT count(*) FROM (SELECT l.id FROM scheduler_lease l LEFT JOIN scheduler_allocation al
  ON al.lease_id = l.id AND (upper_inf(al.period) OR upper(al.period) > now())
  WHERE l.state = 'active' AND l.plan = 'card_hour' GROUP BY l.id, l.gpu_count HAVING count(al.id) <> l.gpu_count) x
"""
SQL_HELD_PAST_END = """
SELECT count(*) FROM scheduler_allocation al JOIN scheduler_lease l ON l.id = al.lease_id
WHERE l.state IN ('ended', 'cancelled', 'preempted') AND (upper_inf(al.period) OR upper(al.period) > l.ended_at)
"""
SQL_ALLOCATIONS = """
SELECT al.id, al.lease_id, lower(al.period), upper(al.period), extract(epoch FROM upper(al.period) - lower(al.period)),
       al.units * al.unit_price * extract(epoch FROM upper(al.period) - lower(al.period)) / 3600
FROM scheduler_allocation al JOIN scheduler_lease l ON l.id = al.lease_id WHERE l.plan = 'card_hour'
"""


def sql_one(statement: str) -> tuple:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchone()


def live_state() -> dict[str, int]:
    leases, cards, twice = sql_one(SQL_LIVE)
    return {"live leases": leases, "held cards": cards, "cards held by two live leases": twice}


def end_live_leases() -> int:
    from scheduler import services
    from scheduler.models import Lease, LeaseState

    ended = 0
    for lease in Lease.objects.filter(state__in=[LeaseState.SCHEDULED, LeaseState.ACTIVE]).order_by("pk"):
        services.lease_end(lease=lease)
        ended += 1
    return ended


def check_billing() -> tuple[dict[str, Any], list[str]]:
    """Every allocation second in exactly one slot; the meter's records are those slots; amounts match raw SQL."""
    from django.db import connection
    from django.utils import timezone

    from billing import metering, rating
    from billing.models import UsageRecord

    failures: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute(SQL_ALLOCATIONS)
        allocations = {row[0]: row[1:] for row in cursor.fetchall()}
    if not allocations:
        return {"allocations": 0}, ["no allocation was made: nothing to check"]
    now = timezone.now()
    if any(upper is None or upper > now for _, _, upper, _, _ in allocations.values()):
        failures.append("an allocation is still open after every lease was ended")
    since = metering.hour_floor(min(lower for _, lower, _, _, _ in allocations.values()))
    parts: dict[int, list] = defaultdict(list)
    for slot in metering.slots(since=since, until=now):
        parts[slot.allocation_id].append(slot)
    if set(parts) - set(allocations):
        failures.append(f"slots of {len(set(parts) - set(allocations))} allocations that are not card_hour")
    hour = timedelta(hours=1)
    bad_cut = bad_sum = 0
    amount_slots = Decimal(0)
    per_lease_slots: dict[int, Decimal] = defaultdict(Decimal)
    per_lease_raw: dict[int, Decimal] = defaultdict(Decimal)
    down = Decimal(0)
    for allocation_id, (lease_id, lower, upper, seconds, raw_amount) in allocations.items():
        cut = sorted(parts.get(allocation_id, []), key=lambda s: s.start)
        edges_ok = bool(cut) and cut[0].start == lower and cut[-1].end == upper
        edges_ok &= all(a.end == b.start for a, b in zip(cut, cut[1:], strict=False))
        edges_ok &= all(s.slot_start <= s.start and s.end <= s.slot_start + hour for s in cut)
        edges_ok &= len({s.slot_start for s in cut}) == len(cut)
        bad_cut += not edges_ok
        bad_sum += sum((s.seconds for s in cut), Decimal(0)) != Decimal(seconds).quantize(Decimal("0.000001"))
        for s in cut:
            amount = s.rated().amount
            amount_slots += amount
            per_lease_slots[lease_id] += amount
            down += s.down_seconds
        per_lease_raw[lease_id] += raw_amount
    slots_total = sum(len(v) for v in parts.values())
    if bad_cut:
        failures.append(f"{bad_cut} allocations not cut into contiguous, once-per-hour slots from start to end")
    if bad_sum:
        failures.append(f"{bad_sum} allocations whose slot seconds do not sum to their length")
    # The meter's records: each is one computed slot, field for field; each slot it has passed has its record.
    computed = {(s.allocation_id, s.slot_start): s for v in parts.values() for s in v}
    watermark = metering.metered_until()
    fields = ("allocation_id", "slot_start", "start", "end", "seconds", "down_seconds", "quantity", "amount")
    records = list(UsageRecord.objects.values_list(*fields))
    foreign = differing = 0
    for allocation_id, slot_start, *billed in records:
        slot = computed.get((allocation_id, slot_start))
        if slot is None:
            foreign += 1
        elif billed != [slot.start, slot.end, slot.seconds, slot.down_seconds, *astuple(slot.rated())]:
            differing += 1
    recorded = {(a, s) for a, s, *_ in records}
    missing = sum(1 for key in computed if watermark and key[1] + hour <= watermark and key not in recorded)
    duplicates = len(records) - len(recorded)
    for count, what in (
        (foreign, "usage records that are no allocation's slot (billed seconds nobody held)"),
        (differing, "usage records that differ from their slot"),
        (missing, "slots over by the meter's watermark without a usage record (unbilled seconds)"),
        (duplicates, "slots billed twice"),
    ):
        if count:
            failures.append(f"{count} {what}")
    raw_total = sum(per_lease_raw.values(), Decimal(0))
    tolerance = Decimal("1e-12") * (slots_total + len(allocations))
    if down == 0 and abs(amount_slots - raw_total) > tolerance:
        failures.append(f"rated {amount_slots} != raw SQL {raw_total} (tolerance {tolerance})")
    cents_off = sum(
        1
        for lease_id in per_lease_raw
        if rating.to_money(per_lease_slots[lease_id]) != rating.to_money(per_lease_raw[lease_id])
    )
    if down == 0 and cents_off:
        failures.append(f"{cents_off} leases whose rated total differs from raw SQL to the cent")
    metered = sum((r[4] for r in records), Decimal(0))
    held = sum((Decimal(v[3]) for v in allocations.values()), Decimal(0))
    figures = {
        "allocations": len(allocations),
        "hour slots": slots_total,
        "held card-seconds": held,
        "of which metered (usage records)": metered,
        "usage records": len(records),
        "meter watermark": watermark.isoformat() if watermark else "none",
        "down seconds": down,
        "rated amount (mixed currencies)": amount_slots.quantize(Decimal("0.000001")),
        "raw SQL amount": raw_total.quantize(Decimal("0.000001")),
    }
    return figures, failures


def stored_samples() -> int:
    from inventory import telemetry

    return sql_one(f"SELECT count(*) FROM {telemetry.RAW}")[0]


# --- main ------------------------------------------------------------------------------------------------


class WindowCpu(common.CpuMeter):
    """CpuMeter that also counts the processes born during the window (a pool's new PostgreSQL backends, a
    restarted gunicorn worker): all their CPU time falls inside it."""

    def stop(self) -> dict[str, float]:
        for name, pids in self.groups.items():
            for pid in pids():
                self.c0.setdefault((name, pid), 0.0)
        return super().stop()


def spawn(target: Any, spec: dict[str, Any], queue: Any) -> Any:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=(spec, queue), daemon=True)
    proc.start()
    return proc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = server_env(args.database_url, "soak-parent")
    os.environ.update(env, DB_POOL="0")
    os.chdir(common.REPO)
    setup_database(args.database_url)
    started = time.perf_counter()
    fleet = ensure_fleet(args.servers)
    customers = ensure_customers(args.customers)
    print(
        f"fleet: {len(fleet)} servers x {GPUS_PER_SERVER} cards ready, {len(customers)} customers with new API keys "
        f"({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    from django.db import connections

    connections.close_all()
    if args.enrol_only:
        return 0

    seconds = args.minutes * 60
    report_rate = len(fleet) / AGENT_INTERVAL_S
    logdir = tempfile.mkdtemp(prefix="suanli-bench-soak-")
    # Two pools of the same code, as a deployment that serves a fleet runs them (docs/scaling.md): the agents' reports
    # on a gunicorn of their own, the customers' API on another, so a lease request never waits in line behind
    # thousands of reports. --agent-workers 0: one pool serves both (the set-up of the earlier soaks).
    sizes = {"api": args.workers, "agents": args.agent_workers}
    access_log = os.path.join(logdir, "api-access.log")
    pools: dict[str, common.Gunicorn] = {}
    procs: dict[str, Any] = {}
    try:
        for name, workers in sizes.items():
            if workers:
                log_path = os.path.join(logdir, f"gunicorn-{name}.log")
                pool_env = server_env(args.database_url, f"soak-{name}")
                if name == "api":  # each customer request's time inside its worker (%(D)s: microseconds)
                    access = f"--access-logfile {access_log} --access-logformat '{ACCESS_FORMAT}'"
                    pool_env["GUNICORN_CMD_ARGS"] = access
                pools[name] = common.Gunicorn(pool_env, workers=workers, log_path=log_path)
        for pool in pools.values():
            pool.wait_ready()
        server = pools.get("agents", pools["api"])  # the reports' pool
        start_at = time.time() + 3.0  # spawn + import time, so every process starts together
        stop_at = start_at + seconds
        boundaries = [
            min(start_at + (k + 1) * args.progress, stop_at) for k in range(math.ceil(seconds / args.progress))
        ]
        base = {"host": "127.0.0.1", "port": pools["api"].port, "start_at": start_at, "stop_at": stop_at}
        base["boundaries"] = boundaries
        queue = multiprocessing.get_context("spawn").Queue()
        agents = [[f["agent_id"], f["secret"], f["uuids"]] for f in fleet]
        per_proc = args.concurrency // args.load_procs
        for n in range(args.load_procs):
            spec = dict(base, role="reports", name=f"reports-{n}", index=n, agents=agents[n :: args.load_procs])
            spec.update(port=server.port)
            spec.update(threads=per_proc, threads_total=per_proc * args.load_procs, report_rate=report_rate)
            spec.update(seq_base=time.time_ns() // 1000)  # above any seq an earlier run reached
            procs[spec["name"]] = spawn(load_process, spec, queue)
        spec = dict(base, role="customers", name="customers", customers=customers, think=args.think)
        spec.update(cards_per_customer=args.cards_per_customer)
        spec.update(leases_per_customer=max(1, args.max_leases // len(customers)))
        procs["customers"] = spawn(load_process, spec, queue)
        procs["jobs"] = spawn(
            jobs_process,
            dict(
                base, env={**server_env(args.database_url, "soak-jobs"), "DB_POOL": "0"}, meter_every=args.meter_every
            ),
            queue,
        )
        served = ", ".join(
            f"{name} (pid {pool.proc.pid}, 127.0.0.1:{pool.port}, {sizes[name]} sync workers)"
            for name, pool in pools.items()
        )
        print(
            f"gunicorn: {served}; reports to {'agents' if 'agents' in pools else 'api'}: "
            f"{args.load_procs} processes, {per_proc * args.load_procs} connections, target {report_rate:,.0f}/s; "
            f"{len(customers)} customers; billing jobs every {args.meter_every:g} s; {args.minutes:g} min from now",
            flush=True,
        )
        result = drive(args, pools, procs, queue, boundaries, start_at)
        result["access_log"] = access_log
    finally:
        for proc in procs.values():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        result_log = "\n".join(f"[{name}]\n{pool.log_tail()}" for name, pool in pools.items())
        for pool in pools.values():
            pool.stop()
    return finish(args, result, result_log, report_rate)


def postgres_party(url: str, party: str | None, parties: list[str]) -> Any:
    """The PostgreSQL processes of the bench's database whose application_name is `party`; with None, the rest of
    `common.postgres_pids` (the server's background processes, this process's own session, anyone else's)."""

    def pids() -> list[int]:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND (datname = current_database() OR backend_type <> 'client backend')"
            ).fetchall()
        if party is None:
            return [pid for pid, name in rows if name not in parties]
        return [pid for pid, name in rows if name == party]

    return pids


def drive(
    args: argparse.Namespace,
    pools: dict[str, common.Gunicorn],
    procs: dict[str, Any],
    queue: Any,
    boundaries: list[float],
    start_at: float,
) -> dict[str, Any]:
    """Print a progress line per window while the load runs; then gather every process's totals."""
    load_names = [name for name in procs if name != "jobs"]
    # CPU by party: each gunicorn pool and the PostgreSQL backends of its sessions (by application_name), the
    # jobs process and its backend, the load generators, this process; "other" is the rest of the machine.
    parties = [f"soak-{name}" for name in pools] + ["soak-jobs"]
    groups: dict[str, Any] = {f"web {name}": pool.pids for name, pool in pools.items()}
    for name in [*pools, "jobs"]:
        groups[f"pg {name}"] = postgres_party(args.database_url, f"soak-{name}", parties)
    groups["pg rest"] = postgres_party(args.database_url, None, parties)
    groups["load reports"] = lambda: [procs[n].pid for n in load_names if n != "customers"]
    groups["load customers"] = lambda: [procs["customers"].pid]
    groups["jobs"] = lambda: [procs["jobs"].pid]
    groups["soak"] = lambda: [os.getpid()]
    windows: dict[int, dict[str, dict]] = defaultdict(dict)
    finals: dict[str, dict] = {}
    state: dict[str, Any] = {"jobs_final": None, "fatal": [], "live": [], "cpu": [], "drift": []}

    def take(block_until: float) -> None:
        while True:
            try:
                msg = queue.get(timeout=max(0.05, block_until - time.time()))
            except queue_module.Empty:
                return
            if "progress" in msg:
                windows[msg["progress"]][msg["proc"]] = msg["window"]
            elif "final" in msg:
                finals[msg["final"]] = msg
            elif "jobs" in msg:
                print(f"  jobs: {msg['jobs']}", flush=True)
            elif "jobs_final" in msg:
                state["jobs_final"] = msg["jobs_final"]
            elif "fatal" in msg:
                state["fatal"].append(f"{msg['fatal']}: {msg['error']}")
                print(f"  load process {msg['fatal']} failed: {msg['error']}", flush=True)
            if time.time() >= block_until:
                return

    waits: Counter = Counter()
    sampler = threading.Thread(target=sample_waits, args=(args.database_url, parties, boundaries[-1], waits))
    sampler.daemon = True
    sampler.start()
    take(start_at)
    meter = WindowCpu(groups)
    meter.start()
    window_start = start_at
    for k, boundary in enumerate(boundaries):
        take(boundary + 1.0)
        cpu = meter.stop()
        meter = WindowCpu(groups)
        meter.start()
        live = live_state()
        state["live"].append(live)
        state["cpu"].append((boundary + 1.0 - window_start, cpu))
        window_start = boundary + 1.0
        deadline = time.time() + 30
        while len(windows[k]) < len(load_names) and time.time() < deadline and not state["fatal"]:
            take(time.time() + 1.0)
        span = boundary - (boundaries[k - 1] if k else start_at)
        line, reports = progress_line(boundary - start_at, span, windows[k], live, cpu)
        state["drift"].append(reports)
        print(line, flush=True)
    deadline = time.time() + HTTP_TIMEOUT_S * 4 + 60
    while (len(finals) < len(load_names) or state["jobs_final"] is None) and time.time() < deadline:
        if state["fatal"] and len(finals) + len(state["fatal"]) >= len(load_names) and state["jobs_final"]:
            break
        take(time.time() + 1.0)
    state["at_stop"] = {**live_state(), "active leases not holding gpu_count cards": sql_one(SQL_WRONG_COUNT)[0]}
    sampler.join(timeout=10)
    return {"finals": finals, "waits": waits, **state}


def sample_waits(url: str, parties: list[str], stop_at: float, out: Counter) -> None:
    """Every WAIT_SAMPLE_S s until `stop_at`, what each of the parties' PostgreSQL sessions is doing: idle (its worker
    is in Python, or has no request), in a transaction between statements, running, or waiting (lock, I/O, WAL)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while time.time() < stop_at:
                rows = conn.execute(
                    "SELECT application_name, state, wait_event_type, wait_event, left(query, 90) "
                    "FROM pg_stat_activity WHERE application_name = ANY(%s)",
                    [parties],
                ).fetchall()
                for party, session, wait_type, wait, query in rows:
                    session = session or "connecting"  # no state yet: a backend still starting up
                    if session == "active":
                        session = f"waiting on {wait_type}:{wait}" if wait_type else "running"
                        out[("statement", party, " ".join(query.split()))] += 1
                    out[(party, session)] += 1
                time.sleep(WAIT_SAMPLE_S)
    except psycopg.Error as exc:
        out[("sampler", repr(exc)[:80])] += 1


def progress_line(
    at: float, span: float, window: dict[str, dict], live: dict, cpu: dict
) -> tuple[str, tuple[float, float]]:
    """One window's line, and its reports/s and report p95 (ms)."""
    merged: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for per_proc in window.values():
        for kind, rows in per_proc.items():
            merged[kind] += rows
    parts = []
    reports = (0.0, float("nan"))
    for kind in KINDS:
        if not (rows := merged.get(kind)):
            continue
        bad = sum(1 for status, _ in rows if status not in EXPECTED[kind])
        p95 = common.percentile(sorted(ms for _, ms in rows), 95)
        rate = f" {len(rows) / span:,.1f}/s" if kind == "report" else ""
        if kind == "report":
            reports = (len(rows) / span, p95)
        parts.append(f"{kind} {len(rows)}{rate} p95 {p95:,.0f} ms{f' bad {bad}' if bad else ''}")
    cpu_text = " ".join(f"{name} {pct:.0f}" for name, pct in cpu.items())
    line = (
        f"[{at / 60:5.1f} min] " + "; ".join(parts) + f" | live {live['live leases']} leases "
        f"{live['held cards']} cards, double-booked {live['cards held by two live leases']} | CPU % {cpu_text}"
    )
    return line, reports


def tally(finals: dict[str, dict]) -> tuple[dict[str, Counter], dict[str, list[float]], Counter, list[str]]:
    """The load processes' totals, merged: statuses and latencies per kind, notes, examples of odd answers."""
    statuses: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    notes: Counter = Counter()
    examples: list[str] = []
    for final in finals.values():
        for kind, counts in final["statuses"].items():
            statuses[kind].update(counts)
        for kind, values in final["latencies"].items():
            latencies[kind] += values
        notes.update(final["notes"])
        examples += final["examples"]
    return statuses, latencies, notes, examples


def check_booking(live_samples: list[dict], at_stop: dict[str, int]) -> tuple[dict[str, int], list[str]]:
    """After every live lease was ended: overlaps, cards held twice (sampled), leases holding past their end."""
    worst = max(s["cards held by two live leases"] for s in [*live_samples, at_stop])
    booking = {
        **{f"at the stop: {k}": v for k, v in at_stop.items()},
        "overlapping allocations of one card": sql_one(SQL_OVERLAPS)[0],
        "cards held by two live leases (worst sample)": worst,
        "ended leases holding a card past their end": sql_one(SQL_HELD_PAST_END)[0],
    }
    counts_only = {"at the stop: live leases", "at the stop: held cards"}
    must_be_zero = [name for name in booking if name not in counts_only]
    return booking, [f"{name}: {booking[name]}" for name in must_be_zero if booking[name]]


def worker_times(access_log: str) -> dict[str, list[float]]:
    """Milliseconds each customer request spent inside its gunicorn worker, per kind, from the API pool's access log
    (what the client saw beyond that is the wait for a worker and the loopback)."""
    kinds: dict[str, list[float]] = defaultdict(list)
    try:
        with open(access_log) as fh:
            for line in fh:
                method, path, _, micros = line.split()
                if not path.startswith(LEASES_PATH):
                    continue
                kind = "lease list" if method == "GET" else "lease create"
                if path.endswith("/end/"):
                    kind = "lease end"
                elif path.endswith("/resize/"):
                    kind = "lease resize"
                kinds[kind].append(int(micros) / 1000)
    except (OSError, ValueError):
        pass
    return kinds


def print_waits(result: dict[str, Any], latencies: dict[str, list[float]]) -> None:
    """Where a lease request's time went: at the client against inside the worker; and what the PostgreSQL sessions
    of each party were doing, sampled."""
    inside = worker_times(result.get("access_log", ""))
    rows = []
    for kind, times in inside.items():
        seen = sorted(
            latencies.get(kind, []) + (latencies.get("lease create replay", []) if kind == "lease create" else [])
        )
        times.sort()
        rows.append(
            [kind, len(seen), common.percentile(seen, 50), common.percentile(seen, 95), len(times)]
            + [common.percentile(times, 50), common.percentile(times, 95)]
        )
    if rows:
        headers = ["customer requests", "at the client", "p50 ms", "p95 ms", "in the worker", "p50 ms", "p95 ms"]
        print(common.table(headers, rows))
    waits: Counter = result.get("waits", Counter())
    states = {key: n for key, n in waits.items() if len(key) == 2}
    for party in sorted({party for party, _ in states}):
        total = sum(n for (p, _), n in states.items() if p == party)
        shares = sorted(((n, what) for (p, what), n in states.items() if p == party), reverse=True)
        text = ", ".join(f"{what} {100 * n / total:.0f} %" for n, what in shares[:6])
        print(f"PostgreSQL sessions of {party} ({total} samples, every {WAIT_SAMPLE_S:g} s): {text}")
        busy = sorted((n, key[2]) for key, n in waits.items() if len(key) == 3 and key[1] == party)
        for n, query in busy[::-1][:4]:
            print(f"    active {100 * n / total:4.1f} % of samples: {query}")


def finish(args: argparse.Namespace, result: dict[str, Any], gunicorn_log: str, report_rate: float) -> int:
    """End the leases, meter once more, check, print; the exit status."""
    from django.utils import timezone

    from billing import metering

    seconds = args.minutes * 60
    statuses, latencies, notes, examples = tally(result["finals"])
    ended = end_live_leases()
    # Every allocation is closed now, so the hour in progress is final: meter it as the hourly job will once it is
    # over (a 10-minute load seldom crosses an hour, and the checks below compare the records with the slots).
    final_records = metering.meter(until=metering.hour_floor(timezone.now()) + timedelta(hours=1))
    booking, failures = check_booking(result["live"], result["at_stop"])
    failures = list(result["fatal"]) + [f"booking: {f}" for f in failures]
    billing, billing_failures = check_billing()
    failures += [f"billing: {f}" for f in billing_failures]
    accepted, dropped = statuses["report"].get(202, 0), statuses["report"].get(0, 0)
    samples = stored_samples()
    if not accepted * GPUS_PER_SERVER <= samples <= (accepted + dropped) * GPUS_PER_SERVER:
        failures.append(f"ingest: {samples} samples stored for {accepted} reports answered 202 ({dropped} dropped)")
    if notes.get("replay answered another lease"):
        failures.append(f"idempotency: {notes['replay answered another lease']} replays answered another lease")
    jobs = result["jobs_final"] or {"runs": {}, "seconds": {}, "records": 0, "errors": ["the jobs never reported"]}
    failures += [f"jobs: {e}" for e in jobs["errors"][:5]]

    rows = []
    total = server_errors = 0
    for kind in KINDS:
        if not (counts := statuses.get(kind)):
            continue
        n = sum(counts.values())
        bad = sum(c for s, c in counts.items() if s not in EXPECTED[kind])
        failed = sum(c for s, c in counts.items() if s == 0 or s >= 500)
        total, server_errors = total + n, server_errors + failed
        lat = sorted(latencies[kind])
        by_status = " ".join(f"{s}:{c}" for s, c in sorted(counts.items()))
        rows.append(
            [kind, n, n / seconds, by_status, bad / n, failed / n, *(common.percentile(lat, p) for p in (50, 95, 99))]
        )
    error_rate = server_errors / total if total else 1.0
    if error_rate > args.max_error_rate:
        failures.append(f"5xx + dropped: {error_rate:.4%} of requests, over {args.max_error_rate:.4%}")
    span = sum(w for w, _ in result["cpu"]) or 1.0
    cpu: dict[str, float] = defaultdict(float)
    for w, window in result["cpu"]:
        for name, pct in window.items():
            cpu[name] += pct * w / span
    achieved = accepted / seconds
    # CPU per request, all kinds together (reports are nearly all of them): what the target rate would take.
    server_side = sum(pct for name, pct in cpu.items() if name.startswith(("web ", "pg ")))
    per_request_ms = 10 * server_side * seconds / total if total else float("nan")
    reports = sum(statuses["report"].values())
    api_requests = total - reports

    print()
    print(
        f"summary: {args.servers:,} servers x {GPUS_PER_SERVER} cards, {args.customers} customers, "
        f"{args.minutes:g} min, gunicorn {args.workers} sync workers, {os.cpu_count()} CPUs, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    headers = ["requests", "served", "per s", "statuses", "error rate", "5xx+dropped", "p50 ms", "p95 ms", "p99 ms"]
    print(common.table(headers, rows))
    print(
        f"agent reports accepted: {achieved:,.1f}/s of this fleet's {report_rate:,.1f}/s "
        f"({100 * achieved / report_rate:.0f} %); of the {TARGET_REPORTS_PER_S:,.0f}/s of 12,500 servers: "
        f"{100 * achieved / TARGET_REPORTS_PER_S:.1f} %"
    )
    print("report windows (reports/s, p95 ms): " + ", ".join(f"{r:,.1f} {p:,.0f}" for r, p in result["drift"]))
    print(
        f"lease requests refused for capacity (409): {notes.get('lease create: no capacity', 0)} creates, "
        f"{notes.get('lease resize: no capacity', 0)} resizes; {ended} leases still live at the stop, ended after it"
    )
    print("CPU, % of one core (mean over the load): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))

    def each(pct: float, n: int) -> str:  # ms of CPU per request from a mean % of one core over the load
        return f"{10 * pct * seconds / n:.2f} ms" if n else "-"

    by_party = [f"load generator {each(cpu['load reports'], reports)} a report"]
    if "web agents" in cpu:
        by_party.insert(0, f"web {each(cpu['web agents'], reports)} + PostgreSQL {each(cpu['pg agents'], reports)}")
        by_party.append(
            f"customers' requests: web {each(cpu['web api'], api_requests)} + PostgreSQL "
            f"{each(cpu['pg api'], api_requests)} each ({api_requests} requests)"
        )
    print(
        "CPU by party: reports: " + ", ".join(by_party) + f"; billing jobs {cpu['jobs']:.1f} % + PostgreSQL "
        f"{cpu['pg jobs']:.1f} % of a core; PostgreSQL's rest (background, this process) {cpu['pg rest']:.1f} %"
    )
    print(
        f"CPU per served request, gunicorn + PostgreSQL: {per_request_ms:.1f} ms; at that cost "
        f"{TARGET_REPORTS_PER_S:,.0f} reports/s would take {per_request_ms * TARGET_REPORTS_PER_S / 1000:.1f} cores "
        "for the server side alone (a rough bound: CPU per request grows on a crowded machine)"
    )
    timings = ", ".join(
        f"{name} x{n} (median {common.median(jobs['seconds'][name]):.2f} s, max {max(jobs['seconds'][name]):.2f} s)"
        for name, n in sorted(jobs["runs"].items())
    )
    print_waits(result, latencies)
    print(f"jobs: {timings}; usage records written during the load {jobs['records']}, after it {final_records}")
    print(common.table(["booking", "value"], [[k, v] for k, v in booking.items()]))
    print(common.table(["billing", "value"], [[k, str(v)] for k, v in billing.items()]))
    print(f"ingest: {samples:,} raw samples stored for {accepted:,} reports answered 202 ({dropped} dropped)")
    if examples:
        print("unexpected answers (first few):\n  " + "\n  ".join(examples))
    if server_errors:
        print(f"gunicorn log tail:\n{gunicorn_log[-2000:]}")
    if not args.keep_db:
        empty_run_rows()
    print("\nchecks: " + ("all passed" if not failures else "FAILED\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
