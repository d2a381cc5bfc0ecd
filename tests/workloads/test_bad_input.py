"""Every bad field of a lease's `workload` is a 400 on `fields.workload`, and nothing is created."""

from __future__ import annotations

import pytest

from scheduler.models import Allocation, Lease
from tests.workloads.conftest import rent, template_id
from workloads.models import Workload, WorkloadSpec

BAD_WORKLOADS = {
    "unknown template": lambda: {"template": 987654},
    "neither template nor image": lambda: {"ssh_keys": []},
    "image with a space": lambda: {"image": "ubuntu 22.04"},
    "image with shell characters": lambda: {"image": "ubuntu;rm -rf /"},
    "image starting with a dash": lambda: {"image": "-ubuntu"},
    "image too long": lambda: {"image": "a" * 300},
    "port 0": lambda: {"image": "ubuntu:22.04", "ports": [0]},
    "port 65536": lambda: {"image": "ubuntu:22.04", "ports": [65536]},
    "port not a number": lambda: {"image": "ubuntu:22.04", "ports": ["ssh"]},
    "eleven ports": lambda: {"image": "ubuntu:22.04", "ports": list(range(2000, 2011))},
    "NVIDIA_VISIBLE_DEVICES": lambda: {"image": "ubuntu:22.04", "env": {"NVIDIA_VISIBLE_DEVICES": "all"}},
    "CUDA_VISIBLE_DEVICES": lambda: {"template": template_id("cuda-ssh"), "env": {"CUDA_VISIBLE_DEVICES": "0,1"}},
    "JUPYTER_TOKEN": lambda: {"template": template_id("pytorch-jupyter"), "env": {"JUPYTER_TOKEN": "mine"}},
    "SUANLI_ prefix": lambda: {"image": "ubuntu:22.04", "env": {"SUANLI_LEASE": "1"}},
    "env value a number": lambda: {"image": "ubuntu:22.04", "env": {"EPOCHS": 5}},
    "env value a list": lambda: {"image": "ubuntu:22.04", "env": {"EPOCHS": ["5"]}},
    "env value null": lambda: {"image": "ubuntu:22.04", "env": {"EPOCHS": None}},
    "env name with a dash": lambda: {"image": "ubuntu:22.04", "env": {"MY-VAR": "x"}},
    "env not an object": lambda: {"image": "ubuntu:22.04", "env": ["A=B"]},
    "command not a list": lambda: {"image": "ubuntu:22.04", "command": "sleep infinity"},
    "command with a number": lambda: {"image": "ubuntu:22.04", "command": ["sleep", 5]},
    "disk below the template's minimum": lambda: {"template": template_id("pytorch-jupyter"), "disk_gb": 20},
    "unknown ssh key": lambda: {"template": template_id("cuda-ssh"), "ssh_keys": [987654]},
    "unknown access": lambda: {"template": template_id("cuda-ssh"), "access": "root"},
    "unknown field": lambda: {"template": template_id("cuda-ssh"), "privileged": True},
    "not an object": lambda: "pytorch",
}


@pytest.mark.parametrize("case", sorted(BAD_WORKLOADS))
def test_a_bad_workload_is_a_400_on_fields_workload_and_creates_nothing(alice, box, case):
    response = rent(alice, gpu_count=1, workload=BAD_WORKLOADS[case]())
    assert response.status_code == 400, (case, response.content)
    error = response.json()["error"]
    assert error["code"] == "invalid" and "workload" in error["fields"], (case, error)
    assert not Lease.objects.exists() and not Allocation.objects.exists()
    assert not WorkloadSpec.objects.exists() and not Workload.objects.exists()


def test_a_good_workload_of_an_image_takes_its_defaults(alice, box):
    response = rent(alice, gpu_count=1, workload={"image": "ghcr.io/acme/trainer:1.0@sha256:" + "a" * 64})
    assert response.status_code == 201, response.content
    workload = response.json()["workload"]
    assert workload["template"] is None and workload["ports"] == [22] and workload["disk_gb"] == 10
    assert workload["command"] == [] and workload["env"] == {}
