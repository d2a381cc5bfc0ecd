"""Invoice pages and PDF: what a customer sees, in English and Chinese; tenancy; who gets the Pay button."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from django.utils import translation
from pypdf import PdfReader

from accounts.models import Role
from billing import invoicing
from billing.models import Invoice
from billing.views_invoices import money_text
from scheduler import services
from tests.factories import GpuHealthEventFactory, InvoiceFactory, MembershipFactory, UserFactory, online_server

MARCH = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 2026-03-01 00:00 in Asia/Shanghai, the platform clock
APRIL = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
PRICES = {"card_hour_price": Decimal("1250.0000"), "server_month_price": Decimal("12000.0000")}
NBSP = "\u00a0"


@pytest.fixture
def clock():
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


@pytest.fixture
def invoice(clock, alice, bob, settings) -> Invoice:
    """Alice's March invoice: 2 cards for 5 hours on the 10th and 1 card for 2 hours on the 20th, at 1,250.00 a
    card-hour: 12,500.00 + 2,500.00 = 15,000.00, and 6 % tax, 900.00: 15,900.00 (closed on April 1st)."""
    settings.SUANLI_TAX_RATE = Decimal("0.06")
    settings.STRIPE_PUBLISHABLE_KEY = ""
    online_server(organization=bob.org, offer=PRICES, name="bob-node")
    for day, cards, hours in ((9, 2, 5), (19, 1, 2)):
        clock.move_to(MARCH + timedelta(days=day, hours=10))
        services.lease_create(
            org=alice.org, plan="card_hour", gpu_count=cards, end_at=MARCH + timedelta(days=day, hours=10 + hours)
        )
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    return Invoice.objects.get(organization=alice.org)


def _page(client: Client, path: str, **headers) -> str:
    response = client.get(path, **headers)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def _visible(body: str) -> str:
    """The page's text without tags, runs of ASCII white space made one space (no-break spaces are kept)."""
    return re.sub(r"[ \t\r\n]+", " ", re.sub(r"<[^>]+>", " ", body))


def _pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


