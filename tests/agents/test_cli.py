import json
import os
import signal
import stat
import subprocess
import time

import pytest

from agents import cli, cli_commands
from agents.config import Credentials, load_credentials, write_credentials
from tests.agents.conftest import REPO, agent_cmd
from tests.agents.fakes import FakePlatform


def run_cli(env, *args, timeout=60):
    return subprocess.run(agent_cmd(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def enroll(platform, tmp_path, *extra):
    return cli.main(
        [
            "--config",
            str(tmp_path / "agent.json"),
            "--simulate",
            "8",
            "--seed",
            "cli-host",
            "enroll",
            "--url",
            platform.url,
            "--token",
            "tok-1",
            "--hostname",
            "gpu-7",
            *extra,
        ]
    )


def test_once_prints_one_report_as_valid_json(agent_env):
    result = run_cli(agent_env, "--simulate", "8", "--model", "h200", "--seed", "s", "once")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"seq", "sent_at", "interval_s", "agent_version", "hostname", "gpus"}
    assert len(report["gpus"]) == 8 and {g["name"] for g in report["gpus"]} == {"NVIDIA H200"}
    assert [g["index"] for g in report["gpus"]] == list(range(8))


def test_no_driver_exits_3_with_one_clear_line_and_no_traceback(agent_env):
    result = run_cli(agent_env, "--simulate", "8", "--fault", "nodriver", "once")
    assert result.returncode == 3
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "suanli-agent: NVML is not available: NVML Shared Library Not Found"
        " (is the NVIDIA driver installed and loaded?)"
    )


def test_no_gpu_exits_3(agent_env):
    result = run_cli(agent_env, "--simulate", "0", "once")
    assert result.returncode == 3 and "no GPU" in result.stderr and "Traceback" not in result.stderr


def test_the_real_nvml_without_a_driver_exits_3_without_traceback(agent_env):
    result = run_cli(agent_env, "once")
    if result.returncode == 0:
        pytest.skip("this machine has an NVIDIA driver: the real path works")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("suanli-agent: NVML is not available")


