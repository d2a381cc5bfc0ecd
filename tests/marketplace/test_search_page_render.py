"""The offer search page's lighter rendering (issue 18) writes what Django's templates wrote: the filter form's
widgets in Python (marketplace.widget_html), the GPU catalogue read once a form (forms.CatalogueChoiceField), the
result cards' fixed texts translated once a page. Each is compared with what it replaced."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django import forms
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import translation

from inventory.models import GpuModel
from inventory.selectors import gpu_models_listed
from marketplace import widget_html
from marketplace.forms import OfferSearchForm, describe_errors
from tests.factories import GpuModelFactory, online_server

FILLED = {
    "min_gpus": "2",
    "region": "cn-east-1",
    "plan": "card_hour",
    "interruptible": "on",
    "min_price": "1.5",
    "max_price": "9",
    "interconnect": "nvlink",
    "min_reliability": "99.5",
    "currency": "CNY",
    "ordering": "-gpus_free",
}
WRONG = {"gpu_model": "x<&>\"'", "min_gpus": "０", "max_price": "1", "min_price": "5", "min_reliability": "200"}


def _template_markup(bound: forms.BoundField) -> str:
    """The field as Django's own widget templates render it."""
    widget = bound.field.widget
    attrs = bound.build_widget_attrs({})  # then the id, as BoundField.as_widget orders them
    if bound.auto_id and "id" not in widget.attrs:
        attrs.setdefault("id", bound.auto_id)
    context = widget.get_context(bound.html_name, bound.value(), attrs)
    return forms.Widget._render(widget, widget.template_name, context, bound.form.renderer)


@pytest.fixture
def odd_model(db):
    """A catalogue entry whose name needs escaping."""
    return GpuModelFactory(slug="odd-model", name='Odd <"GPU"> & Co', interconnect="pcie")


@pytest.mark.parametrize("language", ["en", "zh-hans"])
@pytest.mark.parametrize("data", [None, {}, FILLED, WRONG], ids=["unbound", "empty", "filled", "wrong"])
def test_every_filter_renders_as_the_widget_templates_render_it(db, odd_model, language, data):
    online_server(region="cn-east-1")
    if data is FILLED:
        data = {**FILLED, "gpu_model": str(odd_model.pk)}
    with translation.override(language):
        form = OfferSearchForm(data)
        form.is_valid()
        describe_errors(form)
        for name in form.fields:
            assert isinstance(form.fields[name].widget, widget_html.PythonMarkup), name
            assert str(form[name]) == _template_markup(form[name]), name
    if data is FILLED:
        assert "&lt;&quot;GPU&quot;&gt; &amp; Co</option>" in str(form["gpu_model"])
        assert f'<option value="{odd_model.pk}" selected>' in str(form["gpu_model"])


def test_a_widget_without_a_python_writer_falls_back_to_its_template(db):
    class Picked(widget_html.PythonMarkup, forms.RadioSelect):
        pass

    field = forms.ChoiceField(choices=[("a", "A"), ("b", "<B>")], widget=Picked)
    form = type("F", (forms.Form,), {"pick": field})({"pick": "b"})
    assert str(form["pick"]) == _template_markup(form["pick"])


@pytest.mark.parametrize(
    "value", ["", "{pk}", " {pk} ", "{pk}.0", "abc", "-3", "99999999999999999999", "{inactive}", "\x00", "１"]
)
def test_the_catalogue_choice_accepts_and_refuses_what_a_model_choice_field_would(db, value):
    inactive = GpuModelFactory(slug="retired-model", active=False)
    value = value.format(pk=gpu_models_listed().first().pk, inactive=inactive.pk)
    ours = OfferSearchForm({"gpu_model": value})
    theirs = forms.ModelChoiceField(queryset=gpu_models_listed(), required=False)
    try:
        expected = theirs.clean(value)
    except forms.ValidationError as error:
        assert not ours.is_valid()
        assert ours.errors["gpu_model"] == error.messages
    else:
        assert ours.is_valid(), ours.errors
        assert ours.cleaned_data["gpu_model"] == expected


def test_the_catalogue_is_read_once_for_the_form_and_its_select(db):
    form = OfferSearchForm({"gpu_model": str(gpu_models_listed().first().pk)})
    with CaptureQueriesContext(connection) as queries:
        assert form.is_valid()
        markup = str(form["gpu_model"])
        str(form["gpu_model"])
    catalogue = [q for q in queries.captured_queries if GpuModel._meta.db_table in q["sql"]]
    assert len(catalogue) == 1, [q["sql"] for q in queries.captured_queries]
    assert markup.count("<option") == gpu_models_listed().count() + 1


def test_a_model_added_to_the_catalogue_is_offered_at_once(client, db):
    assert "Brand New GPU" not in client.get("/offers/").content.decode()
    GpuModelFactory(slug="brand-new", name="Brand New GPU")
    assert ">Brand New GPU</option>" in client.get("/offers/").content.decode()


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_each_card_carries_its_link_title_and_translated_labels(client, bob, language):
    model = GpuModelFactory(slug="card-model", name="Card <Model>")
    server = online_server(
        organization=bob.org,
        gpu_model=model,
        region="cn-east-1",
        offer={"min_gpus": 2, "card_hour_price": Decimal("2.50")},
    )
    offer = server.offers.get()
    body = client.get("/offers/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    card = re.search(r'<article class="offer-card" id="offer-(\d+)".*?</article>', body, re.S)
    assert card and card.group(1) == str(offer.pk)
    html = card.group(0)
    assert html.count(f'href="/offers/{offer.pk}/"') == 2
    assert f'<h3 id="offer-{offer.pk}-title"><a href="/offers/{offer.pk}/">8 × Card &lt;Model&gt;</a></h3>' in html
    assert '<span class="visually-hidden"> 8 × Card &lt;Model&gt;, cn-east-1</span>' in html
    with translation.override(language):
        for text in ("Free now", "Reliability", "Memory per card", "Minimum", "Plan", "Price", "Interruptible"):
            assert f">{translation.gettext(text)}<" in html, text
        assert f">{translation.gettext('View and rent')}<span" in html
    if language == "zh-hans":
        assert "Free now" not in html and "View and rent" not in html
