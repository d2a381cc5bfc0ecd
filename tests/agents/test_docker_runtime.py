"""The Docker runtime against a real Docker daemon: this session's own dockerd (tests/containers.py) and its
busybox+dropbear SSH image. No registry (a pull fails at once) and no NVIDIA toolkit (the daemon has no nvidia
runtime), as on a test machine. Each test drives the real reconciler (agents/workloads.py) with a desired state of
its own, shaped as the platform sends it."""

from __future__ import annotations

import os
import socket
import stat
import time
from datetime import UTC, datetime

import pytest

from agents.runtime.base import RuntimeUnavailable, WorkloadSpec
from agents.runtime.docker_runtime import (
    LABEL_GENERATION,
    LABEL_LEASE,
    LABEL_SPEC,
    LABEL_WORKLOAD,
    NO_TOOLKIT,
    DockerRuntime,
)
from agents.workloads import Reconciler
from tests.agents.fakes import DesiredSource, desired_state, desired_workload
from tests.containers import ssh_run

docker = pytest.importorskip("docker")

PORTS = (41000, 41049)


def workload(wid: int, image: str, **fields) -> dict:
    return desired_workload(wid, **({"lease": wid + 500, "image": image, "env": {"FOO": "bar"}} | fields))


def desired(version: int, *workloads: dict) -> dict:
    return desired_state(version, *workloads, port_range=PORTS)


@pytest.fixture
def client(dockerd):
    c = docker.DockerClient(base_url=dockerd.url)
    yield c
    dockerd.remove_all_containers()
    dockerd.run("volume", "prune", "-f", check=False)
    c.close()


@pytest.fixture
def state_dir(tmp_path) -> str:
    return str(tmp_path / "state")


def make(dockerd, state_dir, source, **kw) -> tuple[DockerRuntime, Reconciler]:
    runtime = DockerRuntime(state_dir, dockerd.url, publish_address="127.0.0.1", **kw)
    return runtime, Reconciler(source, runtime, state_dir, poll=0.1, grace=2)


def settle(rec: Reconciler, until, timeout: float = 30.0) -> dict:
    """Reconcile until `until(statuses by id)` holds (the runtime's background operations included)."""
    deadline = time.monotonic() + timeout
    while True:
        rec.tick()
        statuses = {w.id: w for w in rec.snapshot().workloads}
        if until(statuses):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last: {statuses}")
        time.sleep(0.1)


def is_(state: str, wid: int = 31):
    return lambda s: wid in s and s[wid].state == state


def container(client, wid: int = 31):
    return client.containers.get(f"suanli-workload-{wid}")


def env_of(c) -> dict[str, str]:
    return dict(item.split("=", 1) for item in c.attrs["Config"]["Env"])


def test_a_container_gets_its_labels_env_keys_limits_and_a_port_of_the_range_and_serves_ssh(
    dockerd, ssh_image, ssh_keypair, client, state_dir
):
    spec = workload(
        31, ssh_image, ssh_keys=[ssh_keypair.public_text], limits={"cpus": 1.5, "memory_mb": 256, "disk_gb": 2}
    )
    runtime, rec = make(dockerd, state_dir, DesiredSource(desired(1, spec)))
    statuses = settle(rec, is_("running"))
    port = statuses[31].ports["22"]
    assert PORTS[0] <= port <= PORTS[1]

    c = container(client)
    assert c.labels == {
        LABEL_WORKLOAD: "31",
        LABEL_LEASE: "531",
        LABEL_SPEC: WorkloadSpec.from_dict(spec).spec_hash,
        LABEL_GENERATION: "0",
    }
    host = c.attrs["HostConfig"]
    assert host["PortBindings"] == {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert host["NanoCpus"] == 1_500_000_000 and host["Memory"] == 256 * 2**20
    env = env_of(c)
    assert env["FOO"] == "bar" and env["NVIDIA_VISIBLE_DEVICES"] == "" and env["PUBLIC_KEY"] == ssh_keypair.public_text

    keys = os.path.join(state_dir, "workloads", "31", "ssh")
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(keys, "authorized_keys")).st_mode) == 0o600
    (mount,) = c.attrs["Mounts"]
    assert (mount["Source"], mount["Destination"], mount["RW"]) == (keys, "/root/.ssh", False)
    if not host.get("StorageOpt"):  # this daemon's vfs on a file system without quotas refuses a size
        assert statuses[31].message.startswith("disk limit of 2 GB not enforced: the storage driver refuses a size")

    result = ssh_run(port, ssh_keypair.private, "echo $FOO; touch /root/.ssh/x 2>&1 || echo read-only")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "bar" and "read-only" in result.stdout.lower()
    assert rec.report_fields()["workloads_version"] == 1