@pytest.mark.parametrize(
    "args",
    [
        ["--fault", "xid:79@3", "once"],  # a fault needs --simulate
        ["--simulate", "8", "--fault", "xid:79@9", "once"],  # no card 9
        ["--simulate", "8", "--fault", "melt@1", "once"],
        ["--simulate", "8", "--model", "V100", "once"],
        ["run"],  # no credentials
        ["frobnicate"],
    ],
)
def test_usage_and_configuration_errors_exit_2(agent_env, args):
    result = run_cli(agent_env, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_enroll_posts_the_gpus_and_writes_credentials_with_mode_0600(platform, tmp_path, capsys):
    old = os.umask(0)  # even with a permissive umask
    try:
        assert enroll(platform, tmp_path) == 0
    finally:
        os.umask(old)
    (payload,) = platform.enrolments
    assert payload["enrollment_token"] == "tok-1" and payload["hostname"] == "gpu-7"
    assert payload["agent_version"] == "0.1.0"
    assert [g["index"] for g in payload["gpus"]] == list(range(8))
    assert all({"index", "uuid", "name", "memory_total_mb"} <= set(g) for g in payload["gpus"])
    assert {g["name"] for g in payload["gpus"]} == {"NVIDIA H100 80GB HBM3"}
    path = tmp_path / "agent.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = load_credentials(str(path))
    assert (creds.server, creds.agent_id, creds.agent_secret, creds.url) == (
        "42",
        platform.AGENT_ID,
        platform.SECRET,
        platform.url,
    )
    assert "enrolled gpu-7 as server 42 with 8 GPU(s)" in capsys.readouterr().out
    assert platform.SECRET not in repr(creds)


def test_enrolling_twice_needs_force(platform, tmp_path):
    assert enroll(platform, tmp_path) == 0
    assert enroll(platform, tmp_path) == 2
    assert enroll(platform, tmp_path, "--force") == 0


def test_a_refused_enrolment_exits_4_and_writes_nothing(platform, tmp_path, capsys):
    platform.enroll_status = 400
    assert enroll(platform, tmp_path) == 4
    assert "enrolment token already used" in capsys.readouterr().err
    assert not (tmp_path / "agent.json").exists()


def test_an_unreachable_platform_at_enrolment_exits_5(platform, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_commands.time, "sleep", lambda s: None)
    platform.down()
    assert enroll(platform, tmp_path) == 5


def test_the_credentials_file_is_0600_and_a_readable_one_is_refused(tmp_path):
    path = str(tmp_path / "etc" / "agent.json")
    write_credentials(path, Credentials("http://x", "1", "a", "secret"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    result = cli.main(["--config", path, "--simulate", "1", "run", "--duration", "1"])
    assert result == 2


def test_an_unknown_owner_for_the_credentials_file_is_a_config_error(platform, tmp_path):
    assert enroll(platform, tmp_path, "--owner", "no-such-user-here") == 2


def test_status_reports_config_spool_and_nvml(platform, tmp_path, capsys):
    assert enroll(platform, tmp_path) == 0
    capsys.readouterr()
    spool = str(tmp_path / "spool")
    common = ["--config", str(tmp_path / "agent.json"), "--spool-dir", spool, "--simulate", "8"]
    assert cli.main([*common, "run", "--interval", "0.05", "--duration", "0.12"]) == 0
    assert cli.main([*common, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["config"]["ok"] and status["config"]["server"] == "42"
    assert status["nvml"] == {"ok": True, "gpus": 8, "names": ["NVIDIA H100 80GB HBM3"], "driver": "550.127.08"}
    assert status["spool"]["depth"] == 0 and status["spool"]["last_sent_seq"] == status["spool"]["last_seq"]
    assert cli.main([*common, "status"]) == 0
    text = capsys.readouterr().out
    assert "config:" in text and "spool:" in text and "last send: 20" in text and "nvml:      ok: 8 GPU(s)" in text
    assert cli.main(["--config", str(tmp_path / "none.json"), "--spool-dir", spool, "status"]) in (2, 3)


def test_a_running_agent_reports_takes_a_fault_from_the_fault_file_and_stops_cleanly_on_sigterm(
    platform, tmp_path, agent_env
):
    assert enroll(platform, tmp_path) == 0
    faults = tmp_path / "faults.jsonl"
    proc = subprocess.Popen(
        agent_cmd("--simulate", "8", "--seed", "cli-host", "--fault-file", str(faults), "run", "--interval", "0.2"),
        env=agent_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(platform.received) >= 2, proc)
        faults.write_text(json.dumps({"fault": "xid:79@3"}) + "\n")
        wait_for(lambda: any(r["gpus"][3].get("xid_errors") == [79] for r in platform.received), proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    seqs = [r["seq"] for r in platform.received]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert [g["index"] for g in platform.received[0]["gpus"]] == list(range(8))


def wait_for(condition, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the agent exited {proc.returncode}: {proc.communicate()[1]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_fake_platform_port_is_reused_after_down_and_up():
    p = FakePlatform()
    try:
        port = p.port
        p.down()
        p.up()
        assert p.port == port and p.is_up
    finally:
        p.close()


# -- workloads: options, the runtime's choice, a run end to end ----------------------------------------------------


def test_the_workload_options_of_run_and_their_defaults():
    args = cli.build_parser().parse_args(["run"])
    assert (args.runtime, args.docker_url, args.state_dir) == (None, None, None)
    assert (args.publish_address, args.workloads_poll, args.stop_grace, args.ssh_port) == ("0.0.0.0", 3.0, 10.0, 22)  # noqa: S104
    args = cli.build_parser().parse_args(
        [
            "--runtime",
            "docker",
            "run",
            "--docker-url",
            "tcp://10.0.0.5:2375",
            "--state-dir",
            "/srv/suanli",
            "--publish-address",
            "203.0.113.7",
            "--workloads-poll",
            "1.5",
            "--stop-grace",
            "30",
            "--ssh-port",
            "2222",
        ]
    )
    assert (args.runtime, args.docker_url, args.state_dir) == ("docker", "tcp://10.0.0.5:2375", "/srv/suanli")
    assert (args.publish_address, args.workloads_poll, args.stop_grace, args.ssh_port) == ("203.0.113.7", 1.5, 30, 2222)


@pytest.mark.parametrize(
    "args",
    [
        ["--runtime", "kubernetes", "run"],
        ["run", "--publish-address", "everywhere"],
        ["run", "--ssh-port", "70000"],
        ["run", "--stop-grace", "-1"],
        ["run", "--workloads-poll", "0"],
    ],
)
def test_bad_workload_options_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 2


def test_the_runtime_is_the_one_asked_for_else_simulated_else_docker_when_it_answers_else_none(monkeypatch):
    from agents.runtime import choose_kind, docker_runtime

    monkeypatch.setattr(docker_runtime, "docker_answers", lambda url=None: True)
    assert choose_kind("host", simulate=True) == "host"
    assert choose_kind(None, simulate=True) == "simulated"
    assert choose_kind(None, simulate=False) == "docker"
    monkeypatch.setattr(docker_runtime, "docker_answers", lambda url=None: False)
    assert choose_kind(None, simulate=False) == "none"


def test_docker_answers_is_false_without_a_daemon(tmp_path):
    from agents.runtime.docker_runtime import docker_answers

    assert docker_answers(f"unix://{tmp_path}/no-docker.sock", timeout=1) is False


def test_an_explicit_runtime_that_cannot_work_here_exits_2(platform, tmp_path, capsys):
    assert enroll(platform, tmp_path) == 0
    common = ["--config", str(tmp_path / "agent.json"), "--spool-dir", str(tmp_path / "spool"), "--simulate", "1"]
    code = cli.main([*common, "--runtime", "docker", "--docker-url", f"unix://{tmp_path}/none.sock", "run"])
    assert code == 2
    assert "the docker runtime cannot run here: the Docker daemon at unix://" in capsys.readouterr().err


def test_a_simulated_agent_runs_the_desired_workloads_and_reports_them_and_status_shows_them(
    platform, tmp_path, capsys
):
    assert enroll(platform, tmp_path) == 0
    platform.desired = {
        "version": 3,
        "server": 42,
        "public_host": "gpu-7.example.com",
        "port_range": [40000, 40999],
        "workloads": [
            {
                "id": 31,
                "lease": 55,
                "access": "container",
                "gpus": ["GPU-aaaa"],
                "image": "suanli/pytorch:2.4-cuda12.4",
                "command": [],
                "env": {},
                "ports": [22, 8888],
                "ssh_keys": ["ssh-ed25519 AAAA alice"],
                "limits": {"cpus": 4, "memory_mb": 8192, "disk_gb": 50},
                "user": "root",
                "desired": "running",
                "generation": 0,
                "stop_by": None,
            }
        ],
    }
    common = ["--config", str(tmp_path / "agent.json"), "--spool-dir", str(tmp_path / "spool"), "--simulate", "2"]
    assert cli.main([*common, "run", "--interval", "0.2", "--workloads-poll", "0.05", "--duration", "3.2"]) == 0
    last = platform.received[-1]
    assert last["workloads_version"] == 3
    (entry,) = last["workloads"]
    assert entry["id"] == 31 and entry["state"] == "running" and entry["ports"] == {"22": 40000, "8888": 40001}
    states = [r["workloads"][0]["state"] for r in platform.received if r.get("workloads")]
    assert states[0] in ("pending", "pulling") and "pulling" in states
    capsys.readouterr()

    assert cli.main([*common, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["runtime"] == {"kind": "simulated", "ok": True}
    assert status["workloads"]["desired"]["version"] == 3 and status["workloads"]["done_version"] == 3
    assert status["workloads"]["workloads"][0]["state"] == "running"
    assert cli.main([*common, "status"]) == 0
    text = capsys.readouterr().out
    assert "runtime:   simulated" in text
    assert "workloads: desired version 3" in text and "31: running (generation 0)  ports 22->40000, 8888->40001" in text


def test_with_runtime_none_the_reports_carry_no_workloads(platform, tmp_path):
    assert enroll(platform, tmp_path) == 0
    platform.desired = {"version": 1, "workloads": []}
    common = ["--config", str(tmp_path / "agent.json"), "--spool-dir", str(tmp_path / "spool"), "--simulate", "1"]
    assert cli.main([*common, "--runtime", "none", "run", "--interval", "0.05", "--duration", "0.2"]) == 0
    assert platform.received and all("workloads" not in r for r in platform.received)
    assert platform.gets == 0
