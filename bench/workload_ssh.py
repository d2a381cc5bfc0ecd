"""Time to SSH: from `POST /api/v1/leases/` to the customer's first successful `ssh ... true` into the container,
against the same image started by hand with `docker run` to its first successful login.

    .venv/bin/python bench/workload_ssh.py                 # 20 leases, then 20 hand-started containers
    .venv/bin/python bench/workload_ssh.py --leases 5      # a quick look

What it does, loopback only, and stops by itself (needs root, dockerd, busybox, dropbear and ssh: what
tests/containers.py needs):
1. its own database (`--database-url` or BENCH_WORKLOAD_SSH_DATABASE_URL, default
   postgres://postgres@127.0.0.1:5432/suanli_bench_workload_ssh; the name must contain "bench"): created when
   missing and migrated; a provider registers a new 8-card docker server (public host 127.0.0.1) and lists it at a
   card-hour price; a customer organisation gets a fresh API key;
2. the production server: `gunicorn config.wsgi` (2 sync workers, DJANGO_DEBUG=0, Redis db 11);
3. a Docker daemon of its own (`tests.containers.start_dockerd`: own socket, root and bridge, vfs storage), with
   the tests' busybox + dropbear SSH image imported into it;
4. the agent, unmodified: `python -m agents --simulate 8 enroll`, then `... --runtime docker --docker-url URL run
   --interval 1 --workloads-poll 0.5 --publish-address 127.0.0.1`;
5. the customer (HTTP to gunicorn, as a client would): adds an ed25519 key (ssh-keygen) and a private template of
   the SSH image with port 22; then, `--leases` times: the clock starts, `POST /api/v1/leases/` (card_hour, 1
   card, the template and the key), `GET /api/v1/leases/ID/` every `--api-poll` seconds until the workload is
   running with an ssh connect port, then `ssh -i key -p PORT root@127.0.0.1 true` (retried while the port does
   not answer yet) until it succeeds: the clock stops. The lease is ended and the next one waits until its
   container is gone;
6. the baseline, `--leases` times: the clock starts, `docker run -d -p 127.0.0.1::22 -v KEYS:/root/.ssh:ro
   IMAGE`, `docker port`, the same ssh until it succeeds: the clock stops; `docker rm -f`.
The difference is the platform's overhead: the API, the agent's desired-state poll (0.5 s: it bounds the wait
for the agent to see a lease), its report of the running workload, the customer's poll of the API, and the
container the agent makes (labels, limits, the cards' environment). Exit status 1 when any login fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402 (the bench folder is not a package)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench_workload_ssh"
GPU_MODEL_SLUG = "h100-sxm5-80gb"  # the simulator's "h100": NVIDIA H100 80GB HBM3
PROVIDER_NAME = "workload ssh provider"
CUSTOMER_EMAIL = "workload-ssh-customer@example.invalid"
WORKLOADS_POLL = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    url = os.environ.get("BENCH_WORKLOAD_SSH_DATABASE_URL", DEFAULT_DATABASE_URL)
    parser.add_argument("--database-url", default=url)
    parser.add_argument("--leases", type=int, default=20, help="leases, and hand-started containers (default 20)")
    parser.add_argument("--api-poll", type=float, default=0.1, help="the customer's lease poll (default 0.1 s)")
    parser.add_argument("--ssh-timeout", type=float, default=60.0, help="most seconds for one login (default 60)")
    args = parser.parse_args(argv)
    if "bench" not in common.database_name(args.database_url):
        parser.error("the database name must contain 'bench'")
    if args.leases < 1 or args.api_poll <= 0:
        parser.error("need --leases >= 1 and --api-poll > 0")
    return args


# --- setup (Django) --------------------------------------------------------------------------------------


def setup(url: str) -> dict[str, Any]:
    """A new 8-card docker server of the provider, listed; the customer with a fresh API key."""
    common.migrate_database(url)
    from accounts.models import ApiKey, Organization, User
    from accounts.services import api_key_create, api_key_revoke, organization_create
    from inventory import services, telemetry
    from inventory.models import GpuModel

    telemetry.ensure_partitions()
    provider = common.approved_provider(PROVIDER_NAME, "workload-ssh")
    start = 20000 + (os.getpid() % 400) * 100
    server, token = services.server_register(
        org=provider,
        name=f"wl-ssh-{uuid.uuid4().hex[:12]}",
        region="bench",
        gpu_model=GpuModel.objects.get(slug=GPU_MODEL_SLUG),
        gpu_count=8,
        cpu_cores=16,
        ram_gb=64,
        disk_gb=800,
        runtime="docker",
        public_host="127.0.0.1",
        port_range_start=start,
        port_range_end=start + 99,
    )
    user = User.objects.filter(email=CUSTOMER_EMAIL).first() or User.objects.create_user(
        email=CUSTOMER_EMAIL, password=None
    )
    org = Organization.objects.filter(memberships__user=user).first()
    if org is None:
        org = organization_create(user=user, name="workload ssh customer", kind="customer", currency="USD")
    for key_id in ApiKey.objects.filter(user=user, revoked_at__isnull=True).values_list("pk", flat=True):
        api_key_revoke(user=user, key_id=key_id)
    _, api_token = api_key_create(user=user, name="workload-ssh")
    Organization.objects.filter(pk=org.pk).update(billing_hold=False)
    from django.db import connections

    connections.close_all()
    return {"server": server, "enrollment_token": token, "org": org.pk, "api_token": api_token}


def list_offer(server_id: int) -> int:
    """The server's card-hour offer (after enrolment: the cards exist then)."""
    from inventory.models import Server
    from marketplace.services import offer_create

    server = Server.objects.get(pk=server_id)
    offer = offer_create(org=server.organization, server=server, prices={"card_hour": Decimal("2.50")})
    from django.db import connections

    connections.close_all()
    return offer.pk