def test_a_restarted_agent_adopts_the_container_and_never_starts_it_twice(dockerd, ssh_image, client, state_dir):
    source = DesiredSource(desired(1, workload(31, ssh_image)))
    first, rec = make(dockerd, state_dir, source)
    settle(rec, is_("running"))
    before = container(client).attrs
    first.close()

    again, rec = make(dockerd, state_dir, source)  # a new agent process
    for _ in range(10):
        rec.tick()
        time.sleep(0.05)
    after = container(client).attrs
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert {w.id: w.state for w in rec.snapshot().workloads} == {31: "running"}
    assert len(client.containers.list(all=True)) == 1


def test_a_restart_request_or_a_spec_change_recreates_the_container(dockerd, ssh_image, client, state_dir):
    source = DesiredSource(desired(1, workload(31, ssh_image)))
    runtime, rec = make(dockerd, state_dir, source)
    settle(rec, is_("running"))
    first = container(client).id

    source.payload = desired(2, workload(31, ssh_image, generation=1))
    settle(rec, lambda s: s[31].state == "running" and s[31].generation == 1)
    second = container(client)
    assert second.id != first and second.labels[LABEL_GENERATION] == "1"

    source.payload = desired(3, workload(31, ssh_image, generation=1, env={"FOO": "baz"}))
    settle(rec, lambda s: s[31].state == "running" and container(client).id != second.id)
    assert env_of(container(client))["FOO"] == "baz"
    assert len(client.containers.list(all=True)) == 1


def test_desired_stopped_stops_and_keeps_the_container_and_running_starts_the_same_one(
    dockerd, ssh_image, client, state_dir
):
    source = DesiredSource(desired(1, workload(31, ssh_image)))
    runtime, rec = make(dockerd, state_dir, source)
    settle(rec, is_("running"))
    first = container(client).id

    source.payload = desired(2, workload(31, ssh_image, desired="stopped"))
    statuses = settle(rec, is_("exited"))
    assert statuses[31].message == "stopped" and statuses[31].exit_code is not None
    assert container(client).status == "exited" and container(client).id == first

    source.payload = desired(3, workload(31, ssh_image))
    settle(rec, is_("running"))
    assert container(client).id == first and container(client).status == "running"


def test_a_workload_left_out_is_removed_with_its_volumes_and_scratch_and_reported_cleaned(
    dockerd, ssh_image, client, state_dir, ssh_keypair
):
    # An image with a VOLUME: docker gives each container an anonymous volume, which removal must take too.
    base = dockerd.run("create", ssh_image).stdout.strip()
    dockerd.run("commit", "--change", "VOLUME /data", base, "suanli-test/ssh-volume:1")
    dockerd.run("rm", base)
    source = DesiredSource(desired(1, workload(31, "suanli-test/ssh-volume:1", ssh_keys=[ssh_keypair.public_text])))
    runtime, rec = make(dockerd, state_dir, source)
    settle(rec, is_("running"))
    assert dockerd.run("volume", "ls", "-q").stdout.split(), "the container has its anonymous volume"
    scratch = os.path.join(state_dir, "workloads", "31")
    assert os.path.isdir(scratch)

    source.payload = desired(2)
    statuses = settle(rec, is_("cleaned"))
    assert client.containers.list(all=True) == []
    assert dockerd.run("volume", "ls", "-q").stdout.split() == []
    assert not os.path.exists(scratch)
    fields = rec.report_fields()
    assert fields["workloads_version"] == 2 and statuses[31].state == "cleaned"


def test_stop_by_removes_the_container_while_the_platform_is_unreachable(dockerd, ssh_image, client, state_dir):
    stop_by = datetime.fromtimestamp(time.time() + 4, tz=UTC).isoformat()
    source = DesiredSource(desired(1, workload(31, ssh_image, stop_by=stop_by)))
    runtime, rec = make(dockerd, state_dir, source)
    settle(rec, is_("running"))
    source.down = True
    settle(rec, is_("cleaned"), timeout=20)
    assert client.containers.list(all=True) == []


def test_cards_without_the_nvidia_container_toolkit_fail_with_what_to_install(dockerd, ssh_image, client, state_dir):
    runtime, rec = make(dockerd, state_dir, DesiredSource(desired(1, workload(31, ssh_image, gpus=["GPU-aaaa"]))))
    assert runtime.nvidia is False
    statuses = settle(rec, is_("failed"))
    assert statuses[31].message == NO_TOOLKIT
    assert statuses[31].gpus == ("GPU-aaaa",)
    assert client.containers.list(all=True) == []


