"""The real-container and real-sshd fixtures of tests/containers.py do what the workload tests rely on."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.containers import Dockerd, KeyPair, LocalUser, authorized_keys_dir, make_keypair, ssh_run


@pytest.fixture
def ssh_container(dockerd: Dockerd, ssh_image: str, ssh_keypair: KeyPair, tmp_path: Path):
    """A container of the ssh image with ssh_keypair's key mounted, FOO=bar in its environment, port 22 published
    on a free 127.0.0.1 port; removed afterwards. Yields (container id, host port)."""
    keys = authorized_keys_dir(tmp_path / "keys", ssh_keypair.public_text)
    container = dockerd.run(
        "run", "-d", "-e", "FOO=bar", "-p", "127.0.0.1::22", "-v", f"{keys}:/root/.ssh:ro", ssh_image
    ).stdout.strip()
    try:
        yield container, dockerd.published_port(container)
    finally:
        dockerd.run("rm", "-f", container, check=False)


def test_ssh_image_serves_ssh_with_the_mounted_key_and_the_containers_environment(dockerd, ssh_container, ssh_keypair):
    container, port = ssh_container
    assert dockerd.run("port", container).stdout.splitlines() == [f"22/tcp -> 127.0.0.1:{port}"]  # loopback only

    result = ssh_run(port, ssh_keypair.private, "env; id -u; cat /proc/1/cmdline | tr '\\0' ' '")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "FOO=bar" in lines
    assert "USER=root" in lines
    assert "0" in lines  # id -u
    assert lines[-1].strip() == "/usr/sbin/dropbear -F -E -R -e -s -p 22"


def test_ssh_image_refuses_another_key(ssh_container, tmp_path):
    _, port = ssh_container
    stranger = make_keypair(tmp_path / "stranger")
    result = ssh_run(port, stranger.private, "true", timeout=10)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_ssh_image_without_keys_lets_no_one_in(dockerd, ssh_image, ssh_keypair):
    container = dockerd.run("run", "-d", "-p", "127.0.0.1::22", ssh_image).stdout.strip()
    try:
        result = ssh_run(dockerd.published_port(container), ssh_keypair.private, "true", timeout=10)
        assert result.returncode == 255
        assert "Permission denied (publickey)" in result.stderr
    finally:
        dockerd.run("rm", "-f", container, check=False)


def test_ssh_container_stops_promptly(dockerd, ssh_container):
    """dropbear, the container's PID 1, ends on SIGTERM: `docker stop` does not sit out its 10 s timeout."""
    container, _ = ssh_container
    started = time.monotonic()
    dockerd.run("stop", container)
    assert time.monotonic() - started < 5
    assert dockerd.run("inspect", "--format", "{{.State.Running}}", container).stdout.strip() == "false"


def test_test_dockerd_is_its_own(dockerd):
    info = dockerd.run("info", "--format", "{{.DockerRootDir}} {{.Driver}}").stdout.split()
    assert info == [str(dockerd.root / "data"), "vfs"]
    assert dockerd.url == f"unix://{dockerd.root}/docker.sock"
    network = dockerd.run("network", "inspect", "bridge", "--format", "{{json .Options}}").stdout
    assert f'"com.docker.network.bridge.name":"{dockerd.bridge}"' in network


def test_a_failing_image_fails_to_pull_at_once(dockerd, failing_image):
    for reference in (failing_image, "suanli-test/no-such-image:1"):  # a loopback registry; Docker Hub
        started = time.monotonic()
        result = dockerd.run("pull", reference, check=False, timeout=30)
        assert result.returncode != 0
        assert time.monotonic() - started < 5, result.stderr
        assert "connection refused" in result.stderr, result.stderr
    assert dockerd.run("run", "--rm", failing_image, "true", check=False).returncode != 0


def test_sshd_lets_a_local_user_in_by_key_and_refuses_another_key(sshd, local_user: LocalUser, tmp_path):
    key = make_keypair(tmp_path / "user")
    local_user.authorize(key.public_text)

    result = ssh_run(sshd, key.private, "id -un; echo $HOME", user=local_user.name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [local_user.name, str(local_user.home)]

    stranger = make_keypair(tmp_path / "stranger")
    refused = ssh_run(sshd, stranger.private, "true", user=local_user.name, timeout=10)
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr


def test_sshd_runs_with_the_settings_the_host_agent_must_live_with(sshd_server, ssh_keypair):
    """What sshd itself says it enforces (`sshd -T`), and root is turned away (this machine's root is left alone:
    its authorized_keys are not touched, so the refusal here proves little on its own)."""
    effective = subprocess.run(
        [sshd_server.sshd, "-T", "-f", str(sshd_server.config)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for setting in ("permitrootlogin no", "pubkeyauthentication yes", "passwordauthentication no", "usepam no"):
        assert setting in effective
    assert "strictmodes yes" in effective
    result = ssh_run(sshd_server.port, ssh_keypair.private, "true", user="root", timeout=10)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_sshd_port_answers_with_openssh(sshd):
    with socket.create_connection(("127.0.0.1", sshd), timeout=5) as sock:
        assert sock.recv(64).startswith(b"SSH-2.0-OpenSSH")
