"""A scaling rule's schedule takes only cron expressions the beat job can follow: whatever else is sent is a 400
beside the field, never a 500 (celery's crontab parser raises its own ParseException for some, and int() reads other
scripts' digits)."""

from __future__ import annotations

import pytest

from scheduler.elastic import Cron
from scheduler.models import ScalingRule
from scheduler.services import lease_create
from tests.factories import online_server

ODD = ["-1 * * * *", "1,,2 * * * *", "*/* * * * *", "٣ * * * *", "*/0 * * * *", "* * * * 8", "\x00 * * * *"]


@pytest.mark.parametrize("cron", ODD)
def test_an_odd_cron_expression_is_a_value_error(cron):
    with pytest.raises(ValueError, match="cron expression"):
        Cron.parse(cron)


@pytest.mark.django_db
def test_the_api_answers_an_odd_schedule_with_a_400_beside_it(alice, bob):
    online_server(organization=bob.org)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    for cron in ODD:
        body = {"max_gpus": 4, "target_utilization_pct": 60, "schedule": [{"cron": cron, "max_gpus": 1}]}
        response = alice.api.put(f"/api/v1/leases/{lease.pk}/scaling/", body, format="json")
        assert response.status_code == 400, (cron, response.content)
        assert "schedule" in response.json()["error"]["fields"], cron
    assert not ScalingRule.objects.filter(lease=lease).exists()
