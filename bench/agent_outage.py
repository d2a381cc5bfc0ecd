"""Agent outage: a simulated `suanli-agent run` reports to the real platform, the platform goes away for
`--outage-seconds`, comes back on the same address, and every sample must arrive exactly once.

    .venv/bin/python bench/agent_outage.py                                    # 10 minutes down, 10 s interval, 8 cards
    .venv/bin/python bench/agent_outage.py --outage-seconds 60 --interval 2   # a quick look

What it does, loopback only, and stops by itself:
1. its own database (`--database-url` or BENCH_AGENT_OUTAGE_DATABASE_URL, default
   postgres://postgres@127.0.0.1:5432/suanli_bench_agent_outage; the name must contain "bench"): created when
   missing and migrated; a provider "outage provider" registers a new server of `--cards` H100s each run;
2. the production server: `gunicorn config.wsgi` (1 sync worker, DJANGO_DEBUG=0, Redis db 10), with the platform's
   own per-agent report limit (RATE_LIMIT_AGENT_REPORTS unset: 120 a minute), not the out-of-reach one of the other
   benches: the catch-up burst after the outage meets the limit a real agent meets;
3. the agent, unmodified: `python -m agents --simulate N enroll` with the server's enrolment token, then
   `python -m agents --simulate N run --interval I` in a subprocess (its real back-off: 1 s base, 60 s cap, full
   jitter). Its spool starts at seq = the current unix time, as a fresh spool does, so the first seq is known;
4. once `--before` reports are in, gunicorn's process group gets SIGTERM (`--crash`: SIGKILL, a report in flight
   may then be stored with its answer lost), and the port stays closed for `--outage-seconds`; then the seqs and
   collection times of the reports in the agent's spool directory are read, and gunicorn is started again on the
   same port;
5. catch-up: from the platform answering /healthz again until the last report spooled during the outage has
   left the spool (split into the wait for the agent's next attempt and the drain); then `--after` more intervals,
   and the agent gets SIGTERM at a moment its spool is empty;
6. checks, in SQL on the raw samples of the server: one collection time per seq produced (nothing missing), one row
   per card and time (no duplicate), reports x cards rows, each spooled report stored at the collection time it
   was spooled with (not its delivery time), the server's last seq = the agent's, nothing dropped or refused by the
   agent, and its spool empty at the end.
The run's samples are deleted afterwards unless `--keep-db`. Exit status 1 when a sample is lost or duplicated
or any other check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402 (the bench folder is not a package)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench_agent_outage"
GPU_MODEL_SLUG = "h100-sxm5-80gb"  # the simulator's "h100": NVIDIA H100 80GB HBM3
PROVIDER_NAME = "outage provider"
REPORT_NAME = re.compile(r"^(\d{20})\.json$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    url = os.environ.get("BENCH_AGENT_OUTAGE_DATABASE_URL", DEFAULT_DATABASE_URL)
    parser.add_argument("--database-url", default=url)
    parser.add_argument("--outage-seconds", type=float, default=600.0, help="platform down for (default 600)")
    parser.add_argument("--interval", type=float, default=10.0, help="the agent's report interval (default 10)")
    parser.add_argument("--cards", type=int, default=8, help="simulated cards (default 8)")
    parser.add_argument("--before", type=int, default=3, help="reports delivered before the outage (default 3)")
    parser.add_argument("--after", type=int, default=2, help="intervals reported after the catch-up (default 2)")
    parser.add_argument("--crash", action="store_true", help="SIGKILL the platform instead of SIGTERM")
    parser.add_argument(
        "--catch-up-timeout", type=float, default=600.0, help="most seconds to wait for the catch-up (default 600)"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep this run's samples")
    args = parser.parse_args(argv)
    if "bench" not in common.database_name(args.database_url):
        parser.error("the database name must contain 'bench'")
    if args.outage_seconds <= 0 or args.interval <= 0 or not 1 <= args.cards <= 64 or args.before < 1:
        parser.error("need --outage-seconds > 0, --interval > 0, 1 to 64 --cards and --before >= 1")
    return args


def server_env(database_url: str) -> dict[str, str]:
    env = common.server_env(database_url, bench_name="agent-outage", redis_db=10)
    del env["RATE_LIMIT_AGENT_REPORTS"]  # the platform's own limit: this is one agent at its real pace
    return env


# --- setup (Django) --------------------------------------------------------------------------------------


def setup(url: str, cards: int) -> tuple[int, str]:
    """A new server of `cards` H100s for the outage provider: (server id, enrolment token)."""
    common.migrate_database(url)
    from inventory import services, telemetry
    from inventory.models import GpuModel

    telemetry.ensure_partitions()
    server, token = services.server_register(
        org=common.approved_provider(PROVIDER_NAME, "outage"),
        name=f"outage-{uuid.uuid4().hex[:12]}",
        region="bench",
        gpu_model=GpuModel.objects.get(slug=GPU_MODEL_SLUG),
        gpu_count=cards,
        cpu_cores=96,
        ram_gb=1024,
        disk_gb=8000,
    )
    from django.db import connections

    connections.close_all()
    return server.pk, token


# --- the agent and its spool -----------------------------------------------------------------------------


def spooled(directory: str) -> list[int]:
    """The seqs of the reports waiting in the spool directory, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m[1]) for m in map(REPORT_NAME.match, names) if m)