def test_under_simulate_the_cards_are_named_in_the_environment_only(dockerd, ssh_image, client, state_dir):
    spec = workload(31, ssh_image, gpus=["GPU-aaaa", "GPU-bbbb"])
    runtime, rec = make(dockerd, state_dir, DesiredSource(desired(1, spec)), simulate=True)
    statuses = settle(rec, is_("running"))
    c = container(client)
    assert env_of(c)["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    assert not c.attrs["HostConfig"].get("DeviceRequests")
    assert statuses[31].gpus == ("GPU-aaaa", "GPU-bbbb")


def test_with_the_nvidia_runtime_the_container_asks_for_exactly_the_leased_cards(dockerd, state_dir):
    runtime = DockerRuntime(state_dir, dockerd.url)
    runtime.nvidia = True  # as `docker info` shows it on a GPU host with nvidia-container-toolkit
    spec = WorkloadSpec.from_dict(
        workload(31, "x", gpus=["GPU-aaaa", "GPU-bbbb"], env={"NVIDIA_VISIBLE_DEVICES": "all"})
    )
    kwargs = runtime._container_kwargs(spec)
    (request,) = kwargs["device_requests"]
    assert request["DeviceIDs"] == ["GPU-aaaa", "GPU-bbbb"] and request["Capabilities"] == [["gpu"]]
    assert kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb", "the customer cannot widen it"


def test_an_image_that_cannot_be_pulled_fails_with_the_reason(dockerd, failing_image, client, state_dir):
    runtime, rec = make(dockerd, state_dir, DesiredSource(desired(1, workload(31, failing_image))))
    statuses = settle(rec, is_("failed"))
    message = statuses[31].message
    assert message.startswith(f"cannot pull {failing_image}: ") and "connection refused" in message, message
    assert client.containers.list(all=True) == []


def test_an_exited_container_reports_its_exit_code_and_is_not_started_again(dockerd, ssh_image, client, state_dir):
    spec = workload(31, ssh_image, command=["sh", "-c", "exit 7"], ports=[])
    runtime, rec = make(dockerd, state_dir, DesiredSource(desired(1, spec)))
    statuses = settle(rec, is_("exited"))
    assert (statuses[31].exit_code, statuses[31].message) == (7, "exited with code 7")
    started = container(client).attrs["State"]["StartedAt"]
    for _ in range(10):
        rec.tick()
        time.sleep(0.05)
    assert container(client).attrs["State"]["StartedAt"] == started


def test_host_ports_of_our_other_containers_and_of_listeners_are_skipped(dockerd, ssh_image, client, state_dir):
    listener = socket.socket()
    # A connection an earlier test's container closed on this port may linger in TIME_WAIT: that is no listener.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PORTS[0]))  # something of the provider's on the first port of the range
    listener.listen(1)
    try:
        source = DesiredSource(desired(1, workload(31, ssh_image), workload(32, ssh_image)))
        runtime, rec = make(dockerd, state_dir, source)
        statuses = settle(rec, lambda s: all(w in s and s[w].state == "running" for w in (31, 32)))
    finally:
        listener.close()
    ports = [statuses[w].ports["22"] for w in (31, 32)]
    assert PORTS[0] not in ports and len(set(ports)) == 2
    assert all(PORTS[0] < p <= PORTS[1] for p in ports)


def test_an_unreachable_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeUnavailable, match="does not answer"):
        DockerRuntime(str(tmp_path), f"unix://{tmp_path}/no-docker.sock")


def test_pull_progress_follows_the_layers_bytes(tmp_path, monkeypatch):
    """The pull's progress from the daemon's JSON stream (no registry on a test machine: a stand-in stream)."""
    from agents.runtime.base import Operation

    events = [
        {"status": "Pulling from suanli/pytorch", "id": "2.4"},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 10, "total": 100}},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 0, "total": 300}},
        {"status": "Download complete", "id": "a"},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 150, "total": 300}},
    ]
    seen = []

    class Images:
        pulled = False

        def get(self, ref):
            if not self.pulled:
                raise docker.errors.ImageNotFound("no such image")

    class Api:
        def pull(self, repository, tag, stream, decode):
            assert (repository, tag) == ("suanli/pytorch", "2.4")
            for event in events:
                yield event
                seen.append(op.progress)
            images.pulled = True

    images = Images()
    stub = type("Client", (), {"images": images, "api": Api()})()
    runtime = DockerRuntime.__new__(DockerRuntime)
    runtime.docker = docker
    op = Operation("create", "pending")
    runtime._pull(op, stub, "suanli/pytorch:2.4")
    assert seen == [0, 10, 2, 25, 62] and op.progress == 100 and op.state == "pulling"


