"""Every admin page a superuser opens renders, and money rows cannot be edited there; the balance ledger and billing
terms are added to through billing's services, never changed or deleted."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from billing.models import BalanceEntry, BillingTerms, FundsNotice, TopUp
from tests.factories import OrganizationFactory, UserFactory


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


@pytest.mark.parametrize(
    "label",
    [
        "billing.invoice",
        "billing.usagerecord",
        "billing.payment",
        "billing.payout",
        "billing.topup",
        "billing.spendlimit",
        "billing.fundsnotice",
    ],
)
def test_money_rows_are_read_only(root, label):
    app, name = label.split(".")
    assert root.get(reverse(f"admin:{app}_{name}_add")).status_code == 403


def test_a_bank_transfer_is_recorded_through_the_service_once_and_the_entry_cannot_be_changed(root):
    org = OrganizationFactory(currency="USD")
    add = reverse("admin:billing_balanceentry_add")
    form = {"organization": org.pk, "amount": "1200.00", "currency": "USD", "reference": "CMB-77", "reason": ""}

    assert root.post(add, form).status_code == 302
    entry = BalanceEntry.objects.get(organization=org)
    assert (entry.kind, entry.amount, entry.key) == ("bank_transfer", Decimal("1200.00"), f"bank:{org.pk}:CMB-77")
    assert entry.created_by is not None and entry.created_by.is_superuser
    assert root.post(add, form).status_code == 302  # the same transfer again: still one entry
    assert BalanceEntry.objects.filter(organization=org).count() == 1

    other_amount = root.post(add, {**form, "amount": "1300.00"})
    assert other_amount.status_code == 200 and "was recorded already" in other_amount.content.decode()
    wrong_currency = root.post(add, {**form, "currency": "CNY", "reference": "CMB-78"})
    assert wrong_currency.status_code == 200 and "billed in USD" in wrong_currency.content.decode()
    no_reason = root.post(add, {**form, "amount": "-5.00", "reference": ""})
    assert no_reason.status_code == 200 and "Say why" in no_reason.content.decode()
    assert BalanceEntry.objects.filter(organization=org).count() == 1

    change = reverse("admin:billing_balanceentry_change", args=[entry.pk])
    assert root.post(change, {**form, "amount": "1.00"}).status_code == 403
    assert root.post(reverse("admin:billing_balanceentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403
    entry.refresh_from_db()
    assert entry.amount == Decimal("1200.00")


def test_billing_terms_are_set_through_the_service_and_kept_as_history(root):
    org = OrganizationFactory(currency="CNY")
    add = reverse("admin:billing_billingterms_add")

    form = {"organization": org.pk, "mode": "postpaid", "credit_limit": "200000", "currency": "CNY"}
    assert root.post(add, form).status_code == 302
    terms = BillingTerms.objects.get(organization=org)
    assert (terms.mode, terms.credit_limit, terms.set_by.is_superuser) == ("postpaid", Decimal("200000"), True)

    wrong = root.post(add, {**form, "currency": "USD"})
    assert wrong.status_code == 200 and "billed in CNY" in wrong.content.decode()
    no_limit = root.post(add, {**form, "mode": "prepaid", "credit_limit": ""})
    assert no_limit.status_code == 200 and BillingTerms.objects.filter(organization=org).count() == 1
    change = reverse("admin:billing_billingterms_change", args=[terms.pk])
    assert root.post(change, {**form, "credit_limit": "1"}).status_code == 403


def test_top_ups_and_notices_show_but_cannot_be_changed(root):
    org = OrganizationFactory()
    top_up = TopUp.objects.create(
        organization=org, amount=Decimal("50.00"), currency="USD", stripe_payment_intent="pi_a"
    )
    notice = FundsNotice.objects.create(
        organization=org, kind="low", available=Decimal("3.00"), currency="USD", created_at=top_up.created_at
    )
    for model, row in (("topup", top_up), ("fundsnotice", notice)):
        assert root.get(reverse(f"admin:billing_{model}_change", args=[row.pk])).status_code == 200  # a view page
        assert root.post(reverse(f"admin:billing_{model}_delete", args=[row.pk]), {"post": "yes"}).status_code == 403
    assert "pi_a" in root.get(reverse("admin:billing_topup_changelist")).content.decode()
