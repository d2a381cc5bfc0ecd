"""Pages read numbers in ASCII digits only, like the API: a full-width price is refused beside its field, not
silently read as 12.50 (Python's Decimal reads any Unicode digit)."""

from __future__ import annotations

import pytest

from inventory.models import Offer
from tests.factories import ServerFactory
from tests.support.offer_forms import offer_form, offer_form_key


@pytest.mark.parametrize(
    ("field", "value"), [("card_hour_price", "１２.５０"), ("card_hour_price", "١٢"), ("min_gpus", "２")]
)
def test_a_price_or_count_in_non_ascii_digits_is_refused_beside_its_field(client, bob, field, value):
    server = ServerFactory(organization=bob.org, gpu_count=4)
    client.force_login(bob.user)
    response = client.post(
        "/provider/offers/new/", offer_form(server, form_key=offer_form_key(client), **{field: value})
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert f'id="id_{field}_errors"' in body and "ASCII digits" in body
    assert not Offer.objects.exists()


def test_ascii_digits_still_list_the_offer(client, bob):
    server = ServerFactory(organization=bob.org, gpu_count=4)
    client.force_login(bob.user)
    response = client.post("/provider/offers/new/", offer_form(server, form_key=offer_form_key(client)))
    assert response.status_code == 302
    assert Offer.objects.get(server=server).card_hour_price == 2.5
