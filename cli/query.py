"""The `offers search` query language: words like `gpu=H100_SXM cards>=8 region=cn-east-1 price<2.5
reliability>0.99 interconnect=nvlink plan=card_hour sort=-reliability limit=5`, each one filter of
`GET /api/v1/offers/`.

A real parser, not string splitting: words are tokenised with their place in the query (quotes allowed in values:
`gpu="H100 SXM"`; spaces around an operator are fine: `cards >= 8`), each field takes only the operators the API
can answer exactly, and every error names the offending word and where it is (`QueryError.start/end`).

A strict bound is the next value the API can express: `cards>7` is `min_gpus=8`, `price<2.5` is
`max_price=2.499999` (the API reads prices to 6 decimal places), `reliability>0.99` is `min_reliability=0.9901`
(4 places). So any query this accepts means exactly the filters of the API call it makes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation

from cli.i18n import _

PLANS = ("card_hour", "server_month", "pflops_year")
INTERCONNECTS = ("nvlink", "pcie", "infinity_fabric", "hccs")
CURRENCIES = ("USD", "CNY")
ORDERINGS = ("price", "-price", "gpus_free", "-gpus_free", "reliability", "-reliability", "newest")
SORT_ALIASES = {"cards": "gpus_free", "-cards": "-gpus_free", "gpus": "gpus_free", "-gpus": "-gpus_free"}
PRICE_PLACES = 6
RELIABILITY_PLACES = 4
MAX_CARDS = 16
MAX_LIMIT = 500

# field -> (canonical name, operators it takes)
FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {}
for _names, _ops in [
    (("gpu", "gpu_model", "model", "gpu_name"), ("=",)),
    (("cards", "gpus", "num_gpus", "min_gpus"), (">=", ">")),
    (("region",), ("=",)),
    (("plan",), ("=",)),
    (("interruptible",), ("=",)),
    (("price", "max_price"), ("<=", "<")),
    (("interconnect",), ("=",)),
    (("reliability", "min_reliability"), (">=", ">")),
    (("currency",), ("=",)),
    (("sort", "order", "ordering"), ("=",)),
    (("limit",), ("=",)),
]:
    for _name in _names:
        FIELDS[_name] = (_names[0], _ops)

OPERATOR = re.compile(r"<=|>=|==|!=|=|<|>")
WORD = re.compile(r"(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|==|!=|=|<|>)\s*(?P<value>.*)", re.DOTALL)


class QueryError(ValueError):
    """A query that means nothing to the API: `message` about the text at `start:end` of `query`."""

    def __init__(self, message: str, query: str, start: int, end: int):
        super().__init__(message)
        self.message = message
        self.query = query
        self.start = start
        self.end = max(end, start + 1)

    @property
    def word(self) -> str:
        return self.query[self.start : self.end]

    def pointer(self) -> str:
        """The query and a line of carets under the offending word."""
        return f"  {self.query}\n  {' ' * self.start}{'^' * (self.end - self.start)}"


@dataclass(frozen=True)
class Filters:
    """What a query asks for, in the API's terms (gpu still as written: it is resolved against the catalogue)."""

    gpu: str | None = None
    min_gpus: int | None = None
    region: str | None = None
    plan: str | None = None
    interruptible: bool | None = None
    max_price: Decimal | None = None
    interconnect: str | None = None
    min_reliability: Decimal | None = None
    currency: str | None = None
    ordering: str | None = None
    limit: int | None = None
    spans: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def params(self, gpu_model: int | None = None) -> dict[str, str]:
        """The query string of `GET /api/v1/offers/` (`gpu_model` is the id `gpu` resolved to)."""
        out: dict[str, str] = {}
        if gpu_model is not None:
            out["gpu_model"] = str(gpu_model)
        if self.min_gpus is not None:
            out["min_gpus"] = str(self.min_gpus)
        for name in ("region", "plan", "interconnect", "currency", "ordering"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.interruptible is not None:
            out["interruptible"] = "true" if self.interruptible else "false"
        if self.max_price is not None:
            out["max_price"] = format(self.max_price, "f")
        if self.min_reliability is not None:
            out["min_reliability"] = format(self.min_reliability, "f")
        if self.limit is not None:
            out["page_size"] = str(self.limit)
        return out

    def merged(self, other: Filters) -> Filters:
        """These filters with `other`'s set values on top (command-line options over query words)."""
        changes = {f.name: getattr(other, f.name) for f in fields(other) if f.name != "spans"}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int


def tokenize(query: str) -> list[Token]:
    """Whitespace-separated words with their places; double or single quotes keep spaces inside a value."""
    tokens: list[Token] = []
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        start, quote, text = i, None, []
        while i < n and (quote or not query[i].isspace()):
            ch = query[i]
            if quote:
                if ch == quote:
                    quote = None
                else:
                    text.append(ch)
            elif ch in "\"'":
                quote = ch
            else:
                text.append(ch)
            i += 1
        if quote:
            raise QueryError(_("this quote is never closed"), query, start, n)
        tokens.append(Token("".join(text), start, i))
    return _join_operators(tokens, query)


def _join_operators(tokens: list[Token], query: str) -> list[Token]:
    """`cards >= 8`, `cards>= 8` and `cards >=8` become the one word `cards>=8`."""
    out: list[Token] = []
    for token in tokens:
        if out:
            previous = out[-1]
            bare_name = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", previous.text) is not None
            ends_with_op = re.search(r"(<=|>=|==|!=|=|<|>)$", previous.text) is not None
            if (bare_name and OPERATOR.match(token.text)) or ends_with_op:
                out[-1] = Token(previous.text + token.text, previous.start, token.end)
                continue
        out.append(token)
    return out


def _decimal(text: str, word: Token, query: str, places: int, what: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise QueryError(_("{what} needs a number, not {value!r}").format(what=what, value=text), query, *_at(word))
    if number < 0:
        raise QueryError(_("{what} cannot be negative").format(what=what), query, *_at(word))
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        message = _("{what} takes at most {places} decimal places").format(what=what, places=places)
        raise QueryError(message, query, *_at(word))
    return number


def _at(word: Token) -> tuple[int, int]:
    return word.start, word.end


def _integer(text: str, word: Token, query: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise QueryError(
            _("{what} needs a whole number, not {value!r}").format(what=what, value=text), query, *_at(word)
        )
    return int(text)


def _choice(text: str, choices: tuple[str, ...], word: Token, query: str, what: str) -> str:
    folded = {c.lower(): c for c in choices}
    if text.lower() not in folded:
        message = _("{what} is one of {choices}, not {value!r}").format(
            what=what, choices=", ".join(choices), value=text
        )
        raise QueryError(message, query, *_at(word))
    return folded[text.lower()]


def parse(query: str) -> Filters:
    """The filters `query` means; QueryError (with the offending word's place) when it means nothing exact."""
    values: dict = {}
    spans: dict[str, tuple[int, int]] = {}
    for word in tokenize(query):
        if word.text.lower() == "interruptible":
            name, op, value = "interruptible", "=", "true"
        else:
            match = WORD.fullmatch(word.text)
            if match is None:
                message = _("{word!r} is not a filter: write field=value, e.g. gpu=H100_SXM or cards>=8").format(
                    word=word.text
                )
                raise QueryError(message, query, *_at(word))
            name, op, value = match["field"].lower(), match["op"], match["value"]
        if name not in FIELDS:
            known = ", ".join(sorted({canonical for canonical, _ in FIELDS.values()}))
            message = _("unknown field {name!r} (fields: {known})").format(name=name, known=known)
            raise QueryError(message, query, *_at(word))
        canonical, operators = FIELDS[name]
        op = "=" if op == "==" else op
        if op not in operators:
            message = _("{name} takes {ops}, not {op}").format(name=canonical, ops=" ".join(operators), op=op)
            raise QueryError(message, query, *_at(word))
        if canonical in spans:
            raise QueryError(_("{name} is given twice").format(name=canonical), query, *_at(word))
        if value == "":
            raise QueryError(_("{name} needs a value").format(name=canonical), query, *_at(word))
        spans[canonical] = _at(word)
        values.update(_meaning(canonical, op, value, word, query))
    return Filters(**values, spans=spans)


def _meaning(name: str, op: str, value: str, word: Token, query: str) -> dict:
    if name == "gpu":
        if len(value) > 100:
            raise QueryError(_("gpu is at most 100 characters"), query, *_at(word))
        return {"gpu": value}
    if name == "cards":
        cards = _integer(value, word, query, "cards") + (1 if op == ">" else 0)
        if not 1 <= cards <= MAX_CARDS:
            message = _("cards asks for 1 to {most} free cards").format(most=MAX_CARDS)
            raise QueryError(message, query, *_at(word))
        return {"min_gpus": cards}
    if name == "region":
        if len(value) > 50:
            raise QueryError(_("region is at most 50 characters"), query, *_at(word))
        return {"region": value}
    if name == "plan":
        return {"plan": _choice(value, PLANS, word, query, "plan")}
    if name == "interconnect":
        return {"interconnect": _choice(value, INTERCONNECTS, word, query, "interconnect")}
    if name == "currency":
        return {"currency": _choice(value, CURRENCIES, word, query, "currency")}
    if name == "interruptible":
        truth = _choice(value, ("true", "false", "yes", "no", "1", "0"), word, query, "interruptible")
        return {"interruptible": truth in ("true", "yes", "1")}
    if name == "price":
        price = _decimal(value, word, query, PRICE_PLACES, "price")
        if op == "<":
            price -= Decimal(1).scaleb(-PRICE_PLACES)
            if price < 0:
                raise QueryError(_("no price is below 0"), query, *_at(word))
        if price.adjusted() >= 14:
            raise QueryError(_("price is too large"), query, *_at(word))
        return {"max_price": price}
    if name == "reliability":
        floor = _decimal(value, word, query, RELIABILITY_PLACES, "reliability")
        if op == ">":
            floor += Decimal(1).scaleb(-RELIABILITY_PLACES)
        if floor > 1:
            raise QueryError(_("reliability is a share from 0 to 1"), query, *_at(word))
        return {"min_reliability": floor}
    if name == "sort":
        value = SORT_ALIASES.get(value.lower(), value)
        return {"ordering": _choice(value, ORDERINGS, word, query, "sort")}
    if name == "limit":
        limit = _integer(value, word, query, "limit")
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError(_("limit is 1 to {most}").format(most=MAX_LIMIT), query, *_at(word))
        return {"limit": limit}
    raise AssertionError(name)  # every field of FIELDS is handled above


def resolve_gpu(filters: Filters, catalogue: list[dict], query: str = "") -> int | None:
    """The catalogue id `gpu=` names: an id, a whole name (any case), or words all found in exactly one name
    (`H100_SXM`, `"h100 sxm"`, `4090`; a number is an id where one has it). QueryError pointing at the word when
    none or several match."""
    if filters.gpu is None:
        return None
    wanted = filters.gpu.strip()
    start, end = filters.spans.get("gpu", (0, len(query)))
    if wanted.isdigit() and any(model["id"] == int(wanted) for model in catalogue):
        return int(wanted)  # an id first; a number that is no id may still be a name's word (4090)
    for model in catalogue:
        if model["name"].lower() == wanted.lower():
            return model["id"]
    parts = [p for p in re.split(r"[\s_\-]+", wanted.lower()) if p]
    found = [m for m in catalogue if parts and all(p in re.split(r"[\s_\-]+", m["name"].lower()) for p in parts)]
    if len(found) == 1:
        return found[0]["id"]
    if not found:
        raise QueryError(_("no GPU model is called {name!r}").format(name=wanted), query, start, end)
    names = ", ".join(m["name"] for m in found)
    message = _("{name!r} matches {count} GPU models ({names}): name one").format(
        name=wanted, count=len(found), names=names
    )
    raise QueryError(message, query, start, end)
