"""The command line's grammar: `build_parser()` and the option value checks (`suanli-agent --help` prints it;
`agents/cli.py` describes every option and exit code)."""

from __future__ import annotations

import argparse
from typing import Any

from agents import __version__
from agents.runtime import KINDS
from agents.spool import DEFAULT_MAX_BYTES

SERVICE_USER = "suanli-agent"


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
        "--load-curve",
        metavar="SPEC",
        default=default(None),
        help="simulated utilisation over time: SECONDS:PERCENT,... (e.g. 0:20,300:95,900:95,1200:10) or a file",
    )
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
        "--logs-every",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="how often the tails of the workloads' output go to the platform, when changed (default 30)",
    )
    run.add_argument(
        "--stop-grace",
        type=_not_negative,
        default=10.0,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL when a workload stops (default 10)",
    )
    run.add_argument("--ssh-port", type=_port, default=22, help="the host's SSH port, for host access (default 22)")
    run.add_argument(
        "--volumes-dir",
        default=None,
        metavar="PATH",
        help="where customers' volumes (loop-mounted images) live (default: <state dir>/volumes)",
    )

    sub.add_parser("once", help="print one report as JSON (no network)")
    status = sub.add_parser("status", help="show configuration, spool and NVML state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    for child in (enroll, run, sub.choices["once"], status):
        _add_globals(child, suppress=True)
    return parser
