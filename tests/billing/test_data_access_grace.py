"""The grace notices say how to reach the data meanwhile (issue 16): the e-mail when volumes enter grace and the
reminders link the volumes page's data access, and so do the funds banner and the balance page's grace notice, in
English and 简体中文."""

from __future__ import annotations

import re
from datetime import timedelta

from django.core import mail
from django.test import Client

from tests.billing.test_storage_grace import GRACE, broke, check, clock, server  # noqa: F401 (fixtures)


def _page(persona, path: str, language: str = "") -> str:
    client = Client()
    client.force_login(persona.user)
    if language:
        client.cookies["django_language"] = language
    response = client.get(path)
    assert response.status_code == 200
    return response.content.decode()


def test_the_grace_mail_and_reminders_say_how_to_reach_the_data(broke, clock, check):  # noqa: F811
    told = next(m for m in mail.outbox if "wiped unless you top up" in m.subject)
    assert "open a data-access session" in told.body and "/volumes/#data-access" in told.body
    clock.move_to(broke["stopped_at"] + GRACE - timedelta(hours=12))
    check()
    reminder = next(m for m in mail.outbox if "wiped in 1 day" in m.subject)
    assert "/volumes/#data-access" in reminder.body


def test_the_banner_and_the_balance_page_link_data_access_in_both_languages(broke, alice):  # noqa: F811
    for language, link, sentence in [
        ("en", "Reach their data without cards", "open data access</a> (charged per hour)"),
        ("zh-hans", "无卡访问其数据", "开启数据访问</a>（按小时计费）"),
    ]:
        banner = re.search(r'id="funds-banner">(.*?)</p>', _page(alice, "/leases/", language), re.S).group(1)
        assert link in banner and 'href="/volumes/#data-access"' in banner
        notice = re.search(r'id="volumes-grace"[^>]*>(.*?)</p>', _page(alice, "/balance/", language), re.S).group(1)
        assert sentence in notice and 'href="/volumes/#data-access"' in notice
