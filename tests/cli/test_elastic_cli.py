"""`suanli leases scaling set/show/remove` and `suanli leases queue-depth` against the live site, each run as the
real program: the rule set, shown and removed, the queue depth reported and followed by the beat job, the `--json`
of each checked against /api/schema/, and the exit codes a script tests."""

from __future__ import annotations

from datetime import UTC, datetime

from scheduler import elastic, services
from scheduler.models import ScalingRule
from tests.cli.conftest import assert_valid, response_schema
from tests.factories import GpuModelFactory, online_server


def test_a_scaling_rule_from_the_command_line(suanli, alice, charlie, bob, openapi):
    model = GpuModelFactory(slug="cli-elastic", name="Elastic E1")
    online_server(organization=bob.org, gpu_model=model, gpus=8)
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    suanli.login(alice)
    path = "/api/v1/leases/{id}/scaling/"
    lease_id = str(lease.pk)
    # A window of 0 cards that is not now (the live server runs on the real clock).
    night = f"* {(datetime.now(UTC).hour + 12) % 24} * * *"

    # Neither or both targets: a usage error before any request; a bad schedule entry too.
    assert suanli("leases", "scaling", "set", lease_id, "--max", "4").code == 2
    both = suanli("leases", "scaling", "set", lease_id, "--max", "4", "--utilization", "70", "--queue-per-card", "2")
    assert both.code == 2 and "exactly one" in both.err
    assert suanli("leases", "scaling", "set", lease_id, "--max", "4", "--utilization", "7", "--schedule", "x").code == 2
    assert suanli("leases", "scaling", "show", lease_id).code == 3  # no rule yet
    # The site's own refusal (a schedule cap above max) is an API error, exit 1.
    refused = suanli(
        "leases", "scaling", "set", lease_id, "--max", "4", "--utilization", "70", "--schedule", "* * * * *=9"
    )
    assert refused.code == 1 and "schedule" in refused.err

    rule = suanli.ok(
        "leases",
        "scaling",
        "set",
        lease_id,
        "--max",
        "4",
        "--queue-per-card",
        "10",
        "--step-up",
        "4",
        "--schedule",
        f"{night}=0",
        "--max-price",
        "50",
        "--json",
    ).json()
    assert_valid(rule, response_schema(openapi, path, "put"))
    assert rule["queue_depth_per_gpu"] == 10 and rule["schedule"] == [{"cron": night, "max_gpus": 0}]
    assert rule["min_gpus"] == 0 and rule["max_price_per_hour"] == "50.000000"
    shown = suanli.ok("leases", "scaling", "show", lease_id, "--json").json()
    assert_valid(shown, response_schema(openapi, path))
    assert shown == rule
    table = suanli.ok("leases", "scaling", "show", lease_id).out
    assert f"{night} => 0" in table and "50.000000" in table

    reported = suanli.ok("leases", "queue-depth", lease_id, "35", "--json").json()
    assert_valid(reported, response_schema(openapi, "/api/v1/leases/{id}/queue-depth/", "post"))
    assert reported["queue_depth"] == 35
    elastic.scale_leases()
    after = suanli.ok("leases", "scaling", "show", lease_id, "--json").json()
    assert after["desired_gpus"] == 4 and after["status"] == "scaling"
    assert suanli("leases", "queue-depth", lease_id, "-1").code == 2

    # Another tenant's lease: not found (exit 3), and nothing changed.
    other = suanli.__class__(suanli.url, suanli.home / "charlie")
    (suanli.home / "charlie").mkdir()
    other.login(charlie)
    assert other("leases", "scaling", "show", lease_id).code == 3
    assert other("leases", "scaling", "remove", lease_id).code == 3
    assert other("leases", "queue-depth", lease_id, "1").code == 3
    assert ScalingRule.objects.get(lease=lease).queue_depth == 35

    removed = suanli.ok("leases", "scaling", "remove", lease_id)
    assert "no scaling rule" in removed.err
    assert not ScalingRule.objects.filter(lease=lease).exists()
    assert suanli("leases", "queue-depth", lease_id, "3").code == 4  # no rule: a conflict
