"""Access to a provider's servers and offers by id; fails closed (accounts/access.py).

Another tenant's object and an unknown id are the same answer (404 "Unknown server."), so an id reveals nothing.
"""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.access import Actor, access_one, visible
from inventory.models import Gpu, Offer, Server
from inventory.selectors import with_details

# Why the storefront reads every provider's offers and servers: a live offer is public.
STOREFRONT = "the storefront: every provider's live offers, their servers and capacity are public"


def access_server(
    actor: Actor, server_id: object, *, for_update: bool = False, cards: QuerySet[Gpu] | None = None
) -> Server:
    """The actor's server `server_id`, with its model and cards (`cards`: see selectors.with_details); NotFound
    otherwise."""
    if for_update:
        return access_one(visible(Server.objects.all(), actor), server_id, "server", for_update=True)
    return access_one(with_details(visible(Server.objects.all(), actor), cards=cards), server_id, "server")


def access_offer(actor: Actor, offer_id: object, *, for_update: bool = False) -> Offer:
    """The actor's own offer `offer_id` (a storefront offer of another provider is not theirs to change)."""
    if for_update:
        return access_one(visible(Offer.objects.all(), actor), offer_id, "offer", for_update=True)
    offers = visible(Offer.objects.all(), actor).select_related("server", "server__gpu_model")
    return access_one(offers, offer_id, "offer")
