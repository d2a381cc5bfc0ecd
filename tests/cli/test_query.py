"""The `offers search` query language (cli/query.py), property-tested: any query it accepts means exactly the
filters of the API call it makes (read back by the API's own OfferSearch serializer), and anything it refuses is
refused with the place of the offending word."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cli.query import FIELDS, Filters, QueryError, parse, resolve_gpu
from marketplace.serializers import OfferSearch

CATALOGUE = [
    {"id": 1, "name": "NVIDIA H100 SXM 80GB"},
    {"id": 2, "name": "NVIDIA H100 PCIe 80GB"},
    {"id": 3, "name": "NVIDIA GeForce RTX 4090 24GB"},
    {"id": 4, "name": "AMD Instinct MI300X 192GB"},
]
ALIASES = {canonical: [name for name, (c, _) in FIELDS.items() if c == canonical] for canonical, _ in FIELDS.values()}
TINY = Decimal("0.000001")


def _decimal(places: int, low: str, high: str):
    return st.decimals(min_value=Decimal(low), max_value=Decimal(high), places=places, allow_nan=False)


# Each clause: (field, operator, text of the value, what it must mean in the API's terms).
CLAUSES = {
    "cards": st.one_of(
        st.integers(1, 16).map(lambda n: (">=", str(n), {"min_gpus": n})),
        st.integers(0, 15).map(lambda n: (">", str(n), {"min_gpus": n + 1})),
    ),
    "region": st.from_regex(r"[a-z]{2}-[a-z]{2,8}-[0-9]", fullmatch=True).map(lambda r: ("=", r, {"region": r})),
    "plan": st.sampled_from(["card_hour", "server_month", "pflops_year"]).map(lambda p: ("=", p, {"plan": p})),
    "interconnect": st.sampled_from(["nvlink", "pcie", "infinity_fabric", "hccs"]).map(
        lambda i: ("=", i.upper() if len(i) == 4 else i, {"interconnect": i})
    ),
    "currency": st.sampled_from(["USD", "CNY"]).map(lambda c: ("=", c.lower(), {"currency": c})),
    "interruptible": st.sampled_from([("true", True), ("no", False), ("1", True)]).map(
        lambda t: ("=", t[0], {"interruptible": t[1]})
    ),
    "price": st.one_of(
        _decimal(6, "0", "99999").map(lambda d: ("<=", str(d), {"max_price": d})),
        _decimal(6, "0.000001", "99999").map(lambda d: ("<", str(d), {"max_price": d - TINY})),
    ),
    "reliability": st.one_of(
        _decimal(4, "0", "1").map(lambda d: (">=", str(d), {"min_reliability": d})),
        _decimal(4, "0", "0.9999").map(lambda d: (">", str(d), {"min_reliability": d + Decimal("0.0001")})),
    ),
    "sort": st.sampled_from(
        ["price", "-price", "gpus_free", "-gpus_free", "reliability", "-reliability", "newest"]
    ).map(lambda o: ("=", o, {"ordering": o})),
    "limit": st.integers(1, 500).map(lambda n: ("=", str(n), {"page_size": n})),
    "gpu": st.sampled_from([("h100_sxm", 1), ('"H100 PCIe"', 2), ("4090", 3), ("4", 4), ("mi300x", 4)]).map(
        lambda g: ("=", g[0], {"gpu_model": g[1]})
    ),
}


@st.composite
def queries(draw):
    names = draw(st.lists(st.sampled_from(sorted(CLAUSES)), unique=True, max_size=len(CLAUSES)))
    words, meaning = [], {}
    for name in names:
        op, text, means = draw(CLAUSES[name])
        alias = draw(st.sampled_from(ALIASES[name]))
        gap = draw(st.sampled_from(["", " "]))  # `cards >= 8` is the word `cards>=8`
        if name == "interruptible" and text == "true" and draw(st.booleans()):
            words.append("interruptible")
        else:
            words.append(f"{alias}{gap}{op}{gap}{text}")
        meaning.update(means)
    return draw(st.sampled_from([" ", "  ", "\t"])).join(words), meaning


def _served(params: dict[str, str]) -> dict:
    """What the API itself reads out of the query string the CLI sends."""
    form = OfferSearch(data=dict(__import__("urllib.parse").parse.parse_qsl(urlencode(params))))
    assert form.is_valid(), (params, form.errors)
    return form.validated_data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queries())
def test_every_accepted_query_means_the_filters_the_api_reads_from_the_call(case):
    query, meaning = case
    filters = parse(query)
    params = filters.params(resolve_gpu(filters, CATALOGUE, query))
    served = _served(params)
    for name, value in meaning.items():
        assert served[name] == value, (query, name, served.get(name), value)
    # ... and nothing else: every parameter the CLI sends is one the query asked for.
    assert set(params) == set(meaning), (query, params, meaning)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("gpucardsregionplice=<>!.0123456789 _-\"'xyz")), max_size=40))
def test_any_text_is_accepted_with_a_meaning_the_api_takes_or_refused_at_a_place_in_it(text):
    try:
        filters = parse(text)
    except QueryError as exc:
        assert 0 <= exc.start < exc.end <= max(len(text), exc.start + 1)
        assert exc.pointer().splitlines()[0] == f"  {text}"
        return
    assume(filters.gpu is None)  # names are checked against the catalogue, separately
    _served(filters.params())


@pytest.mark.parametrize(
    ("query", "word", "says"),
    [
        ("gpu=h100_sxm cards=8", "cards=8", "cards takes >= >"),
        ("cards>=8 colour=red", "colour=red", "unknown field 'colour'"),
        ("price<2.5 price<3", "price<3", "price is given twice"),
        ("reliability>1", "reliability>1", "reliability is a share from 0 to 1"),
        ("price<=1.1234567", "price<=1.1234567", "at most 6 decimal places"),
        ("cards>=17", "cards>=17", "1 to 16"),
        ("plan=hourly", "plan=hourly", "plan is one of card_hour"),
        ("region=cn-east-1 nvlink", "nvlink", "is not a filter"),
        ('gpu="H100 SXM', '"H100 SXM', "never closed"),
    ],
)
def test_errors_point_at_the_offending_word(query, word, says):
    with pytest.raises(QueryError) as caught:
        parse(query)
    assert caught.value.word.endswith(word) or caught.value.word == word, caught.value.word
    assert says in caught.value.message


def test_a_gpu_name_must_match_one_model():
    query = "cards>=1 gpu=H100"
    with pytest.raises(QueryError) as caught:
        resolve_gpu(parse(query), CATALOGUE, query)
    assert "matches 2 GPU models" in caught.value.message and caught.value.word == "gpu=H100"
    assert resolve_gpu(parse("gpu=nvidia_h100_sxm_80gb"), CATALOGUE) == 1
    with pytest.raises(QueryError, match="no GPU model"):
        resolve_gpu(parse("gpu=B300"), CATALOGUE, "gpu=B300")


def test_options_override_query_words():
    filters = parse("sort=price limit=3").merged(Filters(ordering="-reliability"))
    assert filters.ordering == "-reliability" and filters.limit == 3
