"""Where a lease's cards go: pure functions over per-server free capacity, no database.

The services measure `ServerCapacity` (cards of a server that are allocatable and free for the whole period),
ask one of the `place_*` functions for a `Placement` (server id -> number of cards), then claim that many cards on
each server under row locks (scheduler/locks.py). Deterministic: ties break on the lower server id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

Placement = dict[int, int]

# Centi-TFLOPS: the catalogue has two decimals of TFLOPS and PFLOPS come with three, so integers are exact.
_CENTI_TFLOPS_PER_PFLOPS = 100_000
# A bound on the mixed-model search; beyond it the best combination found so far is used.
_SEARCH_LIMIT = 200_000


@dataclass(frozen=True)
class ServerCapacity:
    server_id: int
    gpu_model_id: int
    card_tflops: Decimal
    gpu_count: int
    free: int
    # The fewest cards a lease may take on this server (its offer's min_gpus; 1 where the lease already holds some).
    min_cards: int = 1

    @property
    def whole(self) -> bool:
        """Every card of the server is allocatable and free."""
        return self.free == self.gpu_count and self.free > 0


def place_cards(servers: Iterable[ServerCapacity], count: int) -> Placement | None:
    """`count` cards: on one server if any can take them all (the fullest such, so whole servers stay free
    for server_month), else across the fewest servers (the last one again best fit). No server gets fewer cards
    than its `min_cards`. None if they do not fit, or (rarely) when only taking fewer than all free cards of a
    fuller server would leave a remainder that a server's minimum accepts: the search is greedy."""
    if count <= 0:
        return {}
    pool = [s for s in servers if s.free >= max(1, s.min_cards)]
    fits = [s for s in pool if s.free >= count >= s.min_cards]
    if fits:
        best = min(fits, key=lambda s: (s.free, s.server_id))
        return {best.server_id: count}
    pool.sort(key=lambda s: (-s.free, s.server_id))
    placement: Placement = {}
    remaining = count
    for index, server in enumerate(pool):
        if server.free >= remaining:
            # The fewest servers is fixed by now; of those left that cover the rest, take the fullest that may
            # take that few. None may: go on taking whole servers.
            lasts = [s for s in pool[index:] if s.free >= remaining >= s.min_cards]
            if lasts:
                last = min(lasts, key=lambda s: (s.free, s.server_id))
                placement[last.server_id] = remaining
                return placement
            continue
        placement[server.server_id] = server.free
        remaining -= server.free
    return None


def cards_to_release(held: dict[int, list[int]], count: int, minimums: dict[int, int]) -> list[int] | None:
    """Which `count` of a lease's cards to give back (`held`: server id -> card ids, the first to go last): from
    the servers the lease uses least, so what remains stays together, and never leaving a server with fewer
    cards than its minimum (all of them go, or few enough). None if no such choice is found."""
    release: list[int] = []
    remaining = count
    for server_id, cards in sorted(held.items(), key=lambda item: (len(item[1]), item[0])):
        if remaining == 0:
            break
        if remaining >= len(cards):
            release += cards
            remaining -= len(cards)
        elif len(cards) - remaining >= minimums.get(server_id, 1):
            release += cards[len(cards) - remaining :]
            remaining = 0
    return release if remaining == 0 else None


def place_servers(servers: Iterable[ServerCapacity], count: int) -> Placement | None:
    """`count` whole servers (every card healthy and free), lowest ids first. None if there are not enough."""
    whole = sorted((s for s in servers if s.whole), key=lambda s: s.server_id)
    if len(whole) < count:
        return None
    return {s.server_id: s.gpu_count for s in whole[:count]}


def _centi(tflops: Decimal) -> int:
    return int((tflops * 100).to_integral_value())


def pflops_target(pflops: Decimal) -> int:
    return int((pflops * _CENTI_TFLOPS_PER_PFLOPS).to_integral_value())


def rated_pflops(servers: Iterable[ServerCapacity], placement: Placement) -> Decimal:
    """The rated dense FP16 PFLOPS of `placement` (summed card TFLOPS / 1000)."""
    by_id = {s.server_id: s for s in servers}
    total = sum((by_id[sid].card_tflops * n for sid, n in placement.items()), Decimal(0))
    return (total / 1000).quantize(Decimal("0.001"))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def place_pflops(servers: Iterable[ServerCapacity], pflops: Decimal, *, mix_models: bool) -> Placement | None:
    """Cards whose summed rated TFLOPS reach `pflops` with the least excess, then the fewest cards and servers.

    Without `mix_models` all cards are of one model. None if the capacity cannot reach the figure.
    """
    pool = [s for s in servers if s.free >= max(1, s.min_cards)]
    target = pflops_target(pflops)
    models: dict[int, tuple[int, int]] = {}  # model id -> (centi-TFLOPS per card, free cards)
    for s in pool:
        per_card, free = models.get(s.gpu_model_id, (_centi(s.card_tflops), 0))
        models[s.gpu_model_id] = (per_card, free + s.free)
    if mix_models:
        counts = _best_mix(models, target)
    else:
        counts = None
        best_key: tuple[int, int] | None = None
        for model_id, (per_card, free) in sorted(models.items()):
            need = _ceil_div(target, per_card)
            if need <= free:
                key = (need * per_card - target, need)
                if best_key is None or key < best_key:
                    best_key, counts = key, {model_id: need}
    if counts is None:
        return None
    placement: Placement = {}
    for model_id, need in counts.items():
        if need:
            part = place_cards([s for s in pool if s.gpu_model_id == model_id], need)
            if part is None:  # the count fits the model's free cards, but not the servers' minimums
                return None
            placement.update(part)
    return placement


def _best_mix(models: dict[int, tuple[int, int]], target: int) -> dict[int, int] | None:
    """Card counts per model reaching `target` with the least excess, then the fewest cards (bounded search)."""
    order = sorted(models.items(), key=lambda item: (-item[1][0], item[0]))
    best: tuple[tuple[int, int], dict[int, int]] | None = None
    visited = 0

    def search(index: int, remaining: int, cards: int, chosen: dict[int, int]) -> None:
        nonlocal best, visited
        visited += 1
        if remaining <= 0:
            key = (-remaining, cards)
            if best is None or key < best[0]:
                best = (key, dict(chosen))
            return
        if index == len(order) or visited > _SEARCH_LIMIT:
            return
        model_id, (per_card, free) = order[index]
        most = min(free, _ceil_div(remaining, per_card))
        for n in range(most, -1, -1):
            chosen[model_id] = n
            search(index + 1, remaining - n * per_card, cards + n, chosen)
            if best is not None and best[0][0] == 0 and visited > _SEARCH_LIMIT:
                break
        chosen.pop(model_id, None)

    search(0, target, 0, {})
    return best[1] if best else None
