"""`manage.py dev`: the whole site on one machine, with demo data, in one command.

Starts (or joins) the embedded PostgreSQL when DATABASE_URL is unset and hands its URL to the children so
that none of them starts its own; migrates; loads the demo data (`seed_demo`); then runs the web server, a
Celery worker and Celery beat side by side, their output prefixed by name, and, once the site answers (so none
finds it unreachable), a simulated agent for each demo server. Ctrl-C (SIGINT) or SIGTERM stops
the children, then the embedded PostgreSQL if this command started it. When any child dies, the others are
stopped and the command exits non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from config import embedded

STOP_TIMEOUT_S = 15.0
COLOURS = {"web": "\033[32m", "worker": "\033[36m", "beat": "\033[35m"}


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    reader: threading.Thread | None = field(default=None, repr=False)
    after_up: bool = False  # started once the site answers (the simulated agents: nothing to report to before)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None)
    except Exception:  # best effort, not on every platform
        return None


# Loaded here, before any thread: the forked child then only calls into it (no dlopen between fork and exec, where
# another thread could have held the loader's lock: the agents are started from a thread).
_LIBC = _libc()


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if this command is killed without a chance to stop it (kill -9).
    try:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: S110 - best effort, not on every platform
        pass


class Command(BaseCommand):
    help = "Run the site for development: embedded PostgreSQL, migrate, demo data, web + Celery worker + beat."
    _lock = threading.Lock()
    _spawning = threading.Lock()

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1", help="address for the web server (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port for the web server (default 8000)")
        parser.add_argument("--no-seed", action="store_true", help="skip loading the demo data")
        parser.add_argument(
            "--no-agents", action="store_true", help="do not run a simulated agent for each demo server"
        )
        parser.add_argument(
            "--pool", default="prefork", choices=["prefork", "threads", "solo"], help="Celery worker pool"
        )
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker concurrency (default 2)")

    def handle(self, *args, **opts):
        self._colour = sys.stdout.isatty() and not opts.get("no_color")
        own_db = not os.environ.get("DATABASE_URL")
        started_db = own_db and embedded.started_here
        if own_db:
            state = "started" if started_db else "joined the running"
            self._say(f"{state} embedded PostgreSQL 18 at {settings.DATABASE_URL}")
        try:
            self._prepare(opts)
            failed = self._run(opts)
        finally:
            self._close_db()
            if started_db:
                self._say("stopping the embedded PostgreSQL")
                embedded.stop(settings.BASE_DIR)
            elif own_db:
                self._say("the embedded PostgreSQL was running before; left running (manage.py embedded_db stop)")
        if failed:
            raise CommandError(failed)

    # --- before the children --------------------------------------------------------------------------------
    def _prepare(self, opts) -> None:
        call_command("migrate", interactive=False, verbosity=1)
        if opts["no_seed"]:
            return
        if "seed_demo" in get_commands():
            # A wildcard address is reached on the loopback one; the example printed names the real port.
            host = "127.0.0.1" if opts["addr"] in ("0.0.0.0", "::") else opts["addr"]  # noqa: S104
            host = f"[{host}]" if ":" in host else host
            call_command("seed_demo", site_url=f"http://{host}:{opts['port']}")
        else:
            self._say("no seed_demo command yet: starting without demo data", err=True)

    def _close_db(self) -> None:
        for conn in connections.all(initialized_only=True):
            conn.close()
            close_pool = getattr(conn, "close_pool", None)
            if close_pool is not None:
                close_pool()

    # --- the children -----------------------------------------------------------------------------------------
    def _children(self, opts) -> list[Child]:
        python = sys.executable
        manage = str(settings.BASE_DIR / "manage.py")
        addr = f"[{opts['addr']}]" if ":" in opts["addr"] else opts["addr"]
        worker = [python, "-m", "celery", "-A", "config", "worker", "-l", "info", "-P", opts["pool"]]
        worker += ["--concurrency", str(opts["concurrency"])]
        return [
            Child("web", [python, manage, "runserver", f"{addr}:{opts['port']}", "--noreload"]),
            Child("worker", worker),
            Child("beat", [python, "-m", "celery", "-A", "config", "beat", "-l", "info"]),
            *self._demo_agents(opts),
        ]

    def _demo_agents(self, opts) -> list[Child]:
        """A simulated agent (agents/, `--simulate 8`) for each demo server, with fresh credentials, so the demo
        servers stay online and their charts fill as on a real fleet."""
        if opts["no_seed"] or opts["no_agents"]:
            return []
        from agents.config import Credentials, write_credentials
        from inventory.ingest import agent_credentials_issue
        from inventory.models import Server
        from marketplace.management.commands.seed_demo import PROVIDERS, SIMULATED_MODEL

        host = opts["addr"] if opts["addr"] not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        url = f"http://{f'[{host}]' if ':' in host else host}:{opts['port']}"
        folder = settings.VAR_DIR / "demo-agents"
        children = []
        for provider in PROVIDERS:
            for spec in provider.servers:
                server = Server.objects.filter(organization__name=provider.name, name=spec.name).first()
                if server is None or server.enrolled_at is None:
                    continue
                secret = agent_credentials_issue(server=server)
                config = folder / f"{spec.name}.json"
                write_credentials(
                    str(config), Credentials(url, str(server.pk), str(server.agent_id), secret, server.hostname)
                )
                argv = [sys.executable, "-m", "agents", "--config", str(config)]
                argv += ["--spool-dir", str(folder / f"{spec.name}.spool"), "--simulate", str(server.gpu_count)]
                argv += ["--model", SIMULATED_MODEL[spec.gpu_model], "--seed", spec.name, "--log-level", "WARNING"]
                if spec.load_curve:  # the elastic lease's server: its busy cards follow the curve (the beat scales it)
                    argv += ["--load-curve", spec.load_curve]
                children.append(Child(spec.name, [*argv, "run", "--interval", "10"], after_up=True))
        return children

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DATABASE_URL"] = settings.DATABASE_URL  # the children join this server; none starts its own
        env["DJANGO_DEBUG"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        return env

    def _run(self, opts) -> str | None:
        """Run the children until a signal or until one dies; return why it failed, or None."""
        stop = threading.Event()
        reason: list[str] = []

        def on_signal(signum, frame):
            if stop.is_set():  # a second Ctrl-C: no more waiting
                self._kill_all(children, signal.SIGKILL)
            stop.set()
            reason.append(signal.Signals(signum).name)

        children = self._children(opts)
        self._close_db()  # the children open their own connections
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        failed = None
        try:
            self._env_for_children = self._env()
            for child in children:
                if not child.after_up:
                    self._spawn(child, stop)
            later = [child for child in children if child.after_up]
            up = threading.Event()
            threading.Thread(target=self._announce, args=(opts, stop, up, len(later)), daemon=True).start()
            while not stop.is_set():
                if later and up.is_set():
                    # From this thread: a child's death signal (PR_SET_PDEATHSIG) follows the thread that made it.
                    for child in later:
                        self._spawn(child, stop)
                    later = []
                for child in children:
                    code = child.proc.poll() if child.proc is not None else None
                    if code is not None:
                        failed = f"{child.name} exited with status {code}; stopped the others"
                        stop.set()
                        break
                stop.wait(0.2)
            if reason:
                self._say(f"{reason[0]}: stopping web, worker and beat")
        finally:
            with self._spawning:  # no agent starts while the others stop
                stop.set()
            self._stop_children(children)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return failed

    def _spawn(self, child: Child, stop: threading.Event) -> None:
        """Start one child (unless everything is stopping) with its output pumped to ours."""
        with self._spawning:
            if stop.is_set():
                return
            child.proc = subprocess.Popen(  # noqa: S603 - our own argv
                child.argv,
                cwd=settings.BASE_DIR,
                env=self._env_for_children,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,  # signals reach them from us only, in order
                preexec_fn=_die_with_parent,  # async-signal-safe enough: a call into the libc loaded at import
            )
            child.reader = threading.Thread(target=self._pump, args=(child,), daemon=True)
            child.reader.start()

    def _pump(self, child: Child) -> None:
        prefix = f"{child.name:<6}| "
        if self._colour:
            prefix = f"{COLOURS.get(child.name, '')}{prefix}\033[0m"
        for line in child.proc.stdout:
            with self._lock:
                sys.stdout.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
                sys.stdout.flush()

    def _announce(self, opts, stop: threading.Event, up: threading.Event, agents: int) -> None:
        """Say where the site is once it answers, and set `up` (the agents wait for it)."""
        host = opts["addr"] if opts["addr"] not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        base = f"http://{host}:{opts['port']}"
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:  # noqa: S310 - our own URL
                    if resp.status == 200:
                        self._say(
                            f"Suanli is up: site {base}/  admin {base}/admin/  API docs {base}/api/docs/"
                            "  (Ctrl-C stops everything)"
                        )
                        if agents:
                            self._say(f"starting {agents} simulated agents for the demo servers")
                        up.set()
                        return
            except OSError:
                pass
            stop.wait(0.5)

    def _stop_children(self, children: list[Child]) -> None:
        running = [c for c in children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            try:
                child.proc.send_signal(signal.SIGTERM)  # celery: warm shutdown; runserver: exits
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in running:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"{child.name} did not stop in {STOP_TIMEOUT_S:.0f} s: killing it", err=True)
        # Whatever is left of each child's process group (pool processes included) goes now.
        self._kill_all(children, signal.SIGKILL)
        for child in children:
            if child.proc is not None:
                child.proc.wait()
                if child.reader is not None:
                    child.reader.join(timeout=2)

    @staticmethod
    def _kill_all(children: list[Child], sig: int) -> None:
        for child in children:
            if child.proc is None:
                continue
            try:
                os.killpg(child.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _say(self, message: str, err: bool = False) -> None:
        with self._lock:
            stream = self.stderr if err else self.stdout
            stream.write(f"dev   | {message}")
            stream.flush()
