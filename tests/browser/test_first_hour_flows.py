"""Pages that misled a new user (issue 17, "Pages that mislead"), in a real browser and in both languages, with
screenshots kept in var/screenshots/ (SUANLI_SCREENSHOTS; see conftest.py): staff land on their home and reach
every staff page from the header, and a month closed with nothing to bill is listed as closed; a user with two
organisations always sees which one they act for, switches explicitly, and follows a link into the other; a
pending provider's dashboard says what to do; the sign-up page says what waits for verification."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from billing.invoicing import previous_period
from tests.browser.conftest import screenshot
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

LANGUAGES = [("en-GB", "en"), ("zh-CN", "zh-hans")]
WORDS = {
    "en": {
        "staff": "Staff",
        "fleet": "Fleet",
        "catalogue": "GPU catalogue",
        "close": "Close a month",
        "reconciliation": "Reconciliation",
        "month": "Month (YYYY-MM)",
        "close_button": "Close the month",
        "none_closed": "No month has been closed yet.",
    },
    "zh-hans": {
        "staff": "平台管理",
        "fleet": "集群总览",
        "catalogue": "GPU 目录",
        "close": "月度结账",
        "reconciliation": "对账",
        "month": "月份（YYYY-MM）",
        "close_button": "结账",
        "none_closed": "还没有结账的月份。",
    },
}


def _no_page_errors(page) -> None:
    assert page.errors == [], page.errors


# --- staff ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "language"), LANGUAGES)
def test_staff_land_on_their_home_reach_every_staff_page_from_the_header_and_see_the_month_they_closed(
    open_as, locale, language
):
    words = WORDS[language]
    ops = UserFactory(email=f"ops-{language}@example.com", is_staff=True)
    OrganizationFactory(name="Waiting GPU Co", kind="provider", status="pending")
    page = open_as(ops, locale=locale)
    page.goto("/dashboard/")
    page.wait_for_url(re.compile(r"/staff/$"))
    page.get_by_text("Waiting GPU Co").wait_for()
    screenshot(page, f"first-hour-staff-home-{language}")

    menu = page.locator("#staff-menu")
    for name, path in [
        ("fleet", "/staff/fleet/"),
        ("catalogue", "/staff/catalogue/"),
        ("reconciliation", "/staff/reconciliation/"),
        ("close", "/staff/close-period/"),
    ]:
        menu.locator("summary").click()
        menu.get_by_role("link", name=words[name], exact=True).click()
        page.wait_for_url(re.compile(re.escape(path) + "$"))
    page.get_by_text(words["none_closed"]).wait_for()

    label = previous_period(timezone.now()).label
    page.get_by_label(words["month"]).fill(label)
    page.get_by_role("button", name=words["close_button"]).click()
    page.wait_for_url(re.compile(r"/staff/close-period/\?closed="))
    page.locator("#closed-periods").get_by_role("rowheader", name=label).wait_for()
    assert page.get_by_text(words["none_closed"]).count() == 0
    screenshot(page, f"first-hour-staff-closed-{language}")
    _no_page_errors(page)


# --- two organisations ------------------------------------------------------------------------------------

ORG_WORDS = {
    "en": {
        "acting": "Acting for",
        "create": "Create an organisation",
        "name": "Name",
        "create_button": "Create organisation",
        "still": "You still act for Alice Labs",
        "switched": "another of your organisations: you now act for Alice Lab B",
        "now": "You are now acting for Alice Labs.",
    },
    "zh-hans": {
        "acting": "当前组织",
        "create": "创建组织",
        "name": "名称",
        "create_button": "创建组织",
        "still": "您仍以 Alice Labs 的身份操作",
        "switched": "此页面属于您的另一个组织 Alice Lab B",
        "now": "您现在以 Alice Labs 的身份操作。",
    },
}


@pytest.mark.parametrize(("locale", "language"), LANGUAGES)
def test_a_second_organisation_never_switches_silently_and_a_link_into_it_switches_with_a_message(
    open_as, alice, bob, locale, language
):
    from accounts.models import Organization
    from scheduler.services import lease_create
    from tests.factories import MembershipFactory, online_server

    words = ORG_WORDS[language]
    online_server(organization=bob.org, gpus=4, name="bob-orgs-01")
    lease_a = lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    page = open_as(alice.user, locale=locale)
    page.goto(f"/leases/{lease_a.pk}/")
    switcher = page.locator("#org-switch-form")
    switcher.get_by_text(words["acting"]).wait_for()
    assert switcher.locator("select option:checked").inner_text() == "Alice Labs"

    # A new organisation from the dashboard: alice keeps acting for hers, and is told how to switch.
    page.goto("/dashboard/")
    page.locator("#new-org-title").click()
    page.locator("#org-name").fill("Alice Lab B")
    page.get_by_role("button", name=words["create_button"]).click()
    page.get_by_text(words["still"]).wait_for()
    assert page.locator("#org-switch-form select option:checked").inner_text() == "Alice Labs"
    screenshot(page, f"first-hour-second-org-{language}")
    assert page.goto(f"/leases/{lease_a.pk}/").status == 200

    # A link to a lease of the other organisation switches to it and says so.
    lab_b = Organization.objects.get(name="Alice Lab B")
    assert lab_b.memberships.filter(user=alice.user).exists()
    lease_b = lease_create(org=lab_b, plan="card_hour", gpu_count=1)
    page.goto(f"/leases/{lease_b.pk}/")
    page.wait_for_url(re.compile(rf"/leases/{lease_b.pk}/$"))
    page.get_by_text(words["switched"]).wait_for()
    assert page.locator("#org-switch-form select option:checked").inner_text() == "Alice Lab B"
    screenshot(page, f"first-hour-followed-link-{language}")

    # Switching back is explicit: the header's menu, which goes on to the leases of the organisation chosen.
    page.locator("#org-switcher").select_option(label="Alice Labs")
    page.wait_for_url(re.compile(r"/leases/$"))
    page.get_by_text(words["now"]).wait_for()
    page.locator(f'a[href="/leases/{lease_a.pk}/"]').first.wait_for()
    assert page.locator("#org-switch-form select option:checked").inner_text() == "Alice Labs"

    # Another tenant's lease stays a plain 404.
    charlie_org = Organization.objects.create(name="Charlie Corp", kind="customer", currency="USD")
    MembershipFactory(organization=charlie_org)
    foreign = lease_create(org=charlie_org, plan="card_hour", gpu_count=1)
    assert page.goto(f"/leases/{foreign.pk}/").status == 404
    assert page.get_by_text("Charlie Corp").count() == 0
    _no_page_errors(page)


# --- a pending provider -----------------------------------------------------------------------------------

PROVIDER_WORDS = {
    "en": {
        "pending": "Pending approval.",
        "register_link": "Register a server",
        "api": "through the API",
        "name": "Name",
        "region": "Region",
        "model": "GPU model",
        "gpus": "GPUs",
        "cpu": "CPU cores",
        "ram": "RAM (GB)",
        "disk": "Disk (GB)",
        "register_button": "Register server",
        "command": "Agent install command",
    },
    "zh-hans": {
        "pending": "待审核。",
        "register_link": "登记服务器",
        "api": "通过 API",
        "name": "名称",
        "region": "地域",
        "model": "GPU 型号",
        "gpus": "GPU 数",
        "cpu": "CPU 核数",
        "ram": "内存（GB）",
        "disk": "磁盘（GB）",
        "register_button": "登记服务器",
        "command": "代理程序安装命令",
    },
}


@pytest.mark.parametrize(("locale", "language"), LANGUAGES)
def test_a_pending_providers_dashboard_says_what_to_do_and_the_server_page_gives_one_install_line(
    open_as, locale, language
):
    import hashlib

    from inventory.agent_package import current
    from inventory.models import Server
    from tests.conftest import make_persona
    from tests.factories import GpuModelFactory

    words = PROVIDER_WORDS[language]
    GpuModelFactory(name="Pending H100")
    persona = make_persona(
        OrganizationFactory(name="New GPU Co", kind="provider", status="pending"), email=f"new-{language}@example.com"
    )
    page = open_as(persona.user, locale=locale)
    page.goto("/dashboard/")
    banner = page.locator("#pending-banner")
    banner.get_by_text(words["pending"]).wait_for()
    assert page.get_by_text(words["api"]).count() == 0, "the dashboard still sends a provider to the API"
    screenshot(page, f"first-hour-pending-provider-{language}")

    banner.get_by_role("link", name=words["register_link"]).click()
    page.wait_for_url(re.compile(r"/servers/$"))
    form = page.locator('form[action="/servers/"]')
    form.get_by_label(words["name"], exact=True).fill("new-node-01")
    form.get_by_label(words["region"]).fill("cn-north-1")
    form.get_by_label(words["model"]).select_option(label="Pending H100")
    form.get_by_label(words["gpus"], exact=True).fill("8")
    form.get_by_label(words["cpu"]).fill("96")
    form.get_by_label(words["ram"]).fill("1024")
    form.get_by_label(words["disk"], exact=True).fill("8000")
    form.get_by_role("button", name=words["register_button"]).click()
    page.wait_for_url(re.compile(r"/servers/\d+/$"))

    line = page.get_by_label(words["command"]).input_value()
    wheel = current()
    assert "\n" not in line and "suanli-*.whl" not in line
    assert f"/agent/{wheel.filename}#sha256={wheel.sha256}" in line
    assert re.search(r"sudo suanli-agent enroll --url \S+ --token enr_[A-Za-z0-9_-]+", line)
    screenshot(page, f"first-hour-install-line-{language}")
    # The wheel the line names is there, with that checksum.
    url = re.search(r"(http\S+?\.whl)#sha256=", line).group(1)
    answer = page.request.get(url)
    assert answer.ok and hashlib.sha256(answer.body()).hexdigest() == wheel.sha256
    assert Server.objects.get(name="new-node-01").organization.name == "New GPU Co"
    _no_page_errors(page)


# --- signing up --------------------------------------------------------------------------------------------

SIGNUP_WORDS = {"en": {"rule": "Until you follow it"}, "zh-hans": {"rule": "在您打开该链接之前"}}


@pytest.mark.parametrize(("locale", "language"), LANGUAGES)
def test_the_signup_page_says_the_verification_rule_and_the_account_waits_for_the_link(
    open_as, mailoutbox, locale, language
):
    from allauth.account.models import EmailAddress

    from accounts.models import User

    words = SIGNUP_WORDS[language]
    email, password = f"ivy-{language}@example.com", "a very good passphrase"
    page = open_as(None, locale=locale)
    page.goto("/accounts/signup/")
    rule = page.locator("#verification-rule")
    rule.get_by_text(re.compile(words["rule"])).wait_for()
    assert "email_unverified" in rule.inner_text()
    page.locator("input[name=email]").fill(email)
    page.locator("input[name=password1]").fill(password)
    page.locator("input[name=password2]").fill(password)
    screenshot(page, f"first-hour-signup-{language}")
    page.locator("form[action='/accounts/signup/'] button[type=submit]").click()
    page.wait_for_url(re.compile(r"/accounts/confirm-email/$"))
    user = User.objects.get(email=email)
    assert not EmailAddress.objects.get(user=user).verified

    # The same rule in the API: a key of this account answers 403 email_unverified.
    from accounts.services import api_key_create

    token = api_key_create(user=user, name="before verifying")[1]
    answer = page.request.get("/api/v1/orgs/", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 403 and answer.json()["error"]["code"] == "email_unverified"

    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", mailoutbox[-1].body).group(0)
    page.goto(link)
    screenshot(page, f"first-hour-confirm-email-{language}")
    page.locator("form button[type=submit]").first.click()
    page.wait_for_load_state()
    assert EmailAddress.objects.get(user=user).verified
    answer = page.request.get("/api/v1/orgs/", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 200
    _no_page_errors(page)
