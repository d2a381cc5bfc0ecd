"""Registering does not tell anyone which e-mails have accounts: a taken e-mail gets the same answer as a new
one, and the address's owner gets a mail instead (allauth's "prevent enumeration") (issue 13)."""

from __future__ import annotations

import pytest
from django.core import mail

from accounts.models import ApiKey, Organization, User
from accounts.tasks import send_registration_attempt_mail

PASSWORD = "a very good passphrase"


@pytest.fixture
def eager_tasks(monkeypatch):
    # The queued task runs at once, here, instead of in a worker (no broker involved).
    monkeypatch.setattr(send_registration_attempt_mail, "delay", send_registration_attempt_mail.run)


def _register(client, email: str, kind: str = "provider"):
    body = {"email": email, "password": PASSWORD, "organization": {"name": "Probe Co", "kind": kind}}
    return client.post("/api/v1/auth/register/", body, format="json")


def _shape(value):
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    return type(value).__name__


def test_a_taken_email_gets_the_same_answer_as_a_new_one_and_creates_nothing(
    anon, alice, eager_tasks, django_capture_on_commit_callbacks
):
    users, orgs, keys = User.objects.count(), Organization.objects.count(), ApiKey.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        taken = _register(anon, " Alice@Example.com")
    assert (User.objects.count(), Organization.objects.count(), ApiKey.objects.count()) == (users, orgs, keys)

    new = _register(anon, "fresh@example.com")
    assert taken.status_code == new.status_code == 201
    taken_body, new_body = taken.json(), new.json()
    assert _shape(taken_body) == _shape(new_body)
    assert taken_body["user"]["email"] == "alice@example.com"
    assert taken_body["token"].startswith("sl_") and len(taken_body["token"]) == len(new_body["token"])
    for field in ("name", "kind", "status", "currency", "approved_at", "role"):
        assert taken_body["organization"][field] == new_body["organization"][field], field
    # Ids from the same sequences: they neither repeat an existing one nor stand out.
    assert taken_body["user"]["id"] != alice.user.pk
    assert 0 < taken_body["user"]["id"] < new_body["user"]["id"]
    assert 0 < taken_body["organization"]["id"] < new_body["organization"]["id"]


def test_the_owner_of_a_taken_email_is_told_someone_tried_to_register_with_it(
    anon, alice, eager_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert _register(anon, "ALICE@example.com").status_code == 201
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@example.com"]
    assert "already exists" in message.subject.lower() or "already exists" in message.body.lower()
    assert "/accounts/password/reset/" in message.body
    assert PASSWORD not in message.body


def test_a_bad_password_is_refused_the_same_way_for_taken_and_new_emails(anon, alice):
    answers = []
    for email in ("alice@example.com", "fresh@example.com"):
        body = {"email": email, "password": "123", "organization": {"name": "X", "kind": "customer"}}
        response = anon.post("/api/v1/auth/register/", body, format="json")
        answers.append((response.status_code, response.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400
