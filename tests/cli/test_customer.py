"""A customer's commands against the live site, each run as the real `suanli` program: offers search, SSH keys,
leases create (idempotent, --wait), list/show/resize/end, ssh, events, usage, balance, top-up and invoices; the
`--json` of each checked against /api/schema/, and the exit codes a script tests."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

from billing import ledger
from scheduler.models import Lease
from tests.cli.conftest import assert_items_valid, assert_valid, response_schema
from tests.factories import GpuModelFactory, InvoiceFactory, ProviderFactory, online_server
from tests.workloads.conftest import enrolled_box, openssh_public_key


@pytest.fixture
def market(db):
    """Three listed servers: two of an SXM model (cheap, dear) and one of a small card, of two providers."""
    # Models of their own: the migrations' catalogue is there or not, as the tests before flushed it.
    sxm = GpuModelFactory(slug="cli-h100-sxm", name="Zeus Z100 SXM 80GB")
    GpuModelFactory(slug="cli-h100-pcie", name="Zeus Z100 PCIe 80GB", interconnect="pcie")
    rtx = GpuModelFactory(slug="cli-rtx-4090", name="Zeus ZX 24GB", memory_gb=24, interconnect="pcie")
    acme, zeta = ProviderFactory(name="Acme GPU"), ProviderFactory(name="Zeta Compute")
    cheap = online_server(gpu_model=sxm, organization=acme, offer={"card_hour_price": Decimal("2.2000")})
    dear = online_server(gpu_model=sxm, organization=zeta, offer={"card_hour_price": Decimal("3.9000")})
    small = online_server(
        gpus=4,
        gpu_model=rtx,
        organization=zeta,
        offer={"card_hour_price": Decimal("0.5000"), "card_hour_interruptible_price": Decimal("0.2500")},
    )
    return {"cheap": cheap.offers.get(), "dear": dear.offers.get(), "small": small.offers.get(), "sxm": sxm}


def test_offers_search_makes_the_api_call_its_query_means(suanli, market, openapi):
    run = suanli.ok("offers", "search", "gpu=z100_sxm", "cards>=4", "price<3.9", "--json")
    found = run.json()
    assert [o["id"] for o in found] == [market["cheap"].pk]
    assert_items_valid(found, openapi, "/api/v1/offers/")
    params = {"gpu_model": market["sxm"].pk, "min_gpus": 4, "max_price": "3.899999"}
    direct = requests.get(f"{suanli.url}/api/v1/offers/", params=params, timeout=30).json()
    assert found == direct["results"]
    everything = suanli.ok("offers", "search", "sort=-price", "--json").json()
    assert [o["id"] for o in everything] == [market["dear"].pk, market["cheap"].pk, market["small"].pk]
    assert [o["id"] for o in suanli.ok("offers", "search", "--sort", "price", "--limit", "1", "--json").json()] == [
        market["small"].pk
    ]
    table = suanli.ok("offers", "search", "gpu=zx").out
    assert "Zeta Compute" in table and "0.5000" in table and "Acme GPU" not in table


def test_a_bad_query_is_exit_2_with_a_caret_under_the_word(suanli, market):
    run = suanli("offers", "search", "gpu=z100_sxm", "cards=8")
    assert run.code == 2
    lines = run.err.splitlines()
    assert "cards takes >= >" in lines[0]
    assert lines[1] == "  gpu=z100_sxm cards=8" and lines[2] == "               ^^^^^^^"
    ambiguous = suanli("offers", "search", "gpu=Z100")
    assert ambiguous.code == 2 and "matches 2 GPU models" in ambiguous.err


@pytest.fixture
def box(bob, h100):
    """Bob's enrolled 8-card server, listed, with its agent (reports through the real API)."""
    return enrolled_box(bob, h100, name="box-1", prefix="c1i0")


def _add_key(suanli, tmp_path) -> dict:
    public = tmp_path / "id_ed25519.pub"
    public.write_text(openssh_public_key(ed25519.Ed25519PrivateKey.generate(), "me@laptop") + "\n")
    return suanli.ok("keys", "add", str(public), "--json").json()


