"""Access to a provider's servers, cards and offers by id; fails closed (accounts/access.py).

Another tenant's object and an unknown id are the same answer (404 "Unknown server."), so an id reveals nothing.
"""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.access import Actor, access_one, visible
from inventory.models import Gpu, Offer, Server
from inventory.selectors import with_details

# Why the storefront reads every provider's offers and servers: a live offer is public.
STOREFRONT = "the storefront: every provider's live offers, their servers and capacity are public"


def servers_of(actor: Actor) -> QuerySet[Server]:
    """The servers of `actor`'s organisation (a list: staff too see their own here), with cards loaded."""
    return with_details(Server.objects.for_org(actor.org)).order_by("id")


def access_server(
    actor: Actor, server_id: object, *, for_update: bool = False, cards: QuerySet[Gpu] | None = None
) -> Server:
    """The actor's server `server_id`, with its model and cards (`cards`: see selectors.with_details); NotFound
    otherwise."""
    if for_update:
        return access_one(visible(Server.objects.all(), actor), server_id, "server", for_update=True)
    return access_one(with_details(visible(Server.objects.all(), actor), cards=cards), server_id, "server")


def access_gpu(actor: Actor, gpu_id: object, *, for_update: bool = False) -> Gpu:
    """The actor's GPU `gpu_id`; NotFound otherwise."""
    return access_one(visible(Gpu.objects.select_related("server"), actor), gpu_id, "GPU", for_update=for_update)


def offers_of(actor: Actor) -> QuerySet[Offer]:
    """The offers `actor`'s organisation made (listed or not), newest first."""
    return _offer_details(Offer.objects.for_org(actor.org))


def _offer_details(queryset: QuerySet[Offer]) -> QuerySet[Offer]:
    return queryset.select_related("server", "server__gpu_model").order_by("-id")


def access_offer(actor: Actor, offer_id: object, *, for_update: bool = False) -> Offer:
    """The actor's own offer `offer_id` (a storefront offer of another provider is not theirs to change)."""
    if for_update:
        return access_one(visible(Offer.objects.all(), actor), offer_id, "offer", for_update=True)
    return access_one(_offer_details(visible(Offer.objects.all(), actor)), offer_id, "offer")
