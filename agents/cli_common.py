"""What the sub-commands share: the exit codes, `CliError` (a message and the code to exit with), and opening what
the options name: the NVML module (real or simulated), the collector, credentials, the spool, the workload runtime."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
from typing import Any

from agents.cli_parser import SERVICE_USER
from agents.config import ConfigError, Credentials, config_path, load_credentials, spool_path, state_path
from agents.nvml import Collector, NvmlUnavailable
from agents.runtime import Runtime, RuntimeUnavailable, choose_kind, make_runtime
from agents.spool import DEFAULT_MAX_BYTES, Spool

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_NO_NVML = 3
EXIT_REFUSED = 4
EXIT_UNREACHABLE = 5

log = logging.getLogger("suanli.agent")


class CliError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _nvml_module(args: argparse.Namespace) -> Any:
    """The NVML module object: the simulator for --simulate N, else None (the collector imports pynvml)."""
    if args.simulate is None:
        if args.fault or args.fault_file or getattr(args, "load_curve", None):
            raise CliError(EXIT_CONFIG, "--fault, --fault-file and --load-curve need --simulate N")
        return None
    from agents.simulate import SimulatedNVML

    try:
        return SimulatedNVML(
            args.simulate,
            args.model,
            args.seed,
            faults=args.fault,
            fault_file=args.fault_file,
            load_curve=getattr(args, "load_curve", None),
        )
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


def _runtime(args: argparse.Namespace, owner: str | None = None) -> Runtime | None:
    """The workload runtime for `run`: an explicit --runtime that cannot work is a configuration error; a detected
    one that cannot is logged, and the agent reports telemetry only. `owner`: the server's id (its credentials)."""
    kind = choose_kind(args.runtime, simulate=args.simulate is not None, docker_url=args.docker_url)
    options = {
        "docker_url": args.docker_url,
        "publish_address": getattr(args, "publish_address", None),
        "simulate": args.simulate is not None,
        "ssh_port": getattr(args, "ssh_port", 22),
        "volumes_dir": getattr(args, "volumes_dir", None),
        "owner": owner,
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
