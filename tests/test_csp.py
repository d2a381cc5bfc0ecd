"""The Content-Security-Policy (django-csp, config/settings.py): every page carries it, every script a page runs is
a file or carries the response's nonce, no template has an inline event handler or style attribute, and the API
still answers plain JSON.

The browser flows (tests/browser) fail on any CSP violation Chromium reports on the pages they visit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory

from accounts.middleware import DatabaseUnavailableMiddleware
from tests.factories import GpuModelFactory
from tests.support.pages import PAGES, assert_page_keeps_to_the_policy, directives, nonce_of, tags_of

TEMPLATES = Path(settings.BASE_DIR) / "templates"
STATIC = Path(settings.BASE_DIR) / "static"


# --- the policy itself -------------------------------------------------------------------------------------


def test_the_policy_allows_scripts_only_from_our_origin_stripe_and_the_nonce(client, db):
    response = client.get("/")
    assert response.status_code == 200
    policy = directives(response["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    nonce = nonce_of(policy["script-src"])
    assert nonce and policy["script-src"] == [
        "'self'",
        f"'nonce-{nonce}'",
        "https://js.stripe.com",
        "https://*.js.stripe.com",
    ]
    assert policy["style-src"] == ["'self'", f"'nonce-{nonce}'"]
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["connect-src"] == ["'self'", "https://api.stripe.com"]
    assert policy["frame-src"] == ["https://js.stripe.com", "https://*.js.stripe.com", "https://hooks.stripe.com"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    everything = " ".join(s for sources in policy.values() for s in sources)
    assert "'unsafe-inline'" not in everything and "'unsafe-eval'" not in everything


def test_each_response_gets_a_nonce_of_its_own(client, db):
    first = nonce_of(directives(client.get("/")["Content-Security-Policy"])["script-src"])
    second = nonce_of(directives(client.get("/")["Content-Security-Policy"])["script-src"])
    assert first and second and first != second


# --- the pages ---------------------------------------------------------------------------------------------


@pytest.fixture
def world(pages_world):
    """Bob's listed server, alice's lease and open invoice, staff (tests/support/pages.py)."""
    return pages_world


@pytest.mark.parametrize(("who", "path"), PAGES, ids=[f"{who or 'anon'}:{path}" for who, path in PAGES])
def test_every_script_on_the_main_pages_is_a_file_or_carries_the_nonce(world, who, path):
    client = Client()
    if who:
        client.force_login(world[who].user)
    response = client.get(path.format(**world))
    assert response.status_code == 200, response.status_code
    assert_page_keeps_to_the_policy(response)


def test_the_invoice_pay_page_loads_stripe_js_and_its_own_script_from_files(world):
    client = Client()
    client.force_login(world["alice"].user)
    response = client.get(f"/invoices/{world['invoice']}/")
    scripts = [attrs.get("src") for tag, attrs in tags_of(response.content.decode()) if tag == "script"]
    assert "https://js.stripe.com/v3/" in scripts and "/static/js/invoice_pay.js" in scripts


def test_the_api_docs_run_swagger_ui_with_the_nonce(client, db):
    response = client.get("/api/docs/")
    nonce = nonce_of(directives(response["Content-Security-Policy"])["script-src"])
    body = response.content.decode()
    assert f'<script nonce="{nonce}">' in body and "SwaggerUIBundle(" in body


def test_the_api_key_message_and_the_enrolment_command_select_themselves_without_inline_handlers(world):
    client = Client()
    client.force_login(world["bob"].user)
    shown = client.post("/org/keys/", {"name": "ci"}, follow=True)
    registered = client.post("/servers/", _register_data(), follow=True)
    for response, field in ((shown, "input"), (registered, "textarea")):
        assert response.status_code == 200
        assert_page_keeps_to_the_policy(response)
        selecting = [t for t, attrs in tags_of(response.content.decode()) if "data-select-on-focus" in attrs]
        assert selecting == [field]


def _register_data() -> dict:
    return {
        "name": "gpu-node-07",
        "region": "cn-east-1",
        "gpu_model": GpuModelFactory().pk,
        "gpu_count": 8,
        "cpu_cores": 128,
        "ram_gb": 2048,
        "disk_gb": 30000,
    }


def test_error_pages_keep_to_the_policy(world):
    client = Client()
    client.force_login(world["alice"].user)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert_page_keeps_to_the_policy(response)


def test_the_database_unavailable_page_styles_itself_with_the_nonce(db):
    from csp.middleware import CSPMiddleware

    def lost_the_database(request: HttpRequest) -> HttpResponse:
        raise OperationalError("the server closed the connection")

    # The two middlewares as the site stacks them: CSP outside, the 503 of a lost database inside.
    inner = DatabaseUnavailableMiddleware(lost_the_database)

    def view(request: HttpRequest) -> HttpResponse:
        try:
            return inner(request)
        except OperationalError as exc:
            answer = inner.process_exception(request, exc)
            assert answer is not None
            return answer

    response = CSPMiddleware(view)(RequestFactory().get("/offers/"))
    assert response.status_code == 503
    assert_page_keeps_to_the_policy(response)
    assert "<style nonce=" in response.content.decode()


# --- the templates and the scripts we serve ----------------------------------------------------------------


def _template_files() -> list[Path]:
    files = sorted(TEMPLATES.rglob("*.html"))
    assert files
    return files


def _without_comments(text: str) -> str:
    text = re.sub(r"\{%\s*comment\s*%\}.*?\{%\s*endcomment\s*%\}", "", text, flags=re.S)
    return re.sub(r"\{#.*?#\}", "", text, flags=re.S)


def test_no_template_has_an_inline_event_handler_or_style_attribute():
    handler = re.compile(r"<[a-zA-Z][^>]*?\s(on[a-z]+)\s*=", re.S)
    style = re.compile(r"<[a-zA-Z][^>]*?\sstyle\s*=", re.S)
    found = []
    for path in _template_files():
        text = _without_comments(path.read_text())
        found += [f"{path.relative_to(TEMPLATES)}: {m.group(1)}=" for m in handler.finditer(text)]
        found += [f"{path.relative_to(TEMPLATES)}: style=" for m in style.finditer(text)]
    assert found == []


def test_every_inline_script_and_style_in_the_templates_carries_the_nonce():
    opening = re.compile(r"<(script|style)\b([^>]*)>", re.S)
    found = []
    for path in _template_files():
        for m in opening.finditer(_without_comments(path.read_text())):
            tag, attrs = m.groups()
            if tag == "script" and ("src=" in attrs or re.search(r'type="application/(ld\+)?json"', attrs)):
                continue
            if 'nonce="{{ request.csp_nonce }}"' not in attrs:
                found.append(f"{path.relative_to(TEMPLATES)}: <{tag}{attrs}>")
    assert found == []


def test_no_script_we_serve_compiles_code_from_strings_but_htmx_whose_eval_is_off(client, db):
    """'unsafe-eval' is not in the policy: uPlot and our own scripts use no eval; htmx can, for hx-on and js:
    values, and base.html switches that off (and its inline indicator <style>)."""
    compiling = re.compile(r"new Function\b|\beval\(|new AsyncFunction")
    scripts = sorted((STATIC / "js").glob("*.js")) + sorted((STATIC / "vendor").rglob("*.js"))
    assert {path.parent.name for path in scripts} >= {"js", "htmx", "uplot"}  # ours and every vendored script
    offenders = [
        str(path.relative_to(STATIC))
        for path in scripts
        if compiling.search(path.read_text()) and path.parent.name != "htmx"
    ]
    assert offenders == []
    meta = [attrs for tag, attrs in tags_of(client.get("/").content.decode()) if attrs.get("name") == "htmx-config"]
    assert len(meta) == 1 and json.loads(meta[0]["content"] or "") == {
        "includeIndicatorStyles": False,
        "allowEval": False,
    }


def test_no_template_uses_alpine_expressions():
    """One behaviour system: static/js/suanli.js gives the pages' data-* attributes their behaviour. Alpine is gone,
    and no x-*, @event or :attribute expression is left for anything to evaluate."""
    tag = re.compile(r"<[a-zA-Z][^>]*>", re.S)
    attribute = re.compile(r"\s(x-[a-z:.-]+|@[a-z.-]+|:[a-z-]+)(?=[\s=>/])")
    found = []
    for path in _template_files():
        for t in tag.finditer(_without_comments(path.read_text())):
            found += [f"{path.relative_to(TEMPLATES)}: {m.group(1)}" for m in attribute.finditer(t.group(0))]
        if "alpinejs" in path.read_text():
            found.append(f"{path.relative_to(TEMPLATES)}: loads Alpine")
    assert found == []


# --- the API -----------------------------------------------------------------------------------------------


def test_api_answers_stay_plain_json_with_no_nonce_in_their_policy(world):
    alice = world["alice"]
    for path in ("/api/v1/leases/", f"/api/v1/leases/{world['lease']}/", "/api/v1/invoices/"):
        response = alice.api.get(path)
        assert response.status_code == 200, (path, response.status_code)
        assert response["Content-Type"] == "application/json"
        json.loads(response.content)
        assert "nonce-" not in response["Content-Security-Policy"]
    error = alice.api.get("/api/v1/leases/999999/")
    assert error.status_code == 404 and error["Content-Type"] == "application/json"
    assert "error" in json.loads(error.content)
    health = Client().get("/healthz")
    assert health.status_code == 200 and json.loads(health.content) == {"status": "ok"}