# --- who may see what -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/invoices/", "/invoices/1/", "/invoices/1/pdf/"])
def test_anonymous_visitors_are_sent_to_the_login_page(client, db, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_another_tenants_invoice_is_not_found_on_the_page_or_as_pdf(client, invoice, charlie):
    client.force_login(charlie.user)
    assert client.get(f"/invoices/{invoice.pk}/").status_code == 404
    assert client.get(f"/invoices/{invoice.pk}/pdf/").status_code == 404
    assert invoice.number not in _page(client, "/invoices/")


def test_a_draft_is_never_shown(client, alice, invoice):
    draft = InvoiceFactory(organization=alice.org, period="2026-04", currency="USD")
    client.force_login(alice.user)
    assert client.get(f"/invoices/{draft.pk}/").status_code == 404
    assert client.get(f"/invoices/{draft.pk}/pdf/").status_code == 404
    body = _page(client, "/invoices/")
    assert f"/invoices/{draft.pk}/" not in body
    assert f"/invoices/{invoice.pk}/" in body


def test_customers_get_an_invoices_link_and_providers_do_not(client, alice, bob):
    client.force_login(alice.user)
    assert 'href="/invoices/"' in _page(client, "/dashboard/")
    client.force_login(bob.user)
    assert 'href="/invoices/"' not in _page(client, "/dashboard/")


# --- what the customer sees -----------------------------------------------------------------------------


def test_the_list_shows_number_period_state_total_and_due_date(client, alice, invoice):
    client.force_login(alice.user)
    body = _page(client, "/invoices/")
    assert "INV-000001" in body
    assert "March 2026" in body
    assert "Open" in body
    assert f"USD{NBSP}15,900.00" in body
    # Issued on April 1st (platform time), due 15 days later.
    assert "April 16, 2026" in body
    assert "Overdue" not in body
    assert f'href="/invoices/{invoice.pk}/pdf/"' in body


def test_an_invoice_past_its_due_date_is_marked_overdue(client, clock, alice, invoice):
    clock.move_to(APRIL + timedelta(days=20))
    client.force_login(alice.user)
    assert "Overdue" in _page(client, "/invoices/")
    assert "Overdue" in _page(client, f"/invoices/{invoice.pk}/")


def test_the_invoice_page_shows_the_parties_dates_lines_and_totals(client, alice, invoice):
    leases = list(invoice.lines.order_by("id").values_list("lease_id", flat=True))
    client.force_login(alice.user)
    body = _page(client, f"/invoices/{invoice.pk}/")
    assert "Suanli" in body and "Alice Labs" in body
    assert "INV-000001" in body and "March 2026" in body
    assert "April 1, 2026" in body and "April 16, 2026" in body
    text = _visible(body)
    assert f"GPU card-hours, lease {leases[0]} 10 card-hour USD{NBSP}1,250.00 USD{NBSP}12,500.00" in text
    assert f"GPU card-hours, lease {leases[1]} 2 card-hour USD{NBSP}1,250.00 USD{NBSP}2,500.00" in text
    assert f"Subtotal USD{NBSP}15,000.00" in text
    assert f"Tax (6%) USD{NBSP}900.00" in text
    assert f"Total USD{NBSP}15,900.00" in text
    assert f'href="/invoices/{invoice.pk}/pdf/"' in body and "Download PDF" in body


def test_credit_notes_and_the_paid_state_are_shown(client, alice, invoice):
    invoicing.credit_note_issue(invoice=invoice, amount=Decimal("100"), reason="Goodwill for a slow start")
    Invoice.objects.filter(pk=invoice.pk).update(state="paid", paid_at=APRIL + timedelta(days=3))
    client.force_login(alice.user)
    body = _page(client, f"/invoices/{invoice.pk}/")
    assert "CN-000001" in body and "Goodwill for a slow start" in body and f"-USD{NBSP}100.00" in body
    assert "Paid on" in body and "April 4, 2026" in body
    assert "Pay this invoice" not in body


def test_a_line_with_an_sla_credit_shows_it(client, clock, alice, bob, settings):
    settings.STRIPE_PUBLISHABLE_KEY = ""
    online_server(organization=bob.org, offer=PRICES, gpus=1, name="solo")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1, end_at=MARCH + timedelta(hours=10))
    gpu = lease.allocations.get().gpu
    GpuHealthEventFactory(gpu=gpu, at=MARCH, from_health="healthy", to_health="failed")
    GpuHealthEventFactory(gpu=gpu, at=MARCH + timedelta(hours=1), from_health="failed", to_health="healthy")
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get(organization=alice.org)
    client.force_login(alice.user)
    text = _visible(_page(client, f"/invoices/{invoice.pk}/"))
    assert (
        f"GPU card-hours, lease {lease.pk} 9 card-hour USD{NBSP}1,250.00 USD{NBSP}11,250.00 -USD{NBSP}1,125.00" in text
    )
    assert f"SLA credits -USD{NBSP}1,125.00" in text
    assert f"Total USD{NBSP}10,125.00" in text