def test_a_lease_from_create_to_end(suanli, alice, box, openapi, tmp_path):
    suanli.login(alice)
    key = _add_key(suanli, tmp_path)
    assert key["name"] == "me@laptop" and key["fingerprint"].startswith("SHA256:")
    assert [k["id"] for k in suanli.ok("keys", "list", "--json").json()] == [key["id"]]

    create = [
        "leases",
        "create",
        "--offer",
        str(box.offer_id),
        "--cards",
        "2",
        "--image",
        "ubuntu:24.04",
        "--port",
        "22",
        "--key",
        "me@laptop",
        "--env",
        "A=1",
        "--json",
    ]
    lease = suanli.ok(*create, "--idempotency-key", "retry-me").json()
    assert_valid(lease, response_schema(openapi, "/api/v1/leases/", "post", "201"))
    assert lease["state"] == "active" and len(lease["gpus"]) == 2
    again = suanli.ok(*create, "--idempotency-key", "retry-me").json()  # a retried command never rents twice
    assert again["id"] == lease["id"]
    assert Lease.objects.filter(organization=alice.org).count() == 1
    other = suanli.ok(*create[:-1], "--cards", "1", "--json").json()  # a new command: a key of its own
    assert other["id"] != lease["id"]

    listed = suanli.ok("leases", "list", "--json").json()
    assert {x["id"] for x in listed} == {lease["id"], other["id"]}
    assert_items_valid(listed, openapi, "/api/v1/leases/")
    shown = suanli.ok("leases", "show", str(lease["id"]), "--json").json()
    assert_valid(shown, response_schema(openapi, "/api/v1/leases/{id}/"))
    assert shown["workloads"][0]["state"] == "pending"
    assert "pending" in suanli.ok("leases", "show", str(lease["id"])).out

    no_line = suanli("ssh", str(lease["id"]))
    assert no_line.code == 4 and "no SSH line yet" in no_line.err
    workload = shown["workloads"][0]["id"]
    box.agent.report([{"id": workload, "state": "running", "ports": {"22": 40022}}])
    assert suanli.ok("ssh", str(lease["id"]), "--print").out.strip() == "ssh -p 40022 root@gpu1.example.com"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text('#!/bin/sh\necho "ssh $*" > "$SSH_ARGS_FILE"\n')
    (fake / "ssh").chmod(0o755)
    args_file = tmp_path / "ssh-args"
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "SSH_ARGS_FILE": str(args_file)}
    suanli.ok("ssh", str(lease["id"]), "-A", env=env)
    assert args_file.read_text().strip() == "ssh -p 40022 -A root@gpu1.example.com"

    resized = suanli.ok("leases", "resize", str(lease["id"]), "3", "--json").json()
    assert len(resized["gpus"]) == 3
    assert_valid(resized, response_schema(openapi, "/api/v1/leases/{id}/resize/", "post"))
    events = suanli.ok("events", str(lease["id"]), "--json").json()
    assert_items_valid(events, openapi, "/api/v1/leases/{id}/events/")
    kinds = [e["kind"] for e in events]
    assert "workload" in kinds and "resized" in " ".join(kinds), kinds
    usage = suanli.ok("usage", str(lease["id"]), "--json").json()
    assert_valid(usage, response_schema(openapi, "/api/v1/leases/{id}/usage/"))
    ended = suanli.ok("leases", "end", str(lease["id"]), "--json").json()
    assert ended["state"] == "ended"
    assert suanli("leases", "end", str(lease["id"])).code == 4  # ending twice: a conflict


def test_wait_shows_progress_until_the_workload_runs(suanli, alice, box, tmp_path):
    suanli.login(alice)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "leases",
            "create",
            "--offer",
            str(box.offer_id),
            "--cards",
            "1",
            "--image",
            "ubuntu:24.04",
            "--port",
            "22",
            "--wait",
            "--timeout",
            "90",
            "--json",
        ],
        cwd=suanli.home,
        env=suanli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lease = None
        for _ in range(120):
            lease = Lease.objects.filter(organization=alice.org).first()
            if lease:
                break
            time.sleep(0.25)
        assert lease is not None
        assert proc.poll() is None  # still waiting for the workload
        workload = lease.workloads.get()
        box.agent.report([{"id": workload.pk, "state": "pulling", "progress": 40}])
        time.sleep(1.5)
        assert proc.poll() is None
        box.agent.report([{"id": workload.pk, "state": "running", "ports": {"22": 40001}}])
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert __import__("json").loads(out)["workloads"][0]["state"] == "running"


