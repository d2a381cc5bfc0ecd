"""Draining one card: the services (idempotent, a drained card gets no new leases) and the admin, whose actions call
them; the admin edits neither a card's health nor its drain directly."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from inventory.models import Gpu
from inventory.services import gpu_drain, gpu_undrain
from scheduler.selectors import allocatable_gpus
from tests.factories import UserFactory, online_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def root() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True, email="root@example.com"))
    return client


def test_a_drained_card_gets_no_new_leases_until_it_is_undrained():
    server = online_server(gpus=2)
    card = server.gpus.get(index=0)

    gpu_drain(gpu=card, reason="fan noise")

    assert card.drained and card.drained_reason == "fan noise"
    assert set(allocatable_gpus().filter(server=server).values_list("index", flat=True)) == {1}
    gpu_undrain(gpu=card)
    assert not card.drained and card.drained_reason == ""
    assert set(allocatable_gpus().filter(server=server).values_list("index", flat=True)) == {0, 1}


def test_draining_or_undraining_twice_changes_nothing_the_first_time_did_not():
    card = online_server(gpus=1).gpus.get()
    gpu_drain(gpu=card, reason="first")
    gpu_drain(gpu=card, reason="second")
    assert Gpu.objects.get(pk=card.pk).drained_reason == "first"
    gpu_undrain(gpu=card)
    gpu_undrain(gpu=card)
    assert not Gpu.objects.get(pk=card.pk).drained


def test_staff_drain_and_undrain_cards_with_the_admin_actions(root):
    server = online_server(gpus=2)
    first, second = server.gpus.order_by("index")
    url = reverse("admin:inventory_gpu_changelist")

    response = root.post(url, {"action": "drain", "_selected_action": [first.pk, second.pk]})

    assert response.status_code == 302
    assert (
        list(Gpu.objects.filter(server=server).values_list("drained", "drained_reason"))
        == [(True, "drained by staff (root@example.com)")] * 2
    )
    root.post(url, {"action": "undrain", "_selected_action": [first.pk]})
    assert not Gpu.objects.get(pk=first.pk).drained and Gpu.objects.get(pk=second.pk).drained


def test_the_admin_changes_neither_health_nor_drain_by_hand(root):
    server = online_server(gpus=1)
    card = server.gpus.get()

    for url in (
        reverse("admin:inventory_gpu_change", args=[card.pk]),
        reverse("admin:inventory_server_change", args=[server.pk]),
    ):
        body = root.get(url).content.decode()
        assert 'name="health"' not in body and 'name="drained"' not in body
        assert 'name="gpus-0-health"' not in body and 'name="gpus-0-drained"' not in body

    root.post(reverse("admin:inventory_gpu_change", args=[card.pk]), {"health": "failed", "drained": "on"})
    card.refresh_from_db()
    assert card.health == Gpu.Health.HEALTHY and not card.drained