def test_the_page_speaks_chinese_to_a_zh_hans_browser(client, alice, invoice):
    client.force_login(alice.user)
    listing = _page(client, "/invoices/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "账单" in listing and "2026年3月" in listing and "待支付" in listing
    # Chinese number format: no thousands separator.
    assert f"USD{NBSP}15900.00" in listing
    detail = _page(client, f"/invoices/{invoice.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    for label in ("卖方", "买方", "账单周期", "单价", "小计", "合计", "下载 PDF", "GPU 卡时", "卡时", "2026年4月16日"):
        assert label in detail, label
    assert "Subtotal" not in detail and "Unit price" not in detail


def test_money_is_grouped_by_the_locale_and_unit_prices_keep_their_places():
    with translation.override("en"):
        assert money_text(Decimal("1234567.5"), "USD") == f"USD{NBSP}1,234,567.50"
        assert money_text(Decimal("0.000694"), "CNY") == f"CNY{NBSP}0.000694"  # a per-second rate
        assert money_text(Decimal("-2.25"), "USD") == f"-USD{NBSP}2.25"
    with translation.override("zh-hans"):
        assert money_text(Decimal("1234567.5"), "CNY") == f"CNY{NBSP}1234567.50"


# --- the PDF ----------------------------------------------------------------------------------------------


def test_the_pdf_is_an_a4_document_with_the_invoices_content(client, alice, invoice):
    client.force_login(alice.user)
    response = client.get(f"/invoices/{invoice.pk}/pdf/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == 'inline; filename="INV-000001.pdf"'
    assert response.content.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(response.content))
    width, height = (float(v) for v in reader.pages[0].mediabox.upper_right)
    assert (round(width), round(height)) == (595, 842)  # A4 in points
    text = _pdf_text(response.content)
    for expected in ("INV-000001", "Suanli", "Alice Labs", "March 2026", "April 16, 2026", "15,900.00", "900.00"):
        assert expected in text, expected
    assert f"GPU card-hours, lease {invoice.lines.first().lease_id}" in text and "12,500.00" in text


def test_a_chinese_organisation_name_is_written_in_the_pdf(client, alice, invoice):
    alice.org.name = "阿里斯算力实验室"
    alice.org.save(update_fields=["name"])
    client.force_login(alice.user)
    response = client.get(f"/invoices/{invoice.pk}/pdf/")
    assert response.status_code == 200 and response.content.startswith(b"%PDF")
    assert b"STSong-Light" in response.content
    assert "阿里斯算力实验室" in _pdf_text(response.content)


def test_the_pdf_speaks_chinese_with_a_chinese_browser(client, alice, invoice):
    client.force_login(alice.user)
    response = client.get(f"/invoices/{invoice.pk}/pdf/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    text = _pdf_text(response.content)
    assert "INV-000001" in text and "合计" in text and "2026年3月" in text


# --- paying ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "sees_button"),
    [(Role.OWNER, True), (Role.ADMIN, True), (Role.BILLING, True), (Role.MEMBER, False)],
)
def test_the_pay_button_is_for_the_roles_that_may_pay(client, alice, invoice, settings, role, sees_button):
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_suanli"
    user = UserFactory()
    MembershipFactory(organization=alice.org, user=user, role=role)
    client.force_login(user)
    body = _page(client, f"/invoices/{invoice.pk}/")
    assert ('id="invoice-pay-start"' in body) is sees_button
    assert ('<script defer src="https://js.stripe.com/v3/"></script>' in body) is sees_button


def test_no_pay_button_on_a_paid_or_void_invoice(client, alice, invoice, settings):
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_suanli"
    client.force_login(alice.user)
    for state in ("paid", "void"):
        Invoice.objects.filter(pk=invoice.pk).update(state=state)
        body = _page(client, f"/invoices/{invoice.pk}/")
        assert "invoice-pay" not in body and "js.stripe.com" not in body


def test_the_pay_button_posts_to_the_pay_api_with_a_key_per_page_load(client, alice, invoice, settings):
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_suanli"
    client.force_login(alice.user)
    first = _page(client, f"/invoices/{invoice.pk}/")
    second = _page(client, f"/invoices/{invoice.pk}/")
    assert f'data-pay-url="/api/v1/invoices/{invoice.pk}/pay/"' in first
    assert f'data-org="{alice.org.pk}"' in first
    keys = [re.search(r'data-idempotency-key="([^"]+)"', body)[1] for body in (first, second)]
    assert keys[0] != keys[1]
    # The page's script is a static file (the Content-Security-Policy runs no inline script without a nonce).
    assert '<script defer src="/static/js/invoice_pay.js"></script>' in first
    script = (settings.BASE_DIR / "static" / "js" / "invoice_pay.js").read_text()
    assert '"Idempotency-Key": box.dataset.idempotencyKey' in script
    assert '"X-CSRFToken": box.dataset.csrf' in script


def test_without_stripe_keys_the_page_says_online_payment_is_not_configured(client, alice, invoice, settings):
    settings.STRIPE_PUBLISHABLE_KEY = ""
    client.force_login(alice.user)
    body = _page(client, f"/invoices/{invoice.pk}/")
    assert "Online payment is not configured on this site" in body
    assert "js.stripe.com" not in body and 'id="invoice-pay-start"' not in body


def test_the_pay_api_accepts_the_pages_session_request(alice, invoice, settings):
    """The request the page's script makes (session cookie, CSRF token, X-Organization, Idempotency-Key) reaches
    the pay API: here, with no Stripe secret key, its 503 `payments_not_configured`, which the script shows."""
    settings.STRIPE_SECRET_KEY = ""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice.user)
    page = browser.get(f"/invoices/{invoice.pk}/")
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page.content.decode())[1]
    headers = {"HTTP_X_CSRFTOKEN": token, "HTTP_X_ORGANIZATION": str(alice.org.pk), "HTTP_IDEMPOTENCY_KEY": "k-1"}
    url = f"/api/v1/invoices/{invoice.pk}/pay/"
    assert browser.post(url, {}, content_type="application/json").status_code == 403  # no CSRF token: refused
    response = browser.post(url, {}, content_type="application/json", **headers)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "payments_not_configured"
