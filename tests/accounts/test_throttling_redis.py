"""accounts.throttling.hit on Redis: one atomic round trip (INCR, and the expiry on a window's first count) on the
same key the cache's own get and decr read, so `over_limit` and `unhit` see the counts `hit` made."""

from __future__ import annotations

import time

from django.core.cache import cache

from accounts.throttling import hit, over_limit, unhit


def _key(scope: str, ident: str, window: int) -> str:
    now = int(time.time())
    return cache.make_and_validate_key(f"rl:{scope}:{ident}:{now - now % window}")


def test_hit_counts_in_one_key_with_an_expiry_and_the_cache_reads_the_same_count():
    scope, ident = "redis-hit-test", "198.51.100.7"
    assert hit(scope, ident, "3/3600")[0]
    assert hit(scope, ident, "3/3600")[0]
    client = cache._cache.get_client(write=False)
    key = _key(scope, ident, 3600)
    assert int(client.get(key)) == 2
    assert 0 < client.ttl(key) <= 3601  # set on the first count, never left without one
    assert not over_limit(scope, ident, "3/3600", count=False)
    assert hit(scope, ident, "3/3600")[0]  # the third of three
    assert over_limit(scope, ident, "3/3600", count=False)
    assert not hit(scope, ident, "3/3600")[0]  # the fourth is refused
    unhit(scope, ident, "3/3600")
    assert int(client.get(key)) == 3
    assert 0 < client.ttl(key) <= 3601


def test_a_later_count_keeps_the_expiry_the_first_one_set():
    """The expiry is set by the count that creates the key, in the same script; later counts do not push it back."""
    scope, ident = "redis-hit-ttl", "198.51.100.8"
    hit(scope, ident, "10/3600")
    client = cache._cache.get_client(write=False)
    first = client.pttl(_key(scope, ident, 3600))
    time.sleep(0.01)
    hit(scope, ident, "10/3600")
    assert 0 < client.pttl(_key(scope, ident, 3600)) < first
