"""Pages that misled a new user (issue 17, "First hour of a new user"): an ended lease's cards and total, the
admin's plural names, the favicon, the GPU memory unit, and one Chinese word per plan."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from scheduler.services import lease_create, lease_end
from tests.factories import GpuModelFactory, online_server


@pytest.fixture
def offer(bob):
    model = GpuModelFactory(slug="first-hour-h100", name="First hour H100")
    return online_server(organization=bob.org, gpu_model=model, name="bob-first-hour").offers.get()


def _cost_heading(body: str) -> str:
    return re.search(r'<h2 id="cost-title">([^<]*)</h2>', body).group(1)


# --- an ended lease's page --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "total", "so_far", "released", "reserved"),
    [
        ("en", "Total cost", "Cost so far", "released", "reserved, not started"),
        ("zh-hans", "总费用", "目前费用", "已释放", "已预约，尚未开始"),
    ],
)
def test_an_ended_lease_shows_its_cards_released_and_its_total(
    client, alice, offer, language, total, so_far, released, reserved
):
    start = timezone.now() - timedelta(hours=2)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer, now=start)
    client.force_login(alice.user)
    live = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert _cost_heading(live) == so_far

    lease_end(lease=lease)
    body = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert _cost_heading(body) == total
    cards = body[body.index('id="lease-cards"') : body.index("</table>", body.index('id="lease-cards"'))]
    assert cards.count(f"<small>{released}</small>") == 2
    assert reserved not in cards
    # The htmx fragment says the same (it is what a page left open swaps in).
    fragment = client.get(f"/leases/{lease.pk}/live/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert _cost_heading(fragment) == total and fragment.count(f"<small>{released}</small>") == 2


def test_a_reservation_still_reads_reserved_and_a_cancelled_one_says_no_card_was_used(client, alice, offer):
    lease = lease_create(
        org=alice.org, plan="card_hour", gpu_count=1, offer=offer, start_at=timezone.now() + timedelta(days=1)
    )
    client.force_login(alice.user)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert "reserved, not started" in body and _cost_heading(body) == "Cost so far"

    lease_end(lease=lease)
    lease.refresh_from_db()
    assert lease.state == "cancelled"
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert _cost_heading(body) == "Total cost"
    assert "reserved, not started" not in body
    assert "The reservation was cancelled before it started: no card was used." in body
    zh = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "预约在开始前已取消，没有使用任何显卡。" in zh and _cost_heading(zh) == "总费用"


# --- the admin's names ------------------------------------------------------------------------------------


def test_every_admin_model_has_a_proper_plural_and_capitalised_acronyms():
    from django.contrib import admin

    names = {model._meta.label: str(model._meta.verbose_name_plural) for model in admin.site._registry}
    assert names["billing.ProviderTerms"] == "provider terms"
    assert names["billing.BillingTerms"] == "billing terms"
    assert names["billing.BalanceEntry"] == "balance entries"
    assert names["inventory.Gpu"] == "GPUs" and names["accounts.ApiKey"] == "API keys"
    for label, plural in names.items():
        # Django's default plural is the name plus "s": "termss", "entrys", "addresss".
        assert not plural.endswith("ss"), label
        assert not re.search(r"[^aeiou]ys$", plural), label
        assert not re.search(r"\b(gpu|gpus|api|ssh)\b", plural), label


def test_the_admin_index_says_provider_terms(admin_client):
    body = admin_client.get("/admin/").content.decode()
    assert "Provider terms<" in body and "termss" not in body and "Balance entries" in body


# --- the favicon ------------------------------------------------------------------------------------------


def test_pages_name_an_icon_and_favicon_ico_leads_to_it(client):
    from django.contrib.staticfiles import finders

    body = client.get("/").content.decode()
    icon = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', body).group(1)
    assert icon == "/static/img/favicon.svg"
    path = finders.find("img/favicon.svg")
    assert path and open(path, encoding="utf-8").read().startswith("<svg")
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == icon
    assert client.post("/favicon.ico").status_code == 405


# --- GPU memory -------------------------------------------------------------------------------------------


def test_an_l40s_shows_its_catalogue_48_gb_on_the_lease_and_server_pages(client, alice, bob):
    from inventory.models import Gpu, GpuModel

    l40s = GpuModel.objects.get(slug="l40s-48gb")
    assert l40s.memory_gb == 48
    server = online_server(organization=bob.org, gpu_model=l40s, name="bob-l40s", gpus=2)
    # What the driver really reports for an L40S: the memory left after its ECC reservation (45 GiB).
    sample = {"utilization_pct": 50.0, "memory_used_mb": 10240, "memory_total_mb": 46068}
    Gpu.objects.filter(server=server).update(memory_total_mb=46068, last_sample=sample, last_sample_at=timezone.now())
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=server.offers.get())

    client.force_login(alice.user)
    offer_page = client.get(f"/offers/{server.offers.get().pk}/").content.decode()
    assert "48 GB" in offer_page
    lease_page = client.get(f"/leases/{lease.pk}/").content.decode()
    assert "10.0 / 48 GB" in lease_page and "/ 45 GB" not in lease_page
    client.force_login(bob.user)
    server_page = client.get(f"/servers/{server.pk}/").content.decode()
    assert server_page.count("10.0 / 48 GB") == 2 and "/ 45 GB" not in server_page


# --- one Chinese word per plan ----------------------------------------------------------------------------

# The glossary (issue 17: "plan names differ between pages"): each plan has one Chinese name and each billing unit
# one word, whichever English phrase a page starts from.
ZH_PLAN_NAMES = ("按卡时计费", "按台月计费", "按 PFLOPS 年计费")
ZH_OTHER_WORDS = ("按整机月", "整机月", "按每P", "每P每年", "P年", "PFLOPS·年", "台·月")


def test_every_english_name_of_a_plan_has_the_same_chinese_name():
    from django.utils import translation

    from billing.display import INVOICE_UNIT_LABELS, PLAN_LABELS
    from scheduler.models import Plan

    with translation.override("zh-hans"):
        assert [str(PLAN_LABELS[plan]) for plan in Plan] == list(ZH_PLAN_NAMES)
        assert [str(label) for label in Plan.labels] == list(ZH_PLAN_NAMES)
        assert [str(INVOICE_UNIT_LABELS[unit]) for unit in ("card-hour", "server-month", "PFLOPS-year")] == [
            "卡时",
            "台月",
            "PFLOPS 年",
        ]
        assert translation.gettext("Time") == "时间"


def test_the_chinese_pages_that_show_plans_use_only_the_glossarys_words(client, alice, bob, offer):
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=offer)
    zh = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
    client.force_login(alice.user)
    pages = {
        path: client.get(path, **zh).content.decode()
        for path in ("/", "/offers/", f"/offers/{offer.pk}/", "/leases/", f"/leases/{lease.pk}/")
    }
    client.force_login(bob.user)
    pages["/provider/offers/"] = client.get("/provider/offers/", **zh).content.decode()
    for path, body in pages.items():
        for words in ZH_OTHER_WORDS:
            assert words not in body, (path, words)
    for name in ZH_PLAN_NAMES:
        assert name in pages[f"/offers/{offer.pk}/"], name
        assert name in pages["/provider/offers/"], name
    assert "按卡时计费" in pages["/leases/"] and "按卡时计费" in pages[f"/leases/{lease.pk}/"]
    # The charts' legend names its time axis in Chinese too.
    assert '"time": "\\u65f6\\u95f4"' in pages[f"/leases/{lease.pk}/"]
