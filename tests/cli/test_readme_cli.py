"""README's `suanli` walk-through (the CLI twin of its API walk-through), read out of README.md and run as written
in bash, one script, stopping at the first command that fails, against the live server on loopback with
demo-like data made by factories: the provider ops@example.com (Example IDC), the customer lab@example.com, and an
enrolled 8-card H100 SXM server of another provider listed at 17.6 CNY a card-hour, whose agent reports the rented
workload running. Substituted, as a reader would: the site's address (a free port), the passwords `suanli login`
asks for (given with --password-stdin), and `ssh` (a stand-in that records the command it was given)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest
from allauth.account.models import EmailAddress
from cryptography.hazmat.primitives.asymmetric import ed25519

from accounts.models import Organization
from inventory.models import GpuModel, Server
from scheduler.models import Lease
from tests.cli.conftest import REPO
from tests.conftest import make_persona
from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory
from tests.workloads.conftest import H100, enrolled_box, openssh_public_key

README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = re.compile(r"^### The same from the command line: `suanli`\n(.*?)^## ", re.MULTILINE | re.DOTALL)
PASSWORD = "a-long-password-1"


def _walkthrough() -> str:
    section = SECTION.search(README)
    assert section, "README has the CLI twin of its API walk-through"
    blocks = re.findall(r"^```sh\n(.*?)^```", section[1], re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def _user(email: str, org: Organization):
    persona = make_persona(org, email=email)
    persona.user.set_password(PASSWORD)
    persona.user.save()
    EmailAddress.objects.update_or_create(user=persona.user, email=email, defaults={"verified": True, "primary": True})
    return persona


@pytest.fixture
def world(db, bob):
    model = GpuModel.objects.filter(name="NVIDIA H100 SXM 80GB").first() or GpuModelFactory(
        slug="cli-readme-h100-sxm", name="NVIDIA H100 SXM 80GB", nvml_names=[H100]
    )
    ops = _user("ops@example.com", ProviderFactory(name="Example IDC"))
    lab = _user("lab@example.com", OrganizationFactory(name="Example Lab"))
    seller = make_persona(ProviderFactory(name="Seller IDC", currency="CNY"), email="seller@example.com")
    box = enrolled_box(seller, model, name="h100-a", prefix="rdme", prices={"card_hour": "17.6000"})
    return {"ops": ops, "lab": lab, "box": box}


def _agent_runs_what_it_is_given(box, stop: threading.Event) -> None:
    """The box's agent: report every workload placed on it running with its SSH port published."""
    from django.db import connection

    from workloads.models import Workload

    try:
        while not stop.is_set():
            for workload in Workload.objects.filter(server_id=box.server_id, state="pending"):
                box.agent.report([{"id": workload.pk, "state": "running", "ports": {"22": 40022}}])
            time.sleep(0.3)
    finally:
        connection.close()


def test_the_readme_cli_walkthrough_runs_as_written(live_server, world, tmp_path):
    script = _walkthrough()
    assert "http://127.0.0.1:8000" in script
    script = script.replace("http://127.0.0.1:8000", live_server.url)
    script, logins = re.subn(
        r"^(suanli (?:--profile \w+ )?login --email \S+)$", r'\1 --password-stdin <<< "$PW"', script, flags=re.MULTILINE
    )
    assert logins == 2

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text(openssh_public_key(ed25519.Ed25519PrivateKey.generate(), "me"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "suanli").write_text(f'#!/bin/sh\nexec {sys.executable} -m cli "$@"\n')
    (bin_dir / "ssh").write_text('#!/bin/sh\necho "ssh $*" >> "$HOME/ssh-was-run"\n')
    for program in ("suanli", "ssh"):
        (bin_dir / program).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PYTHONPATH": str(REPO),
        "LANG": "C.UTF-8",
        "COLUMNS": "160",
        "PW": PASSWORD,
    }
    stop = threading.Event()
    agent = threading.Thread(target=_agent_runs_what_it_is_given, args=(world["box"], stop), daemon=True)
    agent.start()
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            start_new_session=True,
        )
    finally:
        stop.set()
        agent.join(timeout=10)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # What the walk-through did, on the site.
    server = Server.objects.get(name="idc-h100-01")
    assert server.organization == world["ops"].org and server.gpu_count == 8
    assert f"sudo suanli-agent enroll --url {live_server.url} --token enr_" in result.stdout
    lease = Lease.objects.get(organization=world["lab"].org)
    assert lease.state == "ended" and lease.offer_id == world["box"].offer_id
    assert (home / "ssh-was-run").read_text().strip() == "ssh -p 40022 root@gpu1.example.com"
    config = home / ".config" / "suanli" / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert "17.6000 CNY" in result.stdout  # the search's table
