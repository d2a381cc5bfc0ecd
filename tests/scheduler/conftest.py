from __future__ import annotations

import pytest

from inventory.models import GpuModel
from tests.factories import GpuModelFactory, online_server


@pytest.fixture
def h100(db) -> GpuModel:
    return GpuModelFactory(slug="sched-h100", name="Sched H100", fp16_tflops="989.40")


@pytest.fixture
def a100(db) -> GpuModel:
    return GpuModelFactory(slug="sched-a100", name="Sched A100", fp16_tflops="312.00")


@pytest.fixture
def rack(bob, h100):
    """Bob's three online 8-card H100 servers."""
    return [online_server(organization=bob.org, gpu_model=h100, name=f"rack-{i}") for i in range(3)]