# --- the customer (HTTP) ---------------------------------------------------------------------------------


class Api:
    def __init__(self, port: int, token: str, org: int) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "X-Organization": str(org)}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = dict(self.headers)
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: Any = None, want: int = 200) -> Any:
        status, data = self.call(method, path, body)
        if status != want:
            raise RuntimeError(f"{method} {path}: {status} {data}")
        return data


def wait_until(check, timeout: float, what: str, poll: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- the run ---------------------------------------------------------------------------------------------


def summary(name: str, values: list[float]) -> list[Any]:
    ordered = sorted(values)
    if not ordered:
        return [name, 0, "-", "-", "-", "-", "-"]
    figures = [common.percentile(ordered, 50), common.percentile(ordered, 95), statistics.fmean(ordered)]
    return [name, len(ordered), *(f"{value:.2f}" for value in [*figures, ordered[0], ordered[-1]])]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = common.server_env(args.database_url, bench_name="workload-ssh", redis_db=11)
    os.environ.update(env, DB_POOL="0")
    os.chdir(common.REPO)
    from tests.containers import authorized_keys_dir, build_ssh_image, make_keypair, ssh_run, start_dockerd

    made = setup(args.database_url)
    server_id = made["server"].pk
    workdir = Path(tempfile.mkdtemp(prefix="suanli-bench-workload-ssh-"))
    keys = make_keypair(workdir / "keys", name="id_customer")
    keys_dir = authorized_keys_dir(workdir / "authorized", keys.public_text)
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "SUANLI_AGENT"))}
    failures: list[str] = []
    ours: list[float] = []
    running_at: list[float] = []
    by_hand: list[float] = []
    platform = common.Gunicorn(env, workers=2, log_path=str(workdir / "gunicorn.log"))
    agent = agent_log = None
    try:
        with start_dockerd() as daemon:
            image = build_ssh_image(daemon)
            platform.wait_ready()
            url = f"http://127.0.0.1:{platform.port}"
            common_argv = [
                sys.executable, "-m", "agents",
                "--config", str(workdir / "agent.json"),
                "--spool-dir", str(workdir / "spool"),
                "--state-dir", str(workdir / "state"),
                "--simulate", "8", "--model", "h100", "--seed", workdir.name,
                "--runtime", "docker", "--docker-url", daemon.url,
            ]  # fmt: skip
            enrolled = subprocess.run(
                [*common_argv, "enroll", "--url", url, "--token", made["enrollment_token"]],
                cwd=common.REPO, env=agent_env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if enrolled.returncode != 0:
                raise RuntimeError(f"agent enroll failed: {enrolled.stderr}")
            offer = list_offer(server_id)
            agent_log = open(workdir / "agent.log", "ab")  # noqa: SIM115 - closed below
            agent = subprocess.Popen(
                [*common_argv, "run", "--interval", "1", "--workloads-poll", str(WORKLOADS_POLL),
                 "--publish-address", "127.0.0.1"],
                cwd=common.REPO, env=agent_env, stdout=agent_log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            api = Api(platform.port, made["api_token"], made["org"])
            key_id = api.ok("POST", "/api/v1/ssh-keys/", {"name": "bench", "public_key": keys.public_text}, 201)["id"]
            template = api.ok(
                "POST",
                "/api/v1/templates/",
                {"name": f"bench ssh {workdir.name}", "image": image, "ports": [22], "min_disk_gb": 1},
                201,
            )["id"]
            time.sleep(2)  # the agent's first report: the server is online
            print(f"platform {url}, dockerd {daemon.url}, image {image}; {args.leases} leases ...", flush=True)
            for n in range(args.leases):
                body = {
                    "plan": "card_hour",
                    "gpu_count": 1,
                    "offer": offer,
                    "workload": {"template": template, "ssh_keys": [key_id]},
                }
                started = time.perf_counter()
                lease = api.ok("POST", "/api/v1/leases/", body, 201)

                def running(lease_id: int = lease["id"]) -> dict[str, Any] | None:
                    workload = api.ok("GET", f"/api/v1/leases/{lease_id}/")["workloads"][0]
                    if workload["state"] == "failed":
                        raise RuntimeError(f"lease {lease_id} failed: {workload.get('message')}")
                    return workload if workload["state"] == "running" and workload["connect"] else None

                try:
                    workload = wait_until(running, 120, f"lease {lease['id']} running", args.api_poll)
                    seen_running = time.perf_counter() - started
                    port = next(c["port"] for c in workload["connect"] if c["kind"] == "ssh")
                    login = ssh_run(port, keys.private, "true", timeout=args.ssh_timeout)
                    elapsed = time.perf_counter() - started
                    if login.returncode != 0:
                        failures.append(f"lease {lease['id']}: ssh exited {login.returncode}: {login.stderr.strip()}")
                    else:
                        ours.append(elapsed)
                        running_at.append(seen_running)
                        print(f"  lease {n + 1}: running seen {seen_running:.2f} s, ssh ok {elapsed:.2f} s", flush=True)
                except RuntimeError as error:
                    failures.append(str(error))
                api.ok("POST", f"/api/v1/leases/{lease['id']}/end/")
                wait_until(
                    lambda lease_id=lease["id"]: (
                        not daemon.run("ps", "-aq", "--filter", f"label=suanli.lease={lease_id}").stdout.split()
                    ),
                    120,
                    f"lease {lease['id']}'s container gone",
                    0.2,
                )
            agent.terminate()
            agent.wait(timeout=30)
            daemon.remove_all_containers()
            print(f"docker run by hand, {args.leases} times ...", flush=True)
            for n in range(args.leases):
                started = time.perf_counter()
                container = daemon.run(
                    "run", "-d", "-p", "127.0.0.1::22", "-v", f"{keys_dir}:/root/.ssh:ro", image
                ).stdout.strip()
                port = daemon.published_port(container)
                login = ssh_run(port, keys.private, "true", timeout=args.ssh_timeout)
                elapsed = time.perf_counter() - started
                if login.returncode != 0:
                    failures.append(f"docker run {container[:12]}: ssh exited {login.returncode}: {login.stderr}")
                else:
                    by_hand.append(elapsed)
                    print(f"  docker run {n + 1}: ssh ok {elapsed:.2f} s", flush=True)
                daemon.run("rm", "-f", "-v", container)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        if agent_log is not None:
            agent_log.close()
        platform.stop()

    print()
    headers = ["seconds to first ssh login", "n", "p50", "p95", "mean", "min", "max"]
    rows = [
        summary("lease (POST to ssh ok)", ours),
        summary("  of which: lease seen running", running_at),
        summary("docker run by hand", by_hand),
    ]
    print(common.table(headers, rows))
    ours_p50, hand_p50 = common.median(ours), common.median(by_hand)
    print()
    difference, ratio = ours_p50 - hand_p50, ours_p50 / hand_p50
    print(f"median difference (our overhead): {difference:.2f} s; ratio of medians: {ratio:.2f}x")
    print(
        f"The agent polls its desired state every {WORKLOADS_POLL} s (--workloads-poll), reports every 1 s "
        f"(--interval) and the customer polls the API every {args.api_poll} s: those intervals bound the overhead's "
        f"waiting (up to {WORKLOADS_POLL + 1 + args.api_poll:.1f} s); the rest is the API, the agent's container "
        "set-up and its report."
    )
    print(f"logs: {workdir}")
    if failures:
        print(f"\n{len(failures)} failed login(s):", *failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
