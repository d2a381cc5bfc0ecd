"""The pure placement rules (no database)."""

from __future__ import annotations

from decimal import Decimal

from scheduler.allocator import (
    ServerCapacity,
    cards_to_release,
    place_cards,
    place_pflops,
    place_servers,
    rated_pflops,
)

H100 = Decimal("989.40")
A100 = Decimal("312.00")


def cap(
    server_id: int, free: int, *, total: int = 8, model: int = 1, tflops: Decimal = H100, least: int = 1
) -> ServerCapacity:
    return ServerCapacity(
        server_id=server_id, gpu_model_id=model, card_tflops=tflops, gpu_count=total, free=free, min_cards=least
    )


def test_a_request_that_fits_on_one_server_goes_to_the_fullest_server_that_fits():
    servers = [cap(1, 8), cap(2, 3), cap(3, 5), cap(4, 2)]
    assert place_cards(servers, 3) == {2: 3}
    assert place_cards(servers, 4) == {3: 4}
    assert place_cards(servers, 8) == {1: 8}


def test_a_larger_request_spans_the_fewest_servers():
    servers = [cap(1, 8), cap(2, 8), cap(3, 2), cap(4, 6)]
    placement = place_cards(servers, 12)
    assert placement is not None and len(placement) == 2 and sum(placement.values()) == 12
    assert placement == {1: 8, 4: 4}  # the second server is the fullest that covers the rest


def test_no_server_gets_fewer_cards_than_its_offers_minimum():
    # 10 cards: 8 on server 1, and the 2 left go to the fullest server that may take 2 (3), not to 2 (at least 4).
    servers = [cap(1, 8), cap(2, 4, least=4), cap(3, 8)]
    assert place_cards(servers, 10) == {1: 8, 3: 2}
    # One fit: server 2 is the fullest with 4 free, but 3 cards are below its minimum.
    assert place_cards(servers, 3) == {1: 3}
    assert place_cards([cap(2, 4, least=4)], 4) == {2: 4}
    # A server with fewer free cards than its minimum takes none; nothing else can finish the request.
    assert place_cards([cap(1, 8), cap(2, 3, least=4)], 10) is None
    assert place_cards([cap(1, 8), cap(2, 4, least=4)], 10) is None
    # The cards of the minimum-4 server taken whole, the rest elsewhere.
    assert place_cards([cap(1, 6, least=6), cap(2, 3)], 9) == {1: 6, 2: 3}


def test_pflops_cards_keep_to_the_servers_minimums():
    # 4 H100s reach 3.9 PFLOPS; on server 1 (5 free, at least 6) none may go.
    servers = [cap(1, 5, least=6), cap(2, 4), cap(3, 2)]
    assert place_pflops(servers, Decimal("3.9"), mix_models=False) == {2: 4}
    assert place_pflops([cap(1, 5, least=6)], Decimal("1"), mix_models=False) is None


def test_cards_that_do_not_exist_are_not_placed():
    assert place_cards([cap(1, 3), cap(2, 2)], 6) is None
    assert place_cards([], 1) is None


def test_whole_servers_need_every_card_free():
    servers = [cap(1, 7), cap(2, 8), cap(3, 8), cap(4, 4, total=4)]
    assert place_servers(servers, 2) == {2: 8, 3: 8}
    assert place_servers(servers, 3) == {2: 8, 3: 8, 4: 4}
    assert place_servers(servers, 4) is None


def test_pflops_are_reached_with_the_least_excess_of_one_model_when_mixing_is_not_allowed():
    servers = [cap(1, 8, model=1, tflops=H100), cap(2, 8, model=2, tflops=A100), cap(3, 8, model=2, tflops=A100)]
    # 3 P: 4 x H100 = 3.9576 (excess 0.9576), 10 x A100 = 3.12 (excess 0.12).
    placement = place_pflops(servers, Decimal("3"), mix_models=False)
    assert placement is not None and sum(placement.values()) == 10
    assert set(placement) == {2, 3}
    assert rated_pflops(servers, placement) == Decimal("3.120")


def test_mixing_models_finds_a_closer_fit_and_never_falls_short():
    servers = [cap(1, 8, model=1, tflops=H100), cap(2, 8, model=2, tflops=A100)]
    mixed = place_pflops(servers, Decimal("5"), mix_models=True)
    single = place_pflops(servers, Decimal("5"), mix_models=False)
    assert mixed is not None and single is not None
    assert rated_pflops(servers, mixed) >= Decimal("5")
    assert rated_pflops(servers, mixed) <= rated_pflops(servers, single)


def test_pflops_beyond_the_capacity_are_not_placed():
    assert place_pflops([cap(1, 8)], Decimal("8"), mix_models=True) is None
    assert place_pflops([cap(1, 8)], Decimal("7.915"), mix_models=False) == {1: 8}


def test_cards_are_given_back_from_the_least_used_servers_without_leaving_one_under_its_minimum():
    held = {1: [11, 12, 13, 14, 15, 16], 2: [21, 22], 3: [31, 32, 33, 34]}
    assert cards_to_release(held, 3, {}) == [21, 22, 34]  # server 2 whole, then the last card of server 3
    # Server 3 rents at least 4: it goes whole or not at all, so the third card comes from server 1.
    assert cards_to_release(held, 3, {3: 4}) == [21, 22, 16]
    assert cards_to_release(held, 6, {3: 4}) == [21, 22, 31, 32, 33, 34]
    assert cards_to_release({3: [31, 32, 33, 34]}, 1, {3: 4}) is None
    assert cards_to_release({3: [31, 32, 33, 34]}, 4, {3: 4}) == [31, 32, 33, 34]
