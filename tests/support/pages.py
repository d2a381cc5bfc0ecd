"""The main pages (PAGES: who opens which path) and the world they show, and what every page keeps to: the
Content-Security-Policy (inline scripts and styles carry the nonce, no inline handlers) and CSRF tokens in its POST
forms. A plugin (tests/conftest.py loads it): `pages_world` is a fixture for every test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
import time_machine
from django.http import HttpResponse

from billing import invoicing
from billing.models import Invoice
from scheduler import elastic, services
from tests.factories import online_server

MARCH = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 2026-03-01 00:00 in Asia/Shanghai, the platform clock
APRIL = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
# <script type=...> that browsers do not run (data blocks such as json_script's): no nonce needed.
DATA_SCRIPT_TYPES = {"application/json", "application/ld+json", "text/template"}


# --- reading a policy and a page ---------------------------------------------------------------------------


def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


def nonce_of(sources: list[str]) -> str | None:
    nonces = [s.removeprefix("'nonce-").removesuffix("'") for s in sources if s.startswith("'nonce-")]
    assert len(nonces) <= 1, sources
    return nonces[0] if nonces else None


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def tags_of(body: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(body)
    parser.close()
    return parser.tags


def assert_page_keeps_to_the_policy(response: HttpResponse) -> None:
    """The page's inline <script>s and <style>s carry the header's nonce; its other scripts are files; no tag has
    an on*= handler or a style attribute (the policy allows neither)."""
    assert response["Content-Type"].startswith("text/html"), response["Content-Type"]
    policy = directives(response["Content-Security-Policy"])
    script_nonce, style_nonce = nonce_of(policy["script-src"]), nonce_of(policy["style-src"])
    for tag, attrs in tags_of(response.content.decode()):
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"<{tag}> has inline handlers {handlers}"
        assert "style" not in attrs, f"<{tag} style={attrs['style']!r}>"
        if tag == "script" and not attrs.get("src") and (attrs.get("type") or "").lower() not in DATA_SCRIPT_TYPES:
            assert script_nonce and attrs.get("nonce") == script_nonce, f"inline <script {attrs}> without the nonce"
        if tag == "style":
            assert style_nonce and attrs.get("nonce") == style_nonce, f"<style {attrs}> without the nonce"
        if tag == "a":
            assert not (attrs.get("href") or "").lower().startswith("javascript:"), attrs


class _Forms(HTMLParser):
    """Each <form>: its method, action and whether a csrfmiddlewaretoken input is inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self._open: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self._open = {
                "method": (attributes.get("method") or "get").lower(),
                "action": attributes.get("action") or "",
                "token": False,
            }
            self.forms.append(self._open)
        elif tag == "input" and self._open is not None and attributes.get("name") == "csrfmiddlewaretoken":
            self._open["token"] = bool(attributes.get("value"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def forms_of(body: str) -> list[dict]:
    parser = _Forms()
    parser.feed(body)
    return parser.forms


# --- the main pages ----------------------------------------------------------------------------------------


@pytest.fixture
def pages_world(alice, bob, staff, settings):
    """Bob's listed server, alice's running lease and her open March invoice (payable: Stripe is configured), and
    staff who may open the admin. The clock stays on April 1st while the test runs."""
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_suanli"
    staff.user.is_superuser = True
    staff.user.save(update_fields=["is_superuser"])
    with time_machine.travel(MARCH, tick=False) as clock:
        server = online_server(organization=bob.org, name="bob-csp-01")
        clock.move_to(MARCH + timedelta(days=9, hours=10))
        services.lease_create(org=alice.org, plan="card_hour", gpu_count=1, end_at=MARCH + timedelta(days=9, hours=12))
        clock.move_to(APRIL + timedelta(hours=1))
        invoicing.close_period("2026-03")
        lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
        # An elastic lease: its page shows the rule, its schedule and price ceiling, its chart and its forms.
        rule = {"max_gpus": 4, "target_utilization_pct": 70, "schedule": [{"cron": "* 0-8 * * *", "max_gpus": 2}]}
        elastic.scaling_set(lease, {**rule, "max_price_per_hour": Decimal("40")})
        yield {
            "alice": alice,
            "bob": bob,
            "staff": staff,
            "server": server.pk,
            "offer": server.offers.get().pk,
            "lease": lease.pk,
            "invoice": Invoice.objects.get(organization=alice.org).pk,
            "org": alice.org.pk,
        }


PAGES = [
    (None, "/"),
    (None, "/offers/"),
    (None, "/offers/{offer}/"),
    (None, "/accounts/login/"),
    (None, "/accounts/signup/"),
    (None, "/accounts/password/reset/"),
    (None, "/api/docs/"),
    ("alice", "/dashboard/"),
    ("alice", "/offers/{offer}/"),
    ("alice", "/leases/"),
    ("alice", "/leases/{lease}/"),
    ("alice", "/ssh-keys/"),
    ("alice", "/volumes/"),
    ("alice", "/org/log/"),
    ("alice", "/invoices/"),
    ("alice", "/invoices/{invoice}/"),
    ("alice", "/balance/"),
    ("alice", "/broker/"),
    ("alice", "/accounts/email/"),
    ("alice", "/accounts/password/change/"),
    ("alice", "/accounts/2fa/"),
    ("alice", "/accounts/reauthenticate/"),
    ("alice", "/api/docs/"),
    ("bob", "/servers/"),
    ("bob", "/servers/{server}/"),
    ("bob", "/provider/offers/"),
    ("bob", "/provider/offers/new/"),
    ("bob", "/provider/earnings/"),
    ("staff", "/staff/"),
    ("staff", "/staff/fleet/"),
    ("staff", "/staff/catalogue/"),
    ("staff", "/staff/close-period/"),
    ("staff", "/staff/reconciliation/"),
    ("staff", "/admin/"),
    ("staff", "/admin/accounts/organization/"),
    ("staff", "/admin/accounts/organization/{org}/change/"),
    ("staff", "/admin/scheduler/lease/{lease}/change/"),
]
