"""Elastic leases seen by a careless client (issue 20's review)."""

from __future__ import annotations

from scheduler.models import ScalingRule


def test_a_queue_depth_reported_after_the_lease_ended_is_refused_and_not_stored(alice, rack):
    lease = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json").json()
    url = f"/api/v1/leases/{lease['id']}/"
    rule = {"max_gpus": 4, "queue_depth_per_gpu": 3}
    assert alice.api.put(url + "scaling/", rule, format="json").status_code == 200
    assert alice.api.post(url + "queue-depth/", {"depth": 5}, format="json").status_code == 200
    assert alice.api.post(url + "end/").status_code == 200
    late = alice.api.post(url + "queue-depth/", {"depth": 50}, format="json")
    assert late.status_code == 409 and late.json()["error"]["code"] == "invalid_state"
    assert ScalingRule.objects.get(lease_id=lease["id"]).queue_depth == 5
