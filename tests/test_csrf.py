"""CSRF on every form: each POST form carries the token, and a signed-in browser's POST without it is refused
(403) and changes nothing, on every page route of the URL conf and on the session-authenticated API.

The page routes come from the access matrix's walk of the URL resolver, so a new page joins this test by itself.
Routes Django does not check (`csrf_exempt`) are listed in CSRF_EXEMPT with the reason; a new one fails the test.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.support.pages import PAGES, forms_of
from tests.support.routes import ROUTES, owner_of, url_for
from tests.support.tenancy import snapshot

# Routes outside the session's CSRF check, and why. Everything under api/ is DRF: its views are exempt from
# Django's middleware and SessionAuthentication checks the token itself (test_the_api_refuses_a_session_post...).
CSRF_EXEMPT = {
    "stripe-webhook": "called by Stripe, authenticated by the Stripe-Signature header",
}
PAGE_ROUTES = sorted(key for key, (route, _) in ROUTES.items() if not route.startswith("api/"))


@pytest.mark.parametrize(("who", "path"), PAGES, ids=[f"{who or 'anon'}:{path}" for who, path in PAGES])
def test_every_post_form_on_the_main_pages_carries_the_csrf_token(pages_world, who, path):
    client = Client()
    if who:
        client.force_login(pages_world[who].user)
    response = client.get(path.format(**pages_world))
    assert response.status_code == 200
    missing = [f for f in forms_of(response.content.decode()) if f["method"] == "post" and not f["token"]]
    assert not missing, f"POST forms without a CSRF token on {path}: {missing}"


def test_the_form_parser_sees_a_form_without_a_token():
    forms = forms_of('<form method="POST" action="/x/"><input name="a"></form><form><input></form>')
    assert forms == [
        {"method": "post", "action": "/x/", "token": False},
        {"method": "get", "action": "", "token": False},
    ]


def _browser(user) -> Client:
    """A signed-in browser holding a CSRF cookie (from a page it loaded), as an attacker's cross-site POST would."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get(reverse("marketplace:dashboard"))
    assert "csrftoken" in client.cookies
    return client


@pytest.mark.parametrize("key", PAGE_ROUTES)
def test_a_page_post_without_the_csrf_token_is_refused_and_changes_nothing(matrix_world, key):
    route, pattern = ROUTES[key]
    if getattr(pattern.callback, "csrf_exempt", False):
        assert key in CSRF_EXEMPT, f"{key} is csrf_exempt: add it to CSRF_EXEMPT with the reason, or protect it"
        return
    assert key not in CSRF_EXEMPT, f"{key} is listed in CSRF_EXEMPT but is protected"
    victims = matrix_world["victims"]
    url = url_for(key, route, pattern, victims)
    # The owner of the data, or staff for staff pages: the one whose session a forged POST would ride on.
    user = matrix_world["staff"].user if "staff" in key else getattr(victims, owner_of(key)).user
    before = snapshot()
    response = _browser(user).post(url, {"confirm": "1", "gpu_count": "1", "period": "2026-01"})
    assert response.status_code == 403, (url, response.status_code)
    assert snapshot() == before


def test_the_same_post_with_the_token_goes_through(matrix_world):
    """The refusal above is the CSRF check, not something else about the request: with the token it is served."""
    victims = matrix_world["victims"]
    client = _browser(victims.alice.user)
    token = client.cookies["csrftoken"].value
    switch = reverse("org:switch")
    response = client.post(switch, {"organization": victims.alice.org.pk, "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert client.post(switch, {"organization": victims.alice.org.pk}).status_code == 403


def test_sign_in_and_sign_up_refuse_a_post_without_the_token(db):
    client = Client(enforce_csrf_checks=True)
    for name in ("account_login", "account_signup", "account_reset_password"):
        client.get(reverse(name))
        response = client.post(reverse(name), {"login": "a@example.com", "email": "a@example.com", "password": "x"})
        assert response.status_code == 403, name


def test_the_api_refuses_a_session_post_without_the_token_but_not_an_api_key(matrix_world):
    """DRF's SessionAuthentication checks CSRF for a signed-in browser; an API key (no cookie) needs none."""
    alice = matrix_world["victims"].alice
    browser = _browser(alice.user)
    before = snapshot()
    response = browser.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]
    assert snapshot() == before
    token = browser.cookies["csrftoken"].value
    with_token = browser.post(
        "/api/v1/orgs/", {"name": "Forged Org"}, content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert with_token.status_code != 403
    by_key = alice.api.get("/api/v1/leases/")
    assert by_key.status_code == 200
