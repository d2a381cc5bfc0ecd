from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.core.cache import cache
from django.utils import translation
from rest_framework.test import APIClient

from accounts.models import Membership, Organization, Role, User
from accounts.services import api_key_create
from tests.factories import MembershipFactory, OrganizationFactory, ProviderFactory, UserFactory

# Real containers (a dockerd of the session's own, an SSH image) and a real sshd: fixtures in tests/containers.py.
# The shared fixtures of tests/support: `matrix_world` (routes), `pages_world` (pages), `pg_base` (processes),
# `localstripe` and `fake_stripe` (a fake Stripe on loopback: fake_stripe).
pytest_plugins = [
    "tests.containers",
    "tests.support.routes",
    "tests.support.pages",
    "tests.support.processes",
    "tests.support.fake_stripe",
]


@dataclass
class Persona:
    """A user acting for one organisation, with an API client that carries their token and org."""

    user: User
    org: Organization
    membership: Membership
    token: str
    api: APIClient


def make_persona(org: Organization, role: str = Role.OWNER, email: str | None = None) -> Persona:
    user = UserFactory(**({"email": email} if email else {}))
    membership = MembershipFactory(organization=org, user=user, role=role)
    _, token = api_key_create(user=user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_X_ORGANIZATION=str(org.pk))
    return Persona(user=user, org=org, membership=membership, token=token, api=client)


def register_server(persona: Persona, gpu_model, **fields) -> dict:
    """POST /api/v1/servers/ as `persona` (201 asserted): the server, with its one-time `enrollment_token`."""
    body = {
        "name": "box-1",
        "region": "cn-east-1",
        "gpu_model": gpu_model.pk,
        "gpu_count": 1,
        "cpu_cores": 32,
        "ram_gb": 256,
        "disk_gb": 2000,
        **fields,
    }
    response = persona.api.post("/api/v1/servers/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Each pytest process gets a test database of its own (test_<name>_<pid>), so two runs side by side on one
    PostgreSQL never create or drop each other's, and each pytest-xdist worker (a process of its own) has its own.
    This replaces pytest-django's test_<name>_gw<N> per worker, which two parallel runs would share."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    database.setdefault("TEST", {})["NAME"] = f"test_{database['NAME']}_{os.getpid()}"


# This process's cache keys carry a prefix of their own, so runs side by side on one Redis, and the pytest-xdist
# workers of one run, never see (or clear) each other's rate-limit counters. Set before anything touches the cache.
_KEY_PREFIX = f"test{os.getpid()}"
settings.CACHES["default"]["KEY_PREFIX"] = _KEY_PREFIX

# Organisations pay as they did before balances (postpaid, no credit limit) unless a test gives them terms: the tests
# of money (tests/billing/test_balances*.py and the browser's) set prepaid terms or this setting themselves. Servers a
# test starts as subprocesses inherit it through the environment.
os.environ["DEFAULT_PAYMENT_MODE"] = "postpaid"
settings.SUANLI_DEFAULT_PAYMENT_MODE = "postpaid"

# Passwords hash with MD5 in this process (the tests' own users, sign-ups, password checks): PBKDF2's iterations cost
# about a fifth of the suite's CPU time. What is accepted and refused is the same; servers a test starts as
# subprocesses keep the production hashers.
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _clear_this_runs_cache() -> None:
    client = getattr(getattr(cache, "_cache", None), "get_client", None)
    if client is None:  # the in-memory cache of a run without Redis
        cache.clear()
        return
    redis = client(None, write=True)
    keys = list(redis.scan_iter(f"{_KEY_PREFIX}:*", count=1000))
    if keys:
        redis.delete(*keys)


@pytest.fixture(autouse=True)
def _clear_cache(db):
    # Every test may use the database; rate-limit counters live in Redis and each test starts with none.
    _clear_this_runs_cache()
    yield


@pytest.fixture(autouse=True)
def _default_language() -> None:
    # Each test starts in the default language. A page request activates the language it asks for (LocaleMiddleware)
    # in this thread and nothing switches it back, so without this a test saw the language of the one before it in
    # its worker (a Chinese page, then render_to_string in Chinese).
    translation.deactivate()


@pytest.fixture
def fresh_rate_windows() -> Iterator[None]:
    """The clock moved on to the start of the next hour, and running: rate limits count in windows aligned to the
    clock (accounts/throttling.py, up to an hour long), so a test's requests all fall in one window however slow
    the machine is, instead of being split by a window's end."""
    now = datetime.now(UTC)
    with time_machine.travel(now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1), tick=True):
        yield


@pytest.fixture
def alice(db) -> Persona:
    """A customer organisation's owner."""
    return make_persona(OrganizationFactory(name="Alice Labs"), email="alice@example.com")


@pytest.fixture
def bob(db) -> Persona:
    """An approved provider organisation's owner."""
    return make_persona(ProviderFactory(name="Bob IDC"), email="bob@example.com")


@pytest.fixture
def charlie(db) -> Persona:
    """Another tenant (customer and provider) who must never see alice's or bob's data."""
    return make_persona(OrganizationFactory(name="Charlie Corp", kind="both"), email="charlie@example.com")


@pytest.fixture
def staff(db) -> Persona:
    persona = make_persona(OrganizationFactory(name="Suanli Ops"), email="staff@example.com")
    persona.user.is_staff = True
    persona.user.save(update_fields=["is_staff"])
    return persona


@pytest.fixture
def anon(db) -> APIClient:
    return APIClient()