def test_exit_codes_for_not_found_no_capacity_and_insufficient_funds(suanli, alice, box):
    suanli.login(alice)
    assert suanli("leases", "show", "987654").code == 3
    ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=Decimal(0), currency=alice.org.currency)
    broke = suanli("leases", "create", "--offer", str(box.offer_id), "--cards", "1", "--json")
    assert broke.code == 5 and "insufficient_funds" in broke.err
    assert broke.json()["error"]["code"] == "insufficient_funds"  # --json scripts read the API's error too
    ledger.terms_set(org=alice.org, mode="postpaid", credit_limit=None, currency=alice.org.currency)
    suanli.ok("leases", "create", "--offer", str(box.offer_id), "--cards", "8")
    full = suanli("leases", "create", "--offer", str(box.offer_id), "--cards", "1")
    assert full.code == 4 and "no_capacity" in full.err
    assert suanli("leases", "create", "--offer", str(box.offer_id), "--cards", "9").code == 1  # 400: bad input


def test_balance_and_top_up(suanli, alice, openapi):
    suanli.login(alice)
    balance = suanli.ok("balance", "--json").json()
    assert_valid(balance, response_schema(openapi, "/api/v1/balance/"))
    assert balance["currency"] == "USD"
    assert "burn" in suanli.ok("balance").out.lower()
    # No payment provider is configured on the test site: the API's own answer, exit 1 with its code.
    run = suanli("top-up", "50")
    assert run.code == 1 and "payments_not_configured" in run.err


def test_invoices_list_show_and_pdf(suanli, alice, charlie, openapi, tmp_path):
    invoice = InvoiceFactory(
        organization=alice.org,
        period="2026-10",
        currency="USD",
        number="INV-000042",
        state="open",
        subtotal=10,
        total=10,
    )
    InvoiceFactory(organization=charlie.org, period="2026-10", currency="USD", number="INV-000043", state="open")
    suanli.login(alice)
    listed = suanli.ok("invoices", "list", "--json").json()
    assert [i["number"] for i in listed] == ["INV-000042"]
    assert_items_valid(listed, openapi, "/api/v1/invoices/")
    shown = suanli.ok("invoices", "show", str(invoice.pk), "--json").json()
    assert_valid(shown, response_schema(openapi, "/api/v1/invoices/{id}/"))
    saved = suanli.ok("invoices", "pdf", str(invoice.pk), "--json").json()
    path = suanli.home / "INV-000042.pdf"
    assert saved["file"] == "INV-000042.pdf" and path.read_bytes().startswith(b"%PDF")
    assert saved["bytes"] == path.stat().st_size and stat.S_ISREG(path.stat().st_mode)
    other = InvoiceFactory._meta.model.objects.get(number="INV-000043")
    assert suanli("invoices", "pdf", str(other.pk)).code == 3  # another tenant's: not found


def test_top_up_and_invoice_payment_start_with_stripe(suanli, alice, fake_stripe, openapi):
    invoice = InvoiceFactory(
        organization=alice.org,
        period="2026-09",
        currency="USD",
        number="INV-000051",
        state="open",
        subtotal=12,
        total=12,
    )
    suanli.login(alice)
    started = suanli.ok("top-up", "25.00", "--json").json()
    assert_valid(started, response_schema(openapi, "/api/v1/balance/top-ups/", "post", "201"))
    assert started["amount"] == "25.00" and started["currency"] == "USD" and started["client_secret"]
    assert "pay it at" in suanli.ok("top-up", "10").err
    paying = suanli.ok("invoices", "pay", str(invoice.pk), "--json").json()
    assert_valid(paying, response_schema(openapi, "/api/v1/invoices/{id}/pay/", "post"))
    assert paying["amount"] == "12.00" and paying["client_secret"]


