"""`suanli-agent`: enrol a GPU host with Suanli and report every card's health and utilisation.

    suanli-agent enroll --url https://suanli.example.com --token TOKEN [--hostname NAME] [--owner USER] [--force]
    suanli-agent run [--interval 10] [--once-per SECONDS] [--duration SECONDS] [--spool-max-mb 64]
                     [--publish-address 0.0.0.0] [--workloads-poll 3] [--stop-grace 10] [--ssh-port 22]
    suanli-agent once                      print one report as JSON on stdout (no network, no spool)
    suanli-agent status [--json]           credentials, spool, NVML, the workload runtime and the workloads

Global options (before or after the subcommand):
    --config PATH        credentials file (default $SUANLI_AGENT_CONFIG or /etc/suanli/agent.json)
    --spool-dir PATH     report spool (default $SUANLI_AGENT_SPOOL or /var/lib/suanli-agent/spool)
    --state-dir PATH     workload state: desired workloads, SSH key files (default $SUANLI_AGENT_STATE or the spool)
    --runtime KIND       docker, host, simulated or none (default: simulated under --simulate, docker when the
                         docker package imports and the daemon answers, else none: telemetry only)
    --docker-url URL     the Docker daemon (default $DOCKER_HOST or unix:///var/run/docker.sock)
    --simulate N         N simulated cards instead of NVML (same code path; see agents/simulate.py)
    --model NAME         the simulated model: h100, h200, a100, a800, h20, l40s, rtx4090 (default h100)
    --seed SEED          the simulated host's seed (default: the host name; UUIDs derive from it)
    --fault SPEC         inject a simulated fault, repeatable: xid:79@3, dbe@1, hot@2, silent:120, ...
    --fault-file PATH    JSON lines of fault specs, re-read every interval (inject into a running agent)
    --log-level LEVEL    DEBUG, INFO (default), WARNING, ERROR; logs go to stderr

`run --once-per SECONDS` sends the spool at most once per SECONDS (reports are still collected every interval);
by default each report is sent as soon as it is collected. `--duration` ends the loop after that many seconds.
SIGTERM or SIGINT lets the send in flight finish, then `run` exits 0; customers' workloads keep running.

With a workload runtime, `run` also reconciles the workloads the platform wants on this host (agents/workloads.py)
every `--workloads-poll` seconds: containers publish their ports on `--publish-address`, a stop waits
`--stop-grace` seconds between SIGTERM and SIGKILL, and host access reports `--ssh-port` as the SSH port.

Exit codes:
    0  success
    1  an unexpected error (a bug: please report it with the log)
    2  usage or configuration error (bad option, missing or unreadable credentials, spool not writable)
    3  NVML unavailable: no NVIDIA driver or library, or no GPU
    4  enrolment refused by the platform (bad or used token, GPU names that do not match the server's model)
    5  the platform could not be reached to enrol (network, TLS, 5xx)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

from agents import __version__
from agents.client import Backoff, Client, TransportError
from agents.config import (
    ConfigError,
    Credentials,
    config_path,
    load_credentials,
    spool_path,
    state_path,
    write_credentials,
)
from agents.nvml import Collector, NvmlUnavailable
from agents.runner import Agent, build_report
from agents.runtime import KINDS, Runtime, RuntimeUnavailable, choose_kind, make_runtime
from agents.spool import DEFAULT_MAX_BYTES, Spool, read_status
from agents.workloads import Reconciler, read_state

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_NO_NVML = 3
EXIT_REFUSED = 4
EXIT_UNREACHABLE = 5

SERVICE_USER = "suanli-agent"
ENROLL_ATTEMPTS = 4

log = logging.getLogger("suanli.agent")


class CliError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def _not_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return number


def _address(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value} is not an IP address") from None


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _add_globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("--config", default=default(None), help="credentials file")
    group.add_argument("--spool-dir", default=default(None), help="report spool directory")
    group.add_argument("--state-dir", default=default(None), help="workload state directory (default: the spool)")
    group.add_argument("--runtime", choices=KINDS, default=default(None), help="workload runtime (default: detect)")
    group.add_argument("--docker-url", default=default(None), metavar="URL", help="the Docker daemon's URL")
    group.add_argument("--simulate", type=_count, metavar="N", default=default(None), help="simulate N cards")
    group.add_argument("--model", default=default("h100"), help="simulated GPU model")
    group.add_argument("--seed", default=default(None), help="simulated host seed (default: host name)")
    group.add_argument("--fault", action="append", metavar="SPEC", default=default([]), help="inject a fault")
    group.add_argument("--fault-file", metavar="PATH", default=default(None), help="JSON lines of faults")
    group.add_argument(
        "--log-level",
        default=default("INFO"),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (stderr)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suanli-agent",
        description="Report this host's GPUs to the Suanli marketplace.",
        epilog="Exit codes: 0 ok, 1 bug, 2 usage/config, 3 no NVML/GPU, 4 enrolment refused, 5 platform unreachable.",
    )
    parser.add_argument("--version", action="version", version=f"suanli-agent {__version__}")
    _add_globals(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enroll = sub.add_parser("enroll", help="enrol this host with an enrolment token")
    enroll.add_argument("--url", required=True, help="the platform's base URL, e.g. https://suanli.example.com")
    enroll.add_argument("--token", required=True, help="the one-time enrolment token from the provider dashboard")
    enroll.add_argument("--hostname", default=None, help="the name to register (default: this host's name)")
    enroll.add_argument(
        "--owner",
        default=None,
        help=f"chown the credentials file to USER (default as root: {SERVICE_USER} if it exists)",
    )
    enroll.add_argument("--force", action="store_true", help="replace an existing credentials file")

    run = sub.add_parser("run", help="report every interval until stopped")
    run.add_argument("--interval", type=_positive, default=10.0, help="seconds between reports (default 10)")
    run.add_argument(
        "--once-per", type=_positive, default=None, metavar="SECONDS", help="send at most once per SECONDS"
    )
    run.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after SECONDS")
    run.add_argument(
        "--spool-max-mb", type=_positive, default=DEFAULT_MAX_BYTES / 2**20, help="spool bound in MiB (default 64)"
    )
    run.add_argument(
        "--publish-address",
        type=_address,
        default="0.0.0.0",  # noqa: S104 - customers connect to their containers from anywhere
        help="the host address containers' ports are published on (default 0.0.0.0)",
    )
    run.add_argument(
        "--workloads-poll", type=_positive, default=3.0, metavar="SECONDS", help="desired-state poll (default 3)"
    )
    run.add_argument(
        "--stop-grace",
        type=_not_negative,
        default=10.0,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL when a workload stops (default 10)",
    )
    run.add_argument("--ssh-port", type=_port, default=22, help="the host's SSH port, for host access (default 22)")

    sub.add_parser("once", help="print one report as JSON (no network)")
    status = sub.add_parser("status", help="show configuration, spool and NVML state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    for child in (enroll, run, sub.choices["once"], status):
        _add_globals(child, suppress=True)
    return parser


# -- helpers ----------------------------------------------------------------------------------------------------


def _nvml_module(args: argparse.Namespace) -> Any:
    """The NVML module object: the simulator for --simulate N, else None (the collector imports pynvml)."""
    if args.simulate is None:
        if args.fault or args.fault_file:
            raise CliError(EXIT_CONFIG, "--fault and --fault-file need --simulate N")
        return None
    from agents.simulate import SimulatedNVML

    try:
        return SimulatedNVML(args.simulate, args.model, args.seed, faults=args.fault, fault_file=args.fault_file)
    except ValueError as exc:
        raise CliError(EXIT_CONFIG, str(exc)) from None


def _start_collector(args: argparse.Namespace) -> Collector:
    try:
        collector = Collector(_nvml_module(args))
        collector.start()
    except NvmlUnavailable as exc:
        raise CliError(EXIT_NO_NVML, str(exc)) from None
    return collector


def _credentials(args: argparse.Namespace) -> Credentials:
    try:
        return load_credentials(config_path(args.config))
    except ConfigError as exc:
        raise CliError(EXIT_CONFIG, str(exc)) from None


def _open_spool(args: argparse.Namespace, max_bytes: int = DEFAULT_MAX_BYTES) -> Spool:
    directory = spool_path(args.spool_dir)
    try:
        return Spool(directory, max_bytes=max_bytes)
    except OSError as exc:
        raise CliError(EXIT_CONFIG, f"cannot use the spool directory {directory}: {exc.strerror or exc}") from None


def _default_owner() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return SERVICE_USER


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)
        return json.dumps(body)[:300]
    return str(body)[:300]


# -- commands -------------------------------------------------------------------------------------------------


def cmd_enroll(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    if os.path.exists(path) and not args.force:
        raise CliError(EXIT_CONFIG, f"{path} exists: this host is enrolled already (use --force to enrol again)")
    collector = _start_collector(args)
    try:
        gpus = collector.inventory()
    finally:
        collector.close()
    hostname = args.hostname or socket.gethostname()
    client = Client(args.url)
    backoff = Backoff()
    response = None
    for attempt in range(ENROLL_ATTEMPTS):
        try:
            response = client.enroll(args.token, hostname, gpus)
        except TransportError as exc:
            log.warning("cannot reach %s: %s", args.url, exc)
            response = None
        else:
            if response.status < 500 and response.status != 429:
                break
            log.warning("the platform answered HTTP %s", response.status)
        if attempt + 1 < ENROLL_ATTEMPTS:
            time.sleep(backoff.delay(attempt))
    if response is None or response.status >= 500 or response.status == 429:
        raise CliError(EXIT_UNREACHABLE, f"could not enrol: {args.url} is unreachable or failing; try again later")
    body = response.json()
    if response.status not in (200, 201):
        raise CliError(EXIT_REFUSED, f"enrolment refused (HTTP {response.status}): {_error_message(body)}")
    if not isinstance(body, dict) or not all(
        body.get(k) not in (None, "") for k in ("server", "agent_id", "agent_secret")
    ):
        raise CliError(EXIT_REFUSED, f"enrolment answer lacks server, agent_id or agent_secret: {_error_message(body)}")
    creds = Credentials(
        url=args.url.rstrip("/"),
        server=str(body["server"]),
        agent_id=str(body["agent_id"]),
        agent_secret=str(body["agent_secret"]),
        hostname=hostname,
    )
    owner = args.owner or _default_owner()
    try:
        write_credentials(path, creds, owner=owner)
    except (ConfigError, OSError) as exc:
        raise CliError(EXIT_CONFIG, f"enrolled, but cannot write {path}: {exc}") from None
    print(
        f"enrolled {hostname} as server {creds.server} with {len(gpus)} GPU(s); credentials in {path} (mode 0600"
        + (f", owner {owner})" if owner else ")")
    )
    return EXIT_OK


def _runtime(args: argparse.Namespace) -> Runtime | None:
    """The workload runtime for `run`: an explicit --runtime that cannot work is a configuration error; a detected
    one that cannot is logged, and the agent reports telemetry only."""
    kind = choose_kind(args.runtime, simulate=args.simulate is not None, docker_url=args.docker_url)
    options = {
        "docker_url": args.docker_url,
        "publish_address": getattr(args, "publish_address", None),
        "simulate": args.simulate is not None,
        "ssh_port": getattr(args, "ssh_port", 22),
    }
    try:
        runtime = make_runtime(kind, _state_dir(args), **options)
    except (RuntimeUnavailable, OSError) as exc:
        if args.runtime:
            raise CliError(EXIT_CONFIG, f"the {kind} runtime cannot run here: {exc}") from None
        log.warning("no workload runtime (%s): reporting telemetry only", exc)
        return None
    if runtime is None:
        log.info("no workload runtime (--runtime none, or no Docker daemon answers): reporting telemetry only")
    else:
        log.info("workload runtime: %s", ", ".join(f"{k} {v}" for k, v in runtime.describe().items()))
    return runtime


def _state_dir(args: argparse.Namespace) -> str:
    return state_path(args.state_dir, args.spool_dir)


def cmd_run(args: argparse.Namespace) -> int:
    creds = _credentials(args)
    spool = _open_spool(args, int(args.spool_max_mb * 2**20))
    collector = _start_collector(args)
    runtime = _runtime(args)
    reconciler = None
    if runtime is not None:
        reconciler = Reconciler(
            Client(creds.url, creds.agent_id, creds.agent_secret),
            runtime,
            _state_dir(args),
            poll=args.workloads_poll,
            grace=args.stop_grace,
        )
    agent = Agent(
        collector,
        spool,
        Client(creds.url, creds.agent_id, creds.agent_secret),
        interval=args.interval,
        send_every=args.once_per,
        hostname=creds.hostname or None,
        reconciler=reconciler,
    )

    def stop(*_: Any) -> None:
        agent.stop()
        if reconciler is not None:
            reconciler.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "suanli-agent %s reporting %s GPU(s) to %s every %s s (spool %s: %s report(s) waiting)",
        __version__,
        collector.count,
        creds.url,
        args.interval,
        spool.directory,
        len(spool),
    )
    if reconciler is not None:
        reconciler.start()
    try:
        agent.run(duration=args.duration)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if reconciler is not None:
            reconciler.stop()
            reconciler.join(timeout=15)
        if runtime is not None:
            runtime.close()
        collector.close()
    log.info("stopped: %s", agent.stats)
    return EXIT_OK


def cmd_once(args: argparse.Namespace) -> int:
    collector = _start_collector(args)
    try:
        collector.tick()
        samples = collector.collect()
    finally:
        collector.close()
    spool = read_status(spool_path(args.spool_dir)) if os.access(spool_path(args.spool_dir), os.R_OK) else None
    seq = (spool or {}).get("last_seq")
    report = build_report(
        (seq + 1) if isinstance(seq, int) else 0,
        samples,
        interval=10.0,
        hostname=socket.gethostname(),
        wall=time.time(),
    )
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "never"
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def cmd_status(args: argparse.Namespace) -> int:
    code = EXIT_OK
    path = config_path(args.config)
    result: dict[str, Any] = {"config": {"path": path}}
    try:
        creds = load_credentials(path)
        result["config"].update(ok=True, url=creds.url, server=creds.server, agent_id=creds.agent_id)
    except ConfigError as exc:
        result["config"].update(ok=False, error=str(exc))
        code = EXIT_CONFIG
    directory = spool_path(args.spool_dir)
    try:
        result["spool"] = {"path": directory, **(read_status(directory) or {"missing": True})}
    except OSError as exc:
        result["spool"] = {"path": directory, "error": str(exc)}
    try:
        collector = _start_collector(args)
    except CliError as exc:
        result["nvml"] = {"ok": False, "error": str(exc)}
        code = code or exc.code
    else:
        try:
            names = sorted({g.get("name", "?") for g in collector.inventory()})
            result["nvml"] = {"ok": True, "gpus": collector.count, "names": names, "driver": collector.driver_version()}
        finally:
            collector.close()
    result["runtime"] = _runtime_status(args)
    if args.runtime and not result["runtime"]["ok"]:
        code = code or EXIT_CONFIG
    result["workloads"] = read_state(_state_dir(args)) or {}
    if args.json:
        print(json.dumps(result, indent=2))
        return code
    cfg, spool, nvml = result["config"], result["spool"], result["nvml"]
    if cfg["ok"]:
        print(f"config:    {cfg['path']}: server {cfg['server']}, agent {cfg['agent_id']}, platform {cfg['url']}")
    else:
        print(f"config:    {cfg['error']}")
    if spool.get("missing"):
        print(f"spool:     {spool['path']}: not created yet")
    elif "error" in spool:
        print(f"spool:     {spool['path']}: {spool['error']}")
    else:
        print(
            f"spool:     {spool['path']}: {spool['depth']} report(s) waiting, {spool['bytes']} bytes; "
            f"last seq {spool['last_seq']}; dropped {spool['dropped']}, refused {spool['refused']}"
        )
        print(
            f"last send: {_when(spool['last_sent_at'])}"
            + (f" (seq {spool['last_sent_seq']})" if spool["last_sent_seq"] else "")
        )
    if nvml["ok"]:
        print(f"nvml:      ok: {nvml['gpus']} GPU(s) ({', '.join(nvml['names'])}), driver {nvml['driver']}")
    else:
        print(f"nvml:      {nvml['error']}")
    _print_workloads(result["runtime"], result["workloads"])
    return code


def _runtime_status(args: argparse.Namespace) -> dict[str, Any]:
    """Which runtime `run` would use and whether it can work here; creates nothing."""
    kind = choose_kind(args.runtime, simulate=args.simulate is not None, docker_url=args.docker_url)
    if kind == "docker":
        from agents.runtime.docker_runtime import probe

        return {"kind": kind, **probe(args.docker_url)}
    if kind == "host" and os.geteuid() != 0:
        return {"kind": kind, "ok": False, "error": "the host runtime creates users: run the agent as root"}
    return {"kind": kind, "ok": True}


def _print_workloads(runtime: dict[str, Any], state: dict[str, Any]) -> None:
    kind = runtime["kind"]
    if not runtime["ok"]:
        print(f"runtime:   {kind}: {runtime['error']}")
    elif kind == "docker":
        print(
            f"runtime:   docker at {runtime['url']}: Docker {runtime['server_version']}, storage "
            f"{runtime['storage_driver']}, NVIDIA container runtime {'yes' if runtime['nvidia'] else 'NO'}"
        )
    elif kind == "none":
        print("runtime:   none: no customer workloads on this host (telemetry only)")
    else:
        print(f"runtime:   {kind}")
    desired = state.get("desired") or {}
    if not desired:
        print("workloads: no desired state received yet")
        return
    print(
        f"workloads: desired version {desired.get('version')} (fetched {_when(state.get('fetched_at'))}), "
        f"removals done up to version {state.get('done_version')}"
        + (f"; last error: {state['error']}" if state.get("error") else "")
    )
    for w in state.get("workloads") or []:
        ports = ", ".join(f"{c}->{h}" for c, h in (w.get("ports") or {}).items())
        detail = "  ".join(x for x in (f"ports {ports}" if ports else "", w.get("message") or "") if x)
        print(f"           {w.get('id')}: {w.get('state')} (generation {w.get('generation')})  {detail}".rstrip())


COMMANDS = {"enroll": cmd_enroll, "run": cmd_run, "once": cmd_once, "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"suanli-agent: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `suanli-agent once | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
