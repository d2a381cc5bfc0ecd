"""Registering an enrolling agent's cards: NVML names must match the server's model; all or nothing."""

from __future__ import annotations

import pytest
from django.utils import timezone

from accounts.errors import InvalidInput
from inventory.models import Gpu, GpuModel, Server
from inventory.services import gpus_register, server_enroll
from tests.factories import GpuFactory, ServerFactory


@pytest.fixture
def server(db) -> Server:
    return ServerFactory(gpu_model=GpuModel.objects.get(slug="h100-sxm5-80gb"), gpu_count=8)


def cards(n: int = 8, name: str = "NVIDIA H100 80GB HBM3", prefix: str = "GPU-h") -> list[dict]:
    return [
        {"index": i, "uuid": f"{prefix}{i:07d}-0000-4000-8000-000000000000", "name": name, "memory_total_mb": 81559}
        for i in range(n)
    ]


def test_registering_matching_cards_creates_one_row_per_card(server):
    gpus = gpus_register(server=server, gpus=cards())
    assert [g.index for g in gpus] == list(range(8))
    assert Gpu.objects.filter(server=server).count() == 8
    assert all(g.health == "healthy" and g.memory_total_mb == 81559 for g in gpus)


def test_nvml_names_match_regardless_of_case_and_spacing(server):
    gpus_register(server=server, gpus=cards(2, name="  nvidia h100 80gb   HBM3 "))
    assert Gpu.objects.filter(server=server).count() == 2


def test_a_card_of_another_model_is_refused_and_nothing_is_created(server):
    mixed = cards(8)
    mixed[5]["name"] = "NVIDIA H20"
    with pytest.raises(InvalidInput) as refused:
        gpus_register(server=server, gpus=mixed)
    assert refused.value.code == "gpu_model_mismatch"
    assert "5" in refused.value.fields["gpus"]
    assert Gpu.objects.count() == 0


def test_a_consumer_card_cannot_enrol_as_a_data_centre_model(db):
    a100 = ServerFactory(gpu_model=GpuModel.objects.get(slug="a100-sxm4-80gb"))
    with pytest.raises(InvalidInput):
        gpus_register(server=a100, gpus=cards(1, name="NVIDIA GeForce RTX 4090"))
    gpus_register(server=a100, gpus=cards(1, name="NVIDIA A100-SXM4-80GB"))


def test_more_cards_than_the_server_was_registered_with_are_refused(server):
    with pytest.raises(InvalidInput) as refused:
        gpus_register(server=server, gpus=cards(9))
    assert refused.value.code == "gpu_count_mismatch"
    assert Gpu.objects.count() == 0


@pytest.mark.parametrize(
    "broken",
    [
        [],
        [{"index": 0, "uuid": "GPU-x", "name": "NVIDIA H100 80GB HBM3"}] * 2,
        [{"index": -1, "uuid": "GPU-x", "name": "NVIDIA H100 80GB HBM3"}],
        [{"index": True, "uuid": "GPU-x", "name": "NVIDIA H100 80GB HBM3"}],
        [{"index": 0, "uuid": "", "name": "NVIDIA H100 80GB HBM3"}],
    ],
)
def test_malformed_card_lists_are_refused(server, broken):
    with pytest.raises(InvalidInput):
        gpus_register(server=server, gpus=broken)
    assert Gpu.objects.count() == 0


def test_a_card_already_in_another_server_is_refused(server):
    other = ServerFactory(gpu_model=server.gpu_model)
    GpuFactory(server=other, index=0, uuid=cards(1)[0]["uuid"])
    with pytest.raises(InvalidInput) as refused:
        gpus_register(server=server, gpus=cards(1))
    assert refused.value.code == "gpu_uuid_taken"
    assert Gpu.objects.filter(server=server).count() == 0


def test_re_registering_the_same_cards_updates_them_in_place_even_renumbered(server):
    first = {g.uuid: g.pk for g in gpus_register(server=server, gpus=cards(4))}
    renumbered = cards(4)
    for card in renumbered:
        card["index"] = 3 - card["index"]
    again = gpus_register(server=server, gpus=renumbered)
    assert {g.uuid: g.pk for g in again} == first
    assert {g.uuid: g.index for g in again} == {c["uuid"]: c["index"] for c in renumbered}


def test_re_registering_with_different_cards_is_refused(server):
    gpus_register(server=server, gpus=cards(2))
    with pytest.raises(InvalidInput) as refused:
        gpus_register(server=server, gpus=cards(2, prefix="GPU-z"))
    assert refused.value.code == "gpus_changed"
    assert set(Gpu.objects.values_list("uuid", flat=True)) == {c["uuid"] for c in cards(2)}


def test_enrolling_spends_the_token_and_brings_the_server_online(server):
    server.enrollment_token_hash = "ab" * 32
    server.enrollment_expires_at = timezone.now()
    server.save()
    enrolled = server_enroll(server=server, hostname="gpu-node-01", gpus=cards())
    assert enrolled.status == Server.Status.ONLINE
    assert (enrolled.enrollment_token_hash, enrolled.enrollment_expires_at) == ("", None)
    assert enrolled.hostname == "gpu-node-01"
    assert enrolled.enrolled_at is not None and enrolled.last_seen_at == enrolled.enrolled_at
    assert enrolled.gpus.count() == 8


def test_a_refused_enrolment_leaves_the_server_waiting(server):
    server.enrollment_token_hash = "ab" * 32
    server.save()
    with pytest.raises(InvalidInput):
        server_enroll(server=server, hostname="gpu-node-01", gpus=cards(1, name="NVIDIA L40S"))
    server.refresh_from_db()
    assert server.status == Server.Status.PENDING_ENROLLMENT
    assert server.enrollment_token_hash == "ab" * 32
