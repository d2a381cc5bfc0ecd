"""Providers' and staff's commands against the live site, each run as the real `suanli` program: servers register
(with the agent's install command), list/show/drain/undrain/token, offers create/update/mine/delist, earnings and
payouts; close-period, reconcile and approve. `--json` checked against /api/schema/."""

from __future__ import annotations

from datetime import UTC, datetime

from rest_framework.test import APIClient

from accounts.models import Organization
from marketplace.views_servers import agent_install_command
from tests.cli.conftest import assert_items_valid, assert_valid, response_schema
from tests.factories import PayoutFactory, ProviderFactory, ProviderStatementFactory


def test_a_provider_registers_a_server_lists_it_and_drains_it(suanli, bob, h100, openapi):
    suanli.login(bob)
    created = suanli.ok(
        "servers",
        "register",
        "--name",
        "rack-7",
        "--region",
        "cn-east-1",
        "--gpu",
        h100.name,
        "--cards",
        "2",
        "--cpu-cores",
        "32",
        "--ram-gb",
        "256",
        "--disk-gb",
        "2000",
        "--ports",
        "41000-41099",
        "--json",
    ).json()
    install = created.pop("install_command")
    assert_valid(created, response_schema(openapi, "/api/v1/servers/", "post", "201"))
    assert created["status"] == "pending_enrollment" and created["port_range_start"] == 41000
    # The line the site's server page shows for the same token and address.
    assert install == agent_install_command(url=suanli.url, token=created["enrollment_token"])
    enrolled = APIClient().post(
        "/api/v1/agent/enroll/",
        {
            "enrollment_token": created["enrollment_token"],
            "hostname": "rack-7",
            "gpus": [
                {"index": i, "uuid": f"GPU-c11{i}", "name": h100.nvml_names[0], "memory_total_mb": 81559}
                for i in range(2)
            ],
        },
        format="json",
    )
    assert enrolled.status_code == 201, enrolled.content  # the printed token is the one that enrols

    table = suanli.ok(
        "servers",
        "register",
        "--name",
        "rack-8",
        "--region",
        "cn-east-1",
        "--gpu",
        str(h100.pk),
        "--cards",
        "1",
        "--cpu-cores",
        "8",
        "--ram-gb",
        "64",
        "--disk-gb",
        "100",
    )
    assert "sudo suanli-agent enroll --url" in table.out
    listed = suanli.ok("servers", "list", "--json").json()
    assert sorted(s["name"] for s in listed) == ["rack-7", "rack-8"]
    assert_items_valid(listed, openapi, "/api/v1/servers/")
    server = created["id"]
    shown = suanli.ok("servers", "show", str(server), "--json").json()
    assert_valid(shown, response_schema(openapi, "/api/v1/servers/{id}/"))
    assert len(shown["gpus"]) == 2
    drained = suanli.ok("servers", "drain", str(server), "--reason", "fans", "--json").json()
    assert drained["drained"] is True and drained["drained_reason"] == "fans"
    assert suanli.ok("servers", "undrain", str(server), "--json").json()["drained"] is False
    fresh = suanli.ok("servers", "token", str(server), "--json").json()
    # An enrolled server's new token re-enrols it (--force), as the server page says.
    assert fresh["install_command"] == agent_install_command(
        url=suanli.url, token=fresh["enrollment_token"], force=True
    )
    assert suanli("servers", "show", "999999").code == 3


def test_a_provider_lists_reprices_and_delists_an_offer(suanli, bob, h100, openapi, alice):
    suanli.login(bob)
    server = suanli.ok(
        "servers",
        "register",
        "--name",
        "rack-9",
        "--region",
        "cn-north-1",
        "--gpu",
        h100.name,
        "--cards",
        "1",
        "--cpu-cores",
        "8",
        "--ram-gb",
        "64",
        "--disk-gb",
        "100",
        "--json",
    ).json()
    offer = suanli.ok(
        "offers",
        "create",
        "--server",
        str(server["id"]),
        "--card-hour",
        "2.5",
        "--interruptible-card-hour",
        "1.1",
        "--server-month",
        "1200",
        "--json",
    ).json()
    assert_valid(offer, response_schema(openapi, "/api/v1/offers/", "post", "201"))
    assert offer["prices"]["card_hour"] == "2.5000" and offer["interruptible_prices"]["card_hour"] == "1.1000"
    changed = suanli.ok("offers", "update", str(offer["id"]), "--card-hour", "3", "--json").json()
    assert changed["prices"]["card_hour"] == "3.0000" and changed["prices"]["server_month"] == "1200.0000"
    assert suanli("offers", "update", str(offer["id"])).code == 2  # nothing to change
    mine = suanli.ok("offers", "mine", "--json").json()
    assert [o["id"] for o in mine] == [offer["id"]]
    assert_items_valid(mine, openapi, "/api/v1/offers/mine/")
    suanli.ok("offers", "delist", str(offer["id"]))
    assert suanli.ok("offers", "mine", "--json").json()[0]["delisted_at"]
    suanli.login(alice)
    assert suanli("offers", "delist", str(offer["id"])).code in {1, 3}  # not hers: refused


def test_earnings_and_payouts_show_the_providers_statements(suanli, bob, charlie, openapi):
    statement = ProviderStatementFactory(organization=bob.org, period="2026-09")
    PayoutFactory(statement=statement, reference="BANK-77")
    ProviderStatementFactory(organization=charlie.org, period="2026-09")
    suanli.login(bob)
    earned = suanli.ok("earnings", "--json").json()
    assert [(s["period"], s["gross"], s["net"]) for s in earned] == [("2026-09", "1000.00", "850.00")]
    assert_items_valid(earned, openapi, "/api/v1/payouts/")
    paid = suanli.ok("payouts", "--json").json()
    assert [(p["statement"], p["reference"], p["amount"]) for p in paid] == [(statement.pk, "BANK-77", "850.00")]
    assert "850.00 USD" in suanli.ok("earnings").out


def test_staff_approve_close_and_reconcile_a_month(suanli, staff, bob, openapi):
    pending = ProviderFactory(name="New IDC", status=Organization.Status.PENDING)
    suanli.login(bob)
    assert suanli("approve", str(pending.pk)).code == 3  # not bob's organisation: unknown to him
    assert suanli("close-period", "2026-10").code == 1
    suanli.login(staff)
    approved = suanli.ok("approve", str(pending.pk), "--json").json()
    assert approved["status"] == "active"
    closed = suanli.ok("close-period", "2026-10", "--json").json()
    assert closed == {"period": "2026-10", "invoices": 0, "statements": 0}
    assert_valid(closed, response_schema(openapi, "/api/v1/admin/close-period/", "post"))
    this_month = datetime.now(UTC).strftime("%Y-%m")
    open_month = suanli("close-period", this_month)
    assert open_month.code == 4 and "period_open" in open_month.err
    assert suanli("close-period", "2026-13").code == 1  # 400
    report = suanli.ok("reconcile", "2026-10", "--json").json()
    assert_valid(report, response_schema(openapi, "/api/v1/admin/reconciliation/"))
    assert report["ok"] is True and report["period"] == "2026-10"
    assert "everything matches" in suanli.ok("reconcile", "2026-10").err
