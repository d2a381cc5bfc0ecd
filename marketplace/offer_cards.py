"""The offer search page's result cards written in Python (issue 18): what templates/marketplace/offers/
_offer_card.html renders for each `marketplace.views_offers.ResultCard`, byte for byte, without the template engine's
per-variable lookups (twelve cards of some sixty variables, tags and translations each were most of the page's
rendering). The template stays the reference: tests/marketplace/test_search_page_rows.py renders both and compares
them. Values are shown as a template shows them: localised, escaped unless already safe, the fixed texts translated
once a page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.template.defaultfilters import floatformat
from django.utils.formats import localize
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext, ngettext

if TYPE_CHECKING:
    from marketplace.views_offers import ResultCard

# The cards' fixed texts (the names _offer_card.html reads them by, set by _results.html in the template).
LABELS = {
    "label_free_now": "Free now",
    "label_reliability": "Reliability",
    "label_memory": "Memory per card",
    "label_minimum": "Minimum",
    "label_plan": "Plan",
    "label_price": "Price",
    "label_interruptible": "Interruptible",
    "label_view_and_rent": "View and rent",
}


def _shown(value: object) -> str:
    """A value as `{{ value }}` shows it (django.template.base.render_value_in_context, autoescaping)."""
    return conditional_escape(localize(value))


class CardWriter:
    """Writes the cards of one page in the active language; the fixed texts are translated once."""

    def __init__(self) -> None:
        self.labels = {name: _shown(gettext(text)) for name, text in LABELS.items()}
        self.free_of = gettext("%(free)s of %(total)s cards")

    def card(self, view: ResultCard) -> str:
        label = self.labels
        pk, url, title, region = _shown(view.pk), _shown(view.detail_url), _shown(view.title), _shown(view.region)
        free = self.free_of % {"free": _shown(view.gpus_free), "total": _shown(view.gpus_total)}
        reliability = "—" if view.reliability_pct is None else f"{floatformat(view.reliability_pct, '1')} %"
        minimum = ""
        if view.min_gpus > 1:
            cards = ngettext("%(counter)s card", "%(counter)s cards", view.min_gpus) % {
                "counter": _shown(view.min_gpus)
            }
            minimum = f"<div><dt>{label['label_minimum']}</dt><dd>{cards}</dd></div>"
        prices = "".join(
            f'\n            <tr data-plan="{_shown(price.plan)}">\n'
            f'              <th scope="row">{_shown(price.label)}<br><small>{_shown(price.unit)}</small></th>\n'
            f'              <td><span class="price">{_shown(price.price)}</span>'
            + (f'<br><small class="price-original">{_shown(price.original)}</small>' if price.original else "")
            + "</td>\n"
            f"              <td>{_shown(price.interruptible) if price.interruptible else '—'}</td>\n"
            "            </tr>\n          "
            for price in view.prices
        )
        no_rate = ""
        if view.no_rate:
            said = gettext("No exchange rate is configured: prices in %(currency)s.") % {
                "currency": _shown(view.currency)
            }
            no_rate = f"<p><small>{said}</small></p>"
        return (
            "\n<li>\n"
            f'  <article class="offer-card" id="offer-{pk}" aria-labelledby="offer-{pk}-title">\n'
            "    <header>\n"
            f'      <h3 id="offer-{pk}-title"><a href="{url}">{title}</a></h3>\n'
            f'      <p class="offer-meta">{_shown(view.provider)} · {region} · {_shown(view.interconnect)}</p>\n'
            "    </header>\n"
            '    <dl class="offer-facts">\n'
            f'      <div><dt>{label["label_free_now"]}</dt><dd class="gpus-free">{free}</dd></div>\n'
            f'      <div><dt>{label["label_reliability"]}</dt><dd class="reliability">{reliability}</dd></div>\n'
            f"      <div><dt>{label['label_memory']}</dt><dd>{_shown(view.memory_gb)} GB</dd></div>\n"
            f"      {minimum}\n"
            "    </dl>\n"
            '    <div class="table-wrap">\n'
            '      <table class="offer-prices">\n'
            "        <thead><tr>\n"
            f'          <th scope="col">{label["label_plan"]}</th>\n'
            f'          <th scope="col">{label["label_price"]}</th>\n'
            f'          <th scope="col">{label["label_interruptible"]}</th>\n'
            "        </tr></thead>\n"
            f"        <tbody>\n          {prices}\n        </tbody>\n"
            "      </table>\n"
            "    </div>\n"
            f"    {no_rate}\n"
            f'    <footer><a href="{url}" role="button" class="outline">{label["label_view_and_rent"]}'
            f'<span class="visually-hidden"> {title}, {region}</span></a></footer>\n'
            "  </article>\n"
            "</li>\n"
        )

    def cards(self, views: list[ResultCard]) -> SafeString:
        return mark_safe("".join(self.card(view) for view in views))  # noqa: S308 - every value escaped above