def test_following_events_then_a_reservation_on_another_plan(suanli, alice, box, openapi):
    from datetime import UTC, datetime, timedelta

    suanli.login(alice)
    now = suanli.ok("leases", "create", "--offer", str(box.offer_id), "--cards", "1", "--json").json()
    follow = subprocess.Popen(
        [sys.executable, "-m", "cli", "events", str(now["id"]), "-f", "--interval", "0.5"],
        cwd=suanli.home,
        env=suanli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        assert follow.poll() is None  # following while the lease runs
        suanli.ok("leases", "end", str(now["id"]))
        out, err = follow.communicate(timeout=30)  # ... and done once it is over
    finally:
        follow.kill() if follow.poll() is None else None
    assert follow.returncode == 0, err
    assert "ended" in out

    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    reserved = suanli.ok(
        "leases",
        "create",
        "--plan",
        "server_month",
        "--offer",
        str(box.offer_id),
        "--servers",
        "1",
        "--start-at",
        start.isoformat(),
        "--end-at",
        (start + timedelta(days=30)).isoformat(),
        "--json",
    ).json()
    assert reserved["plan"] == "server_month" and reserved["state"] == "scheduled"
    assert_valid(reserved, response_schema(openapi, "/api/v1/leases/", "post", "201"))
    assert [x["id"] for x in suanli.ok("leases", "list", "--state", "scheduled", "--json").json()] == [reserved["id"]]
    cancelled = suanli.ok("leases", "end", str(reserved["id"]), "--json").json()
    assert cancelled["state"] == "cancelled"


def test_the_catalogue_templates_an_offer_keys_and_stop_start(suanli, alice, box, openapi, tmp_path):
    from workloads.models import Template

    # The migrations' public templates are there or not, as the live-server tests before flushed them.
    Template.objects.get_or_create(
        organization=None, slug="cli-ssh", defaults={"name": "CLI SSH box", "image": "ubuntu:24.04", "ports": [22]}
    )
    models = suanli.ok("gpu-models", "--json").json()
    assert_valid(models, response_schema(openapi, "/api/v1/gpu-models/"))
    templates = suanli.ok("templates", "--json").json()
    assert "CLI SSH box" in suanli.ok("templates").out
    assert_valid(templates, response_schema(openapi, "/api/v1/templates/"))
    offer = suanli.ok("offers", "show", str(box.offer_id), "--json").json()
    assert_valid(offer, response_schema(openapi, "/api/v1/offers/{id}/"))
    assert suanli("offers", "show", "999999").code == 3

    suanli.login(alice)
    key = _add_key(suanli, tmp_path)
    suanli.ok("keys", "delete", str(key["id"]))
    assert suanli.ok("keys", "list", "--json").json() == []
    assert suanli("keys", "delete", str(key["id"])).code == 3

    from inventory.models import Offer

    Offer.objects.filter(pk=box.offer_id).update(card_hour_interruptible_price=Decimal("1.2000"))
    template = next(t for t in templates if t["name"] == "CLI SSH box")
    cheap = suanli.ok("leases", "create", "--offer", str(box.offer_id), "--cards", "1", "--interruptible", "--json")
    assert cheap.json()["interruptible"] is True and cheap.json()["unit_price"] == "1.200000"
    refused = suanli("leases", "stop", str(cheap.json()["id"]))
    assert refused.code == 4 and "not_stoppable" in refused.err  # an interruptible lease is ended, not stopped
    suanli.ok("leases", "end", str(cheap.json()["id"]))

    lease = suanli.ok(
        "leases", "create", "--offer", str(box.offer_id), "--cards", "1", "--template", template["name"], "--json"
    ).json()
    shown = suanli.ok("leases", "show", str(lease["id"]), "--json").json()
    assert shown["workload"]["template"] == template["id"]
    workload = shown["workloads"][0]["id"]
    box.agent.report([{"id": workload, "state": "running", "ports": {"22": 40100}}])
    stopped = suanli.ok("leases", "stop", str(lease["id"]), "--json").json()
    assert stopped["state"] == "stopped"
    box.agent.report([{"id": workload, "state": "cleaned"}])  # the agent removed it: the cards are clean
    started = suanli.ok("leases", "start", str(lease["id"]), "--json").json()
    assert started["state"] == "active"


def test_wait_gives_up_after_its_timeout_with_exit_1(suanli, alice, box):
    suanli.login(alice)
    run = suanli(
        "leases",
        "create",
        "--offer",
        str(box.offer_id),
        "--cards",
        "1",
        "--image",
        "ubuntu:24.04",
        "--wait",
        "--timeout",
        "2",
    )
    assert run.code == 1 and "Gave up waiting after 2 s" in run.err
    assert "pending" in run.out  # the lease as it stands is still shown


def test_volumes_made_mounted_by_a_container_and_by_host_access_then_wiped(
    suanli, alice, bob, box, h100, openapi, tmp_path
):
    from tests.workloads.conftest import enrolled_box
    from tests.workloads.test_volumes import reported
    from tests.workloads.test_volumes_api import lend_storage

    suanli.login(alice)
    lend_storage(bob, box)
    made = suanli.ok("volumes", "create", "data", "--server", str(box.server_id), "--size-gb", "10", "--json").json()
    assert_valid(made, response_schema(openapi, "/api/v1/volumes/", "post", "201"))
    assert made["state"] == "creating" and made["size_gb"] == 10
    too_big = suanli("volumes", "create", "huge", "--server", str(box.server_id), "--size-gb", "500")
    assert too_big.code == 4 and "no_storage" in too_big.err
    reported(box.agent, [{"id": made["id"], "state": "ready"}])
    listed = suanli.ok("volumes", "list", "--json").json()
    assert_items_valid(listed, openapi, "/api/v1/volumes/")
    assert [v["id"] for v in listed] == [made["id"]] and listed[0]["state"] == "ready"
    assert "data" in suanli.ok("volumes", "list").out

    bad = suanli("leases", "create", "--offer", str(box.offer_id), "--cards", "1", "--volume", "data")
    assert bad.code == 2 and "VOLUME_ID:/path" in bad.err
    mounted = f"{made['id']}:/data"
    lease = suanli.ok(
        "leases", "create", "--offer", str(box.offer_id), "--cards", "1", "--image", "ubuntu:24.04", "--volume", mounted
    )
    [item] = box.agent.desired()["workloads"]
    assert item["volumes"] == [{"id": made["id"], "path": "/data", "size_gb": 10}], item
    assert suanli.ok("volumes", "show", str(made["id"]), "--json").json()["state"] == "in_use"
    in_use = suanli("volumes", "delete", str(made["id"]))
    assert in_use.code == 4 and "volume_in_use" in in_use.err
    lease_id = int(next(line for line in lease.out.splitlines() if line.startswith("id")).split()[-1])
    suanli.ok("leases", "end", str(lease_id))
    wiping = suanli.ok("volumes", "delete", str(made["id"]), "--json").json()
    assert wiping["state"] == "wiping"

    # A whole bare server (host access) with a volume of its own under /data.
    host = enrolled_box(bob, h100, name="host-cli", prefix="h0c1", runtime="host", host_access=True)
    lend_storage(bob, host)
    vol = suanli.ok("volumes", "create", "scratch", "--server", str(host.server_id), "--size-gb", "5", "--json").json()
    reported(host.agent, [{"id": vol["id"], "state": "ready"}])
    until = (datetime.now(UTC) + timedelta(days=40)).replace(microsecond=0).isoformat()
    _add_key(suanli, tmp_path)
    args = ["leases", "create", "--plan", "server_month", "--offer", str(host.offer_id), "--end-at", until]
    args += ["--host-access", "--key", "me@laptop"]
    on_host = suanli.ok(*args, "--volume", f"{vol['id']}:/data/train", "--json").json()
    assert on_host["state"] == "active" and on_host["workload"]["access"] == "host", on_host
    [item] = host.agent.desired()["workloads"]
    assert item["access"] == "host" and item["volumes"] == [{"id": vol["id"], "path": "/data/train", "size_gb": 5}]
    outside = suanli(*args, "--volume", f"{vol['id']}:/etc/x")
    assert outside.code == 1 and "/data" in outside.err  # 400: host access mounts only under /data
