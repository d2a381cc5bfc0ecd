"""`suanli-agent status`: credentials, spool, NVML, the workload runtime `run` would use and the workloads, as text
or JSON; it creates nothing and exits with the code of the first problem it finds."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import Any

from agents.cli_common import EXIT_CONFIG, EXIT_OK, CliError, _start_collector, _state_dir
from agents.config import ConfigError, config_path, load_credentials, spool_path
from agents.runtime import choose_kind
from agents.spool import read_status
from agents.workloads import read_state


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
    else:
        _print_status(result)
    return code


def _print_status(result: dict[str, Any]) -> None:
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
    volumes = state.get("volumes") or []
    if volumes:
        print(f"volumes:   {len(volumes)}")
    for v in volumes:
        line = f"           {v.get('id')}: {v.get('state')}, {v.get('used_gb')} GB used  {v.get('message') or ''}"
        print(line.rstrip())
