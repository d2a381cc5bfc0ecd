"""The site serves the host agent built from this repository (issue 17: 'the enrolment command needs a
`suanli-*.whl` that nothing says how to get'): a wheel of `agents/`, the same bytes on every build, at a stable
address with its SHA-256, and the server page's one install line names it. The proof: a fresh virtual environment
installs the wheel from a running test server by the address and checksum the page shows, and the installed
`suanli-agent` (not the checkout's) answers `--help` and enrols a simulated host with that server."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from inventory.agent_package import agent_version, build, current
from inventory.models import Gpu, Server
from tests.factories import GpuModelFactory


def test_the_wheel_is_the_agent_and_the_same_bytes_on_every_build():
    first, second = build(), build()
    assert first.content == second.content and first.sha256 == second.sha256
    assert first.filename == f"suanli_agent-{agent_version()}-py3-none-any.whl"
    with zipfile.ZipFile(io.BytesIO(first.content)) as wheel:
        names = wheel.namelist()
        info = f"suanli_agent-{agent_version()}.dist-info"
        assert "agents/cli.py" in names and "agents/runtime/docker_runtime.py" in names
        assert not [n for n in names if not (n.startswith("agents/") or n.startswith(info))], names
        assert "suanli-agent = agents.cli:main" in wheel.read(f"{info}/entry_points.txt").decode()
        metadata = wheel.read(f"{info}/METADATA").decode()
        assert "Name: suanli-agent" in metadata and "Requires-Dist: nvidia-ml-py" in metadata
        assert "Django" not in metadata.split("\n\n")[0]
        record = wheel.read(f"{info}/RECORD").decode()
        assert set(names) == {line.split(",")[0] for line in record.splitlines()}


def test_the_agent_addresses_answer_anyone(client, db):
    wheel = current()
    index = client.get("/agent/").json()
    assert index["filename"] == wheel.filename and index["sha256"] == wheel.sha256
    assert index["url"] == f"http://testserver/agent/{wheel.filename}"
    response = client.get(f"/agent/{wheel.filename}")
    assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == wheel.sha256
    assert response["X-Checksum-SHA256"] == wheel.sha256
    assert client.get("/agent/suanli-agent.whl")["Location"] == f"/agent/{wheel.filename}"
    unit = client.get("/agent/suanli-agent.service")
    assert unit.status_code == 200 and "ExecStart=/usr/local/bin/suanli-agent run" in unit.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_fresh_venv_installs_the_served_wheel_and_enrols_with_the_install_lines_command(
    live_server, bob, tmp_path, settings
):
    from django.test import Client

    settings.SITE_URL = live_server.url  # the address the install line names: the running test server's
    model = GpuModelFactory(slug="pkg-h100", name="Package H100", nvml_names=["NVIDIA H100 80GB HBM3"])
    client = Client()
    client.force_login(bob.user)
    data = {"name": "pkg-box", "region": "cn-east-1", "gpu_model": model.pk, "gpu_count": 8}
    data |= {"cpu_cores": 96, "ram_gb": 1024, "disk_gb": 8000}
    page = client.post("/servers/", data, follow=True)
    command = page.context["install_command"]
    steps = command.split(" && ")
    pip_step = next(s for s in steps if "/bin/pip install" in s)
    url = shlex.split(pip_step)[-1]
    assert re.fullmatch(
        rf"{re.escape(live_server.url)}/agent/suanli_agent-[0-9.]+-py3-none-any\.whl#sha256=[0-9a-f]{{64}}", url
    )
    enroll = shlex.split(next(s for s in steps if "suanli-agent enroll" in s))
    assert enroll[:3] == ["sudo", "suanli-agent", "enroll"]

    # A fresh venv, outside the checkout, with no index (the test machine may have no network): the agent's own
    # dependency is needed only on a GPU host, where the line's pip installs it from PyPI.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "PYTHON", "VIRTUAL_ENV"))}
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-index", "--no-deps", "--disable-pip-version-check", url],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # A changed checksum is refused: pip checks the one in the line.
    tampered = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-index", "--no-deps", "--force-reinstall", url[:-4] + "0000"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert tampered.returncode != 0 and "hash" in (tampered.stdout + tampered.stderr).lower()

    agent = venv / "bin" / "suanli-agent"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import agents; print(agents.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)
    helped = subprocess.run([str(agent), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert helped.returncode == 0 and "enroll" in helped.stdout

    config = ["--config", str(tmp_path / "agent.json"), "--spool-dir", str(tmp_path / "spool")]
    simulated = ["--simulate", "8", "--model", "h100", "--seed", "pkg"]
    enrolled = subprocess.run(
        [str(agent), *config, *simulated, *enroll[2:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    server = Server.objects.get(organization=bob.org, name="pkg-box")
    assert server.enrolled_at is not None and Gpu.objects.filter(server=server).count() == 8
    # The index page names the same wheel the line installed.
    with urllib.request.urlopen(f"{live_server.url}/agent/", timeout=10) as answer:  # noqa: S310 - the test server
        assert answer.read().decode().count(url.split("#sha256=")[1]) >= 1


def test_the_build_command_writes_the_served_wheel(tmp_path, db):
    from django.core.management import call_command

    call_command("build_agent_wheel", str(tmp_path), stdout=io.StringIO())
    wheel = current()
    assert hashlib.sha256((tmp_path / wheel.filename).read_bytes()).hexdigest() == wheel.sha256
