"""Every admin page a superuser opens renders, and money rows cannot be edited there."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from tests.factories import UserFactory


@pytest.fixture
def root(db) -> Client:
    user = UserFactory(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("model", list(admin.site._registry), ids=lambda m: m._meta.label)
def test_every_changelist_renders(root, model):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert root.get(url).status_code == 200


@pytest.mark.parametrize("label", ["billing.invoice", "billing.usagerecord", "billing.payment", "billing.payout"])
def test_money_rows_are_read_only(root, label):
    app, name = label.split(".")
    assert root.get(reverse(f"admin:{app}_{name}_add")).status_code == 403
