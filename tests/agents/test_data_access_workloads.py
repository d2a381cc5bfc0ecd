"""Data-access sessions on the agent (issue 16): the desired state's `data_access` items are workloads without
cards or lease, run and removed by the same reconciler as any other, mounting their volumes; a workload item that
has neither lease nor session is still refused as malformed."""

from __future__ import annotations

import pytest

from agents.runtime.base import Desired
from tests.agents.fakes import DesiredSource, desired_workload
from tests.agents.test_volume_workloads import desired, reconciler, runtime, workload_status  # noqa: F401


def session_item(wid: int, session: int, *volumes: int) -> dict:
    item = desired_workload(wid, lease=None, data_access=session, limits={"cpus": 1, "memory_mb": 1024})
    item["volumes"] = [{"id": v, "path": f"/data/v{v}", "size_gb": 10} for v in volumes]
    return item


def test_data_access_items_are_parsed_as_workloads_without_a_lease():
    body = desired(3, desired_workload(1), volumes=[7])
    body["data_access"] = [session_item(2, 40, 7)]
    parsed = Desired.from_dict(body)
    assert [(w.id, w.lease, w.gpus) for w in parsed.workloads] == [(1, 101, ()), (2, 0, ())]
    assert parsed.by_id()[2].volumes[0].path == "/data/v7"


def test_a_workload_without_lease_or_session_is_malformed():
    body = desired(3, desired_workload(1, lease=None))
    with pytest.raises(ValueError, match="lease"):
        Desired.from_dict(body)


def test_a_session_runs_beside_the_workloads_and_is_removed_when_it_leaves(clock, runtime, tmp_path):  # noqa: F811
    body = desired(1, desired_workload(1), volumes=[7])
    body["data_access"] = [session_item(2, 40, 7)]
    source = DesiredSource(body)
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=5)
    assert workload_status(rec, 2).state == "running" and workload_status(rec, 1).state == "running"
    assert {w["id"] for w in rec.report_fields()["workloads"]} == {1, 2}
    source.payload = {**desired(2, desired_workload(1), volumes=[7]), "data_access": []}
    rec.run(duration=5)
    assert workload_status(rec, 2).state == "cleaned" and workload_status(rec, 1).state == "running"
