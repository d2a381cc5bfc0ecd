"""The sub-commands that act: `enroll` (trade a token for credentials), `run` (report and reconcile workloads until
stopped) and `once` (print one report). `status` is in `agents/cli_status.py`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from agents import __version__
from agents.cli_common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    CliError,
    _credentials,
    _default_owner,
    _error_message,
    _open_spool,
    _runtime,
    _start_collector,
    _state_dir,
)
from agents.client import Backoff, Client, TransportError
from agents.config import ConfigError, Credentials, config_path, spool_path, write_credentials
from agents.runner import Agent, build_report
from agents.runtime.base import RUNNING, Runtime
from agents.spool import read_status
from agents.workloads import Reconciler

ENROLL_ATTEMPTS = 4

log = logging.getLogger("suanli.agent")


def running_cards(runtime: Runtime) -> set[str]:
    """The uuids of the cards a running workload holds on this host."""
    return {gpu for seen in runtime.observe().values() if seen.state == RUNNING for gpu in seen.gpus}


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


def cmd_run(args: argparse.Namespace) -> int:
    creds = _credentials(args)
    spool = _open_spool(args, int(args.spool_max_mb * 2**20))
    collector = _start_collector(args)
    runtime = _runtime(args, owner=str(creds.server))
    reconciler = None
    if runtime is not None and hasattr(collector.nvml, "follow_workloads"):
        # A simulated host: its cards are busy while a workload of the platform runs on them, idle otherwise.
        collector.nvml.follow_workloads(lambda: running_cards(runtime))
    if runtime is not None:
        reconciler = Reconciler(
            Client(creds.url, creds.agent_id, creds.agent_secret),
            runtime,
            _state_dir(args),
            poll=args.workloads_poll,
            grace=args.stop_grace,
            logs_every=args.logs_every,
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
