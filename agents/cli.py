"""`suanli-agent`: enrol a GPU host with Suanli and report every card's health and utilisation.

    suanli-agent enroll --url https://suanli.example.com --token TOKEN [--hostname NAME] [--owner USER] [--force]
    suanli-agent run [--interval 10] [--once-per SECONDS] [--duration SECONDS] [--spool-max-mb 64]
                     [--publish-address 0.0.0.0] [--workloads-poll 3] [--stop-grace 10] [--ssh-port 22]
                     [--logs-every 30]
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
    --load-curve SPEC    simulated utilisation over time, SECONDS:PERCENT,... (linear between points) or a file
                         re-read when it changes (agents/sim_load.py); busy cards read it
    --log-level LEVEL    DEBUG, INFO (default), WARNING, ERROR; logs go to stderr

`run --once-per SECONDS` sends the spool at most once per SECONDS (reports are still collected every interval);
by default each report is sent as soon as it is collected. `--duration` ends the loop after that many seconds.
SIGTERM or SIGINT lets the send in flight finish, then `run` exits 0; customers' workloads keep running.

With a workload runtime, `run` also reconciles the workloads the platform wants on this host (agents/workloads.py)
every `--workloads-poll` seconds: containers publish their ports on `--publish-address`, a stop waits
`--stop-grace` seconds between SIGTERM and SIGKILL, and host access reports `--ssh-port` as the SSH port. Every
`--logs-every` seconds the tails of the workloads' output that changed go to the platform, for their customers
(agents/workload_logs.py).

Exit codes:
    0  success
    1  an unexpected error (a bug: please report it with the log)
    2  usage or configuration error (bad option, missing or unreadable credentials, spool not writable)
    3  NVML unavailable: no NVIDIA driver or library, or no GPU
    4  enrolment refused by the platform (bad or used token, GPU names that do not match the server's model)
    5  the platform could not be reached to enrol (network, TLS, 5xx)

This module is the entry point (`main`) and re-exports the rest: the grammar in `agents/cli_parser.py`, the exit codes
and what the sub-commands share in `agents/cli_common.py`, `enroll`, `run` and `once` in `agents/cli_commands.py`,
`status` in `agents/cli_status.py`.
"""

from __future__ import annotations

import logging
import os
import sys

from agents.cli_commands import ENROLL_ATTEMPTS, cmd_enroll, cmd_once, cmd_run
from agents.cli_common import (
    EXIT_BUG,
    EXIT_CONFIG,
    EXIT_NO_NVML,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    CliError,
)
from agents.cli_parser import SERVICE_USER, build_parser
from agents.cli_status import cmd_status

__all__ = [
    "COMMANDS",
    "ENROLL_ATTEMPTS",
    "EXIT_BUG",
    "EXIT_CONFIG",
    "EXIT_NO_NVML",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "SERVICE_USER",
    "CliError",
    "build_parser",
    "cmd_enroll",
    "cmd_once",
    "cmd_run",
    "cmd_status",
    "main",
]


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