def spool_state(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, "state.json"), encoding="utf-8") as fh:
        return json.load(fh)


def agent_argv(workdir: str, cards: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agents",
        "--config",
        os.path.join(workdir, "agent.json"),
        "--spool-dir",
        os.path.join(workdir, "spool"),
        "--simulate",
        str(cards),
        "--model",
        "h100",
        "--seed",
        os.path.basename(workdir),
        *args,
    ]


def agent_stats(log_path: str) -> dict[str, Any]:
    """The counters of the agent's last log line, `stopped: {...}`."""
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        lines = [line for line in fh if "stopped: {" in line]
    if not lines:
        return {}
    import ast

    return ast.literal_eval(lines[-1].split("stopped: ", 1)[1].strip())


def wait_until(check, timeout: float, what: str, poll: float = 0.05) -> float:
    """Poll `check` until true; the monotonic time it first was. RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(poll)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_platform(server: common.Gunicorn, crash: bool) -> None:
    if crash and server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    server.stop()


# --- the run ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = server_env(args.database_url)
    os.environ.update(env, DB_POOL="0")
    os.chdir(common.REPO)
    server_id, token = setup(args.database_url, args.cards)
    workdir = tempfile.mkdtemp(prefix="suanli-bench-agent-outage-")
    spool_dir = os.path.join(workdir, "spool")
    agent_log = os.path.join(workdir, "agent.log")
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "SUANLI_AGENT"))}
    import psycopg

    db = psycopg.connect(args.database_url, autocommit=True)

    def last_seq() -> int:
        return db.execute("SELECT last_seq FROM inventory_server WHERE id = %s", [server_id]).fetchone()[0]

    platform = common.Gunicorn(env, workers=1, log_path=os.path.join(workdir, "gunicorn.log"))
    port = platform.port
    agent = None
    try:
        platform.wait_ready()
        url = f"http://127.0.0.1:{port}"
        enrolled = subprocess.run(
            agent_argv(workdir, args.cards, "enroll", "--url", url, "--token", token),
            cwd=common.REPO,
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if enrolled.returncode != 0:
            raise RuntimeError(f"enrolment failed ({enrolled.returncode}): {enrolled.stderr[-2000:]}")
        # A fresh spool starts at the current unix time; written here so that the first seq is known.
        first_seq = int(time.time())
        from agents.spool import atomic_write

        os.makedirs(spool_dir, mode=0o700)
        atomic_write(os.path.join(spool_dir, "state.json"), json.dumps({"last_seq": first_seq - 1}).encode())
        with open(agent_log, "wb") as log:
            agent = subprocess.Popen(
                agent_argv(workdir, args.cards, "run", "--interval", str(args.interval)),
                cwd=common.REPO,
                env=agent_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(
            f"platform on {url} (gunicorn pid {platform.proc.pid}); agent pid {agent.pid}: {args.cards} simulated "
            f"H100s every {args.interval:g} s, first seq {first_seq}; logs in {workdir}",
            flush=True,
        )
        wait_until(
            lambda: last_seq() >= first_seq + args.before - 1 or agent.poll() is not None,
            args.before * args.interval + 120,
            f"{args.before} reports delivered",
            poll=0.2,
        )
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode}; see {agent_log}")

        stop_platform(platform, args.crash)
        down_at = time.time()
        print(
            f"platform {'killed' if args.crash else 'stopped'} after {last_seq() - first_seq + 1} report(s); "
            f"down for {args.outage_seconds:g} s ...",
            flush=True,
        )
        progress = down_at
        while (left := down_at + args.outage_seconds - time.time()) > 0:
            time.sleep(min(left, 1.0))
            if time.time() - progress >= 60:
                progress = time.time()
                print(f"  {progress - down_at:.0f} s down: {len(spooled(spool_dir))} report(s) spooled", flush=True)
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.returncode} during the outage; see {agent_log}")
        outage = {}
        for seq in spooled(spool_dir):  # nothing leaves the spool while the platform is down
            with open(os.path.join(spool_dir, f"{seq:020d}.json"), encoding="utf-8") as fh:
                outage[seq] = datetime.fromisoformat(json.load(fh)["sent_at"])

        platform = common.Gunicorn(env, workers=1, log_path=platform.log_path, port=port)
        platform.wait_ready()
        back_at, back_mono = time.time(), time.monotonic()
        print(f"platform back on {url}: {len(outage)} report(s) spooled, catching up ...", flush=True)
        newest = max(outage, default=first_seq)
        first_out = wait_until(
            lambda: (
                min(spooled(spool_dir), default=newest + 1) > min(outage, default=newest) or agent.poll() is not None
            ),
            args.catch_up_timeout,
            "the agent's first delivery after the outage",
        )
        caught_up = wait_until(
            lambda: min(spooled(spool_dir), default=newest + 1) > newest or agent.poll() is not None,
            args.catch_up_timeout,
            "the spooled reports delivered",
        )
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode} while catching up; see {agent_log}")
        time.sleep(args.after * args.interval)
        # Stop at a moment nothing is spooled: just after a delivery, with a whole interval before the next report.
        wait_until(
            lambda: (
                not spooled(spool_dir) and spool_state(spool_dir)["last_sent_seq"] == spool_state(spool_dir)["last_seq"]
            ),
            args.interval * 10 + 120,
            "an empty spool",
        )
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        platform.stop()

    state = spool_state(spool_dir)
    stats = agent_stats(agent_log)
    return finish(
        args,
        db,
        server_id,
        first_seq,
        state,
        stats,
        outage,
        spooled(spool_dir),
        (down_at, back_at),
        (first_out - back_mono, caught_up - back_mono),
        agent.returncode,
    )


def finish(
    args: argparse.Namespace,
    db: Any,
    server_id: int,
    first_seq: int,
    state: dict[str, Any],
    stats: dict[str, Any],
    outage: dict[int, datetime],
    left: list[int],
    window: tuple[float, float],
    catch_up: tuple[float, float],
    agent_rc: int | None,
) -> int:
    produced = state["last_seq"] - first_seq + 1
    rows, reports, distinct_rows = db.execute(
        "SELECT count(*), count(DISTINCT ts), count(DISTINCT (gpu_id, ts)) FROM inventory_gpusample "
        "WHERE server_id = %s",
        [server_id],
    ).fetchone()
    per_gpu = dict(
        db.execute(
            "SELECT g.id, count(s.ts) FROM inventory_gpu g LEFT JOIN inventory_gpusample s ON s.gpu_id = g.id "
            "WHERE g.server_id = %s GROUP BY g.id",
            [server_id],
        ).fetchall()
    )
    times = [
        ts
        for (ts,) in db.execute(
            "SELECT DISTINCT ts FROM inventory_gpusample WHERE server_id = %s ORDER BY ts", [server_id]
        ).fetchall()
    ]
    server_seq = db.execute("SELECT last_seq FROM inventory_server WHERE id = %s", [server_id]).fetchone()[0]
    down_at, back_at = window
    misplaced = [seq for seq, at in outage.items() if seq - first_seq >= len(times) or times[seq - first_seq] != at]
    late = [seq for seq, at in outage.items() if at.timestamp() >= back_at]
    duplicates = rows - distinct_rows
    gaps = produced - reports
    failures = {
        "reports missing (gaps)": gaps,
        "duplicate (gpu, time) rows": duplicates,
        "rows != reports x cards": rows != produced * args.cards,
        "a card with another number of rows": len(per_gpu) != args.cards or set(per_gpu.values()) != {produced},
        "spooled reports not at their collection time": len(misplaced),
        "spooled reports taken after the platform was back": len(late),
        "server last_seq != the agent's": server_seq != state["last_seq"],
        "reports left in the spool": len(left),
        "dropped by the agent's spool bound": state.get("dropped", 0),
        "refused by the platform": state.get("refused", 0) + stats.get("refused", 0),
        "lost by the agent (unspoolable)": stats.get("lost", 0),
        "the agent's exit status": agent_rc or 0,
        "the agent's count of reports collected != produced": stats.get("collected") != produced,
    }
    print()
    print(
        common.table(
            ["figure", "value"],
            [
                ["outage (s)", round(back_at - down_at, 1)],
                ["agent interval (s)", args.interval],
                ["cards", args.cards],
                ["reports produced (seqs)", produced],
                ["  spooled during the outage", len(outage)],
                ["reports delivered (collection times stored)", reports],
                ["  answered 'duplicate' (already stored)", stats.get("duplicates", "?")],
                ["sample rows", rows],
                ["duplicate rows", duplicates],
                ["gaps (reports missing)", gaps],
                ["failed send attempts", stats.get("failures", "?")],
                ["first delivery after the platform was back (s)", round(catch_up[0], 1)],
                ["catch-up: spool drained after the platform was back (s)", round(catch_up[1], 1)],
                ["  drain after the first delivery (s)", round(catch_up[1] - catch_up[0], 1)],
            ],
        )
    )
    if not args.keep_db:
        db.execute("DELETE FROM inventory_gpusample WHERE server_id = %s", [server_id])
    failed = {what: n for what, n in failures.items() if n}
    if failed:
        print("\nFAILED: " + "; ".join(f"{what}: {n}" for what, n in failed.items()))
        return 1
    print(f"\nOK: all {produced} reports x {args.cards} cards arrived exactly once, outage samples at their own time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