def test_status_shows_the_docker_runtime_without_creating_anything(dockerd, tmp_path, capsys):
    import json

    from agents import cli

    common = ["--config", str(tmp_path / "none.json"), "--spool-dir", str(tmp_path / "spool"), "--simulate", "1"]
    cli.main([*common, "--runtime", "docker", "--docker-url", dockerd.url, "status", "--json"])
    runtime = json.loads(capsys.readouterr().out)["runtime"]
    assert runtime["kind"] == "docker" and runtime["ok"] and runtime["nvidia"] is False
    assert runtime["storage_driver"] == "vfs" and runtime["url"] == dockerd.url
    cli.main([*common, "--runtime", "docker", "--docker-url", dockerd.url, "status"])
    assert "NVIDIA container runtime NO" in capsys.readouterr().out
    assert not (tmp_path / "spool").exists()
    cli.main([*common, "--runtime", "docker", "--docker-url", f"unix://{tmp_path}/none.sock", "status", "--json"])
    runtime = json.loads(capsys.readouterr().out)["runtime"]
    assert runtime["ok"] is False and "does not answer" in runtime["error"]


def test_a_container_that_ended_with_the_host_is_started_again_after_the_reboot(dockerd, ssh_image, client, state_dir):
    runtime, rec = make(dockerd, state_dir, DesiredSource(desired(1, workload(31, ssh_image))))
    settle(rec, is_("running"))
    dockerd.run("stop", "suanli-workload-31")  # as the shutdown of the host stops it
    settle(rec, is_("exited"))
    for _ in range(5):
        rec.tick()
    assert container(client).status == "exited", "an ended container is not started again on its own"
    runtime.boot_time = time.time() + 1  # the host booted after the container ended
    settle(rec, is_("running"))
    assert len(client.containers.list(all=True)) == 1


def test_two_agents_on_one_daemon_touch_only_their_own_containers_and_adopt_an_unlabelled_one_they_are_told_to_run(
    dockerd, ssh_image, client, tmp_path
):
    from agents.runtime.docker_runtime import LABEL_SERVER

    def agent(name: str, owner: str | None, *workloads: dict) -> tuple[DockerRuntime, Reconciler, DesiredSource]:
        source = DesiredSource(desired(1, *workloads))
        runtime = DockerRuntime(str(tmp_path / name), dockerd.url, publish_address="127.0.0.1", owner=owner)
        return runtime, Reconciler(source, runtime, str(tmp_path / name), poll=0.1, grace=2), source

    # A container of before the label: an agent of before ran workload 33.
    _old, old_rec, _ = agent("old", None, workload(33, ssh_image))
    settle(old_rec, is_("running", 33))
    unlabelled = container(client, 33).attrs
    assert LABEL_SERVER not in unlabelled["Config"]["Labels"]
    _a, rec_a, _ = agent("a", "1", workload(31, ssh_image))
    _b, rec_b, source_b = agent("b", "2", workload(32, ssh_image))
    for _ in range(3):  # each would remove what it is not told to run, were it its own
        settle(rec_a, is_("running", 31))
        settle(rec_b, is_("running", 32))
    assert container(client, 31).labels[LABEL_SERVER] == "1" and container(client, 32).labels[LABEL_SERVER] == "2"
    assert {w.id for w in rec_a.snapshot().workloads} == {31} and {w.id for w in rec_b.snapshot().workloads} == {32}
    assert container(client, 33).attrs["Id"] == unlabelled["Id"]  # neither removed the unlabelled one
    # Told to run 33, b adopts the unlabelled container as it is (never a second start) ...
    source_b.payload = desired(2, workload(32, ssh_image), workload(33, ssh_image))
    settle(rec_b, lambda s: s.get(33) is not None and s[33].state == "running")
    after = container(client, 33).attrs
    assert (after["Id"], after["State"]["StartedAt"]) == (unlabelled["Id"], unlabelled["State"]["StartedAt"])
    # ... keeps it as its own across a restart of the agent, and removes it once it is no longer wanted.
    _b2, rec_b2, source_b2 = agent("b", "2", workload(32, ssh_image))
    source_b2.payload = desired(3, workload(32, ssh_image))
    settle(rec_b2, is_("cleaned", 33))
    assert {c.labels[LABEL_WORKLOAD] for c in client.containers.list(all=True)} == {"31", "32"}
    settle(rec_a, is_("running", 31))
