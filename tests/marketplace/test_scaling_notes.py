"""The beat job's notes (scheduler.elastic.NOTE_SENTENCES): every code the job writes has a sentence, and every note
renders from that one table in English (the API's `status_message` and the English page) and in Chinese (the page,
with no English left), a service's refusal through accounts.error_text."""

from __future__ import annotations

import ast
import html
import inspect
import re

import pytest
from django.utils import timezone, translation

from scheduler import elastic
from scheduler.models import ScalingRule
from scheduler.services import lease_create
from tests.factories import GpuModelFactory, online_server

REFUSAL = "Your organisation has an overdue invoice; pay it to start new leases."
REFUSAL_ZH = "你的组织有逾期账单，付清后才能新建租约。"


def _codes_written() -> set[str]:
    """The codes scheduler/elastic.py passes to note(...) (a constant, or the name MESSAGE)."""
    codes = set()
    for node in ast.walk(ast.parse(inspect.getsource(elastic))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "note":
            first = node.args[0]
            if isinstance(first, ast.Constant):
                codes.add(first.value)
            else:
                assert isinstance(first, ast.Name) and first.id == "MESSAGE", ast.dump(first)
                codes.add(elastic.MESSAGE)
    return codes


def test_every_code_the_job_writes_has_a_sentence_and_every_sentence_is_written():
    written = _codes_written()
    assert written - {elastic.MESSAGE} == set(elastic.NOTE_SENTENCES)
    assert elastic.MESSAGE in written and elastic.MESSAGE not in elastic.NOTE_SENTENCES
    with pytest.raises(ValueError):
        elastic.note("no_such_note")


def _all_notes() -> list[elastic.Note]:
    """Every code once, each placeholder a distinct figure, then a service's refusal."""
    notes, figure = [], 11
    for code, sentence in elastic.NOTE_SENTENCES.items():
        with translation.override("en"):
            names = re.findall(r"%\((\w+)\)s", str(sentence))
        params = {}
        for name in names:
            params[name] = figure
            figure += 1
        notes.append(elastic.note(code, **params))
    notes.append(elastic.note(elastic.MESSAGE, text=REFUSAL))
    return notes


def _sentences(notes: list[elastic.Note], language: str) -> list[str]:
    with translation.override(language):
        return [str(elastic.NOTE_SENTENCES[n["code"]]) % n["params"] for n in notes if n["code"] != elastic.MESSAGE]


def test_every_note_has_its_own_chinese_sentence_with_its_figures():
    notes = _all_notes()
    english, chinese = _sentences(notes, "en"), _sentences(notes, "zh-hans")
    for note, en, zh in zip(notes, english, chinese, strict=False):
        assert zh != en, note["code"]
        assert not re.search(r"[A-Za-z]", zh), (note["code"], zh)
        for value in note["params"].values():
            assert str(value) in en and str(value) in zh, (note["code"], value)
        assert "%" not in en.replace(f"{note['params'].get('u')}%", "").replace(f"{note['params'].get('t')}%", "")


def _message_on_page(body: str) -> str:
    match = re.search(r'<p id="scaling-message"><small>(.*?)</small></p>', body, re.DOTALL)
    assert match, "no message on the page"
    return html.unescape(match.group(1))


@pytest.mark.django_db
def test_every_note_renders_on_the_page_in_english_and_chinese_and_in_english_in_the_api(client, alice, bob):
    model = GpuModelFactory(slug="notes-h100", name="Notes H100")
    offer = online_server(organization=bob.org, gpu_model=model, name="bob-notes-box").offers.get()
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer)
    elastic.scaling_set(lease, {"min_gpus": 1, "max_gpus": 8, "target_utilization_pct": 70})
    notes = _all_notes()
    ScalingRule.objects.filter(lease=lease).update(
        status=ScalingRule.Status.AT_BOUND, desired_gpus=2, evaluated_at=timezone.now(), status_notes=notes
    )
    english_text = " ".join([*_sentences(notes, "en"), REFUSAL])
    chinese_text = " ".join([*_sentences(notes, "zh-hans"), REFUSAL_ZH])

    client.force_login(alice.user)
    english = client.get(f"/leases/{lease.pk}/").content.decode()
    assert _message_on_page(english) == english_text
    chinese = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    shown = _message_on_page(chinese)
    assert shown == chinese_text
    assert not re.search(r"[A-Za-z]", shown), shown
    # The status label and its sentence say the same thing in Chinese.
    status = chinese[chinese.index('id="scaling-status"') : chinese.index('id="scaling-message"')]
    assert status.count("已达卡数上下限") == 2, status

    # The API says it in English whatever the request's language.
    api = alice.api.get(f"/api/v1/leases/{lease.pk}/scaling/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert api.status_code == 200 and api.json()["status_message"] == english_text
    assert "status_notes" not in api.json()


def test_an_unknown_code_says_nothing_rather_than_failing():
    notes = [{"code": "from_a_newer_version", "params": {}}, elastic.note("no_queue_depth")]
    assert elastic.notes_message(notes) == "No queue depth reported yet."
