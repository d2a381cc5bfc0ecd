"""The tails of the workloads' output from a real Docker daemon (this session's own dockerd, tests/containers.py): the
Docker runtime reads a container's stdout and stderr, and the reconciler's shipper (agents/workload_logs.py) sends
them, as printed and nothing more, only when they changed, signed to the platform's path."""

from __future__ import annotations

import json
import time

import pytest

from agents.client import Response
from agents.runtime.docker_runtime import DockerRuntime
from agents.workload_logs import LOG_TAIL_BYTES, LOGS_PATH
from agents.workloads import Reconciler
from tests.agents.fakes import DesiredSource, desired_state, desired_workload

docker = pytest.importorskip("docker")
pytestmark = pytest.mark.containers


class Platform(DesiredSource):
    """The platform as the reconciler meets it: the desired state, and the signed uploads it records."""

    def __init__(self, payload):
        super().__init__(payload)
        self.uploads: list[tuple[str, str, dict]] = []

    def signed(self, method: str, path: str, body: bytes = b"", headers=None) -> Response:
        self.uploads.append((method, path, json.loads(body)))
        return Response(200, b'{"stored": 1}', {})


@pytest.fixture
def client(dockerd):
    c = docker.DockerClient(base_url=dockerd.url)
    yield c
    dockerd.remove_all_containers()
    c.close()


def _spec(image: str, script: str) -> dict:
    return desired_workload(
        41, lease=541, image=image, command=["sh", "-c", script], ports=[], env={"API_TOKEN": "s3cret-value"}
    )


def _settle(rec: Reconciler, platform: Platform, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(platform.uploads) < count:
        rec.tick()
        if time.monotonic() > deadline:
            raise AssertionError(f"no upload; statuses {rec.snapshot().workloads}")
        time.sleep(0.1)


def test_the_containers_output_goes_to_the_platform_as_printed_and_only_when_it_changed(
    dockerd, ssh_image, client, tmp_path
):
    script = "echo 'loading model'; echo 'warning: slow disk' >&2; sleep 1.5; echo 'epoch 1 done'; sleep 600"
    platform = Platform(desired_state(1, _spec(ssh_image, script), port_range=(41100, 41149)))
    now = [0.0]
    runtime = DockerRuntime(str(tmp_path / "state"), dockerd.url, publish_address="127.0.0.1")
    rec = Reconciler(platform, runtime, str(tmp_path / "state"), poll=0.1, grace=1, logs_every=5, clock=lambda: now[0])
    rec.logs.clock = rec.clock  # the shipper's turns follow the test's clock

    deadline = time.monotonic() + 30
    while not any(w.state == "running" for w in rec.snapshot().workloads):
        rec.tick()
        assert time.monotonic() < deadline, rec.snapshot()
        time.sleep(0.1)
    time.sleep(0.5)
    now[0] += 5
    _settle(rec, platform, 1)
    method, path, body = platform.uploads[0]
    assert (method, path) == ("POST", LOGS_PATH)
    (entry,) = body["logs"]
    assert entry["id"] == 41 and entry["truncated"] is False
    # Two streams: Docker orders them by when it read them, not necessarily as printed.
    assert sorted(entry["text"].splitlines(keepends=True)) == ["loading model\n", "warning: slow disk\n"]
    assert "s3cret" not in json.dumps(body)  # the spec's environment is never added to the output
    assert abs(entry["captured_at"] - time.time()) < 60

    now[0] += 5
    rec.tick()
    assert len(platform.uploads) == 1  # nothing new printed: nothing sent
    time.sleep(1.5)
    now[0] += 5
    _settle(rec, platform, 2)
    later = platform.uploads[1][2]["logs"][0]["text"]
    assert later.startswith(entry["text"]) and later.endswith("epoch 1 done\n") and len(later.splitlines()) == 3


def test_a_long_output_is_cut_to_its_last_64_kib(dockerd, ssh_image, client, tmp_path):
    script = "i=0; while [ $i -lt 1500 ]; do echo \"line $i $(printf '%080d' 0)\"; i=$((i+1)); done; sleep 600"
    platform = Platform(desired_state(1, _spec(ssh_image, script), port_range=(41150, 41199)))
    runtime = DockerRuntime(str(tmp_path / "state"), dockerd.url, publish_address="127.0.0.1")
    rec = Reconciler(platform, runtime, str(tmp_path / "state"), poll=0.1, grace=1, logs_every=0.5)
    deadline = time.monotonic() + 30
    while not platform.uploads or not platform.uploads[-1][2]["logs"][0]["text"].endswith(
        "line 1499 " + "0" * 80 + "\n"
    ):
        rec.tick()
        assert time.monotonic() < deadline, platform.uploads[-1:] or rec.snapshot()
        time.sleep(0.2)
    entry = platform.uploads[-1][2]["logs"][0]
    assert entry["truncated"] is True and len(entry["text"].encode()) <= LOG_TAIL_BYTES
    assert entry["text"].startswith("line ") and "line 0 " not in entry["text"]
    assert runtime.logs(99, 100) is None  # no such container
