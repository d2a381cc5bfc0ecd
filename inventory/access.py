"""Access to one tenant-owned inventory object by id; fails closed.

Another tenant's object and an unknown id are the same answer (404), so an id reveals nothing.
"""

from __future__ import annotations

from accounts.errors import NotFound
from accounts.models import Organization
from inventory.models import Gpu, Server
from inventory.selectors import servers_for_org


def _pk(value: object) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        raise NotFound("Unknown server.") from None


def access_server(org: Organization | None, server_id: object) -> Server:
    """The organisation's server `server_id`, with its model and cards; NotFound otherwise."""
    server = servers_for_org(org=org).filter(pk=_pk(server_id)).first()
    if server is None:
        raise NotFound("Unknown server.")
    return server


def access_gpu(org: Organization | None, gpu_id: object) -> Gpu:
    """The organisation's GPU `gpu_id`; NotFound otherwise."""
    gpu = Gpu.objects.for_org(org).select_related("server").filter(pk=_pk(gpu_id)).first()
    if gpu is None:
        raise NotFound("Unknown GPU.")
    return gpu
