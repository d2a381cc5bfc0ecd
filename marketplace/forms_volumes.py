"""Forms of the volumes page: a new volume (name, server, size) and the confirmation of a delete.

The rules (names, sizes, which servers lend storage and how much is left) are workloads.volumes'; the form
collects the fields, offers only servers whose live offer prices storage, and puts the service's field errors
beside them, in the page's language.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.error_text import place_errors
from accounts.errors import InvalidInput
from accounts.models import Organization
from billing.display import money
from scheduler.pricing import rate_between
from workloads.volumes import PRICE_PLACES, StorageServer, storage_servers


def server_label(choice: StorageServer, currency: str) -> str:
    """How a storage server reads in the choice: its number, cards and region, the price per GB-month in the
    organisation's currency (as the volume will be charged) and the GB still free."""
    server, offer = choice.server, choice.offer
    rate = rate_between(offer.currency, currency)
    if rate is None:
        price = money(offer.storage_gb_month_price, offer.currency)
    else:
        price = money(max((offer.storage_gb_month_price * rate).quantize(PRICE_PLACES), PRICE_PLACES), currency)
    return _("Server %(id)s · %(gpu)s · %(region)s · %(price)s per GB-month · %(free)s GB free") % {
        "id": server.pk,
        "gpu": server.gpu_model.name,
        "region": server.region,
        "price": price,
        "free": choice.free_gb,
    }


class VolumeForm(forms.Form):
    name = forms.CharField(
        label=gettext_lazy("Name"),
        max_length=63,
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "placeholder": "datasets", "pattern": "[a-z0-9-]+"}
        ),
    )
    server = forms.TypedChoiceField(label=gettext_lazy("Server"), coerce=int)
    size_gb = forms.IntegerField(label=gettext_lazy("Size (GB)"), min_value=1, max_value=100_000, initial=10)

    def __init__(self, *args: Any, org: Organization | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = {choice.server.pk: choice for choice in storage_servers()}
        currency = org.currency if org is not None else ""
        self.fields["server"].choices = [
            (pk, server_label(choice, currency or choice.offer.currency)) for pk, choice in self.choices.items()
        ]

    def chosen_server(self) -> Any:
        return self.choices[self.cleaned_data["server"]].server

    def add_service_errors(self, exc: InvalidInput) -> None:
        place_errors(self, exc.fields, exc.message, names={"name": "name", "server": "server", "size_gb": "size_gb"})
