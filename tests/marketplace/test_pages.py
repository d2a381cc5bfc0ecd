"""Storefront pages: home, dashboard, language, error pages."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string

from accounts.models import Organization
from inventory.models import GpuModel, Server
from tests.factories import MembershipFactory, OrganizationFactory


def _gpu_model() -> GpuModel:
    return GpuModel.objects.create(
        slug="h100-sxm",
        name="NVIDIA H100 SXM",
        vendor="NVIDIA",
        memory_gb=80,
        fp16_tflops="989.4",
        fp32_tflops="66.9",
        tdp_w=700,
        interconnect="nvlink",
    )


def _server(org: Organization, name: str, gpu_model: GpuModel) -> Server:
    return Server.objects.create(
        organization=org,
        name=name,
        region="cn-east-1",
        gpu_model=gpu_model,
        gpu_count=8,
        cpu_cores=128,
        ram_gb=2048,
        disk_gb=30000,
    )


def test_home_renders_for_anonymous_visitors_with_the_three_pricing_models(client, db):
    response = client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    for plan in ("card_hour", "server_month", "pflops_year"):
        assert plan in body
    assert "/accounts/signup/" in body
    assert "/api/docs/" in body
    assert "/static/vendor/htmx/htmx.min.js" in body
    assert "cdn." not in body.replace("cdn.min.js", "")


def test_dashboard_redirects_anonymous_visitors_to_login(client, db):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_dashboard_shows_alices_organisation_and_not_charlies(client, alice, charlie):
    client.force_login(alice.user)
    response = client.get("/dashboard/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Alice Labs" in body
    assert "alice@example.com" in body
    assert "Charlie Corp" not in body
    assert "charlie@example.com" not in body


def test_dashboard_lists_only_the_providers_own_servers(client, bob, charlie):
    gpu_model = _gpu_model()
    _server(bob.org, "bob-node-01", gpu_model)
    _server(charlie.org, "charlie-node-01", gpu_model)
    client.force_login(bob.user)
    body = client.get("/dashboard/").content.decode()
    assert "bob-node-01" in body
    assert "cn-east-1" in body
    assert "NVIDIA H100 SXM" in body
    assert "charlie-node-01" not in body


def test_customer_dashboard_has_no_server_list(client, alice):
    client.force_login(alice.user)
    response = client.get("/dashboard/")
    assert response.context["servers"] is None


def test_a_pending_provider_sees_a_pending_approval_banner(client, db):
    org = OrganizationFactory(name="New IDC", kind="provider", status="pending")
    membership = MembershipFactory(organization=org)
    client.force_login(membership.user)
    body = client.get("/dashboard/").content.decode()
    assert "Pending approval." in body


def test_dashboard_uses_the_organisation_chosen_in_the_switcher(client, alice, charlie):
    second = OrganizationFactory(name="Alice Second Lab")
    MembershipFactory(organization=second, user=alice.user)
    client.force_login(alice.user)
    assert client.get("/dashboard/").context["org"] == alice.org
    client.post("/org/switch/", {"organization": second.pk})
    response = client.get("/dashboard/")
    assert response.context["org"] == second
    assert "Charlie Corp" not in response.content.decode()


def test_staff_dashboard_lists_pending_providers_and_others_do_not(client, staff, alice):
    pending = OrganizationFactory(name="Waiting IDC", kind="provider", status="pending")
    client.force_login(staff.user)
    assert "Waiting IDC" in client.get("/dashboard/").content.decode()
    client.force_login(alice.user)
    body = client.get("/dashboard/").content.decode()
    assert "Waiting IDC" not in body
    assert f"/org/{pending.pk}/approve/" not in body


def test_home_page_speaks_chinese_to_a_zh_hans_browser(client, db):
    response = client.get("/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    body = response.content.decode()
    assert 'lang="zh-hans"' in body
    assert "三种计费方式" in body


def test_the_language_cookie_switches_the_home_page_to_chinese(client, db):
    client.cookies["django_language"] = "zh-hans"
    assert "三种计费方式" in client.get("/").content.decode()


def test_the_language_switcher_sets_the_language(client, db):
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert response.status_code == 302
    assert "三种计费方式" in client.get("/").content.decode()


def test_an_unknown_page_answers_the_404_page_inside_the_layout(client, db):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "Page not found" in body
    assert "/api/docs/" in body


@pytest.mark.parametrize("template", ["400.html", "403.html", "404.html"])
def test_error_pages_render_inside_the_layout(rf, db, template):
    request = rf.get("/")
    from django.contrib.auth.models import AnonymousUser

    request.user = AnonymousUser()
    html = render_to_string(template, {}, request=request)
    assert "site-nav" in html


def test_the_500_page_needs_no_request_and_no_database(django_assert_num_queries, db):
    with django_assert_num_queries(0):
        html = render_to_string("500.html")
    assert "Something went wrong" in html
    assert "{%" not in html
