"""The server endpoints of API.md (Catalogue and inventory), with each card's `allocated`.

The views are inventory's (inventory/api.py); whether a lease holds a card now is the scheduler's to say, so the
scheduler routes them with its allocations passed down (`cards`), and inventory never reaches up for them.
"""

from __future__ import annotations

from django.db.models import QuerySet

from inventory import api as inventory_api
from inventory.models import Gpu
from scheduler.selectors import cards_with_allocated


class ServerViewSet(inventory_api.ServerViewSet):
    """A provider's servers, each card marked `allocated` while a lease holds it."""

    def cards(self) -> QuerySet[Gpu] | None:
        return cards_with_allocated()
