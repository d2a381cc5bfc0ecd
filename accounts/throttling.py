"""Rate limits counted atomically in the cache (Redis INCR in production).

DRF's own cache throttle reads, appends and writes back a list, so concurrent requests can all pass;
here each request is one `incr` on a key per client and window, so at most `limit` pass a window.
When the cache server cannot be reached the request is let through (and logged): a Redis outage must not take
logins and agent reports down with it; the limits are back as soon as Redis is.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from accounts.clientip import client_key


def parse_rate(rate: str) -> tuple[int, int]:
    count, seconds = rate.split("/")
    return int(count), int(seconds)


logger = logging.getLogger(__name__)


def hit(scope: str, ident: str, rate: str) -> tuple[bool, int]:
    """Count one request; (allowed, seconds until the window resets)."""
    limit, window = parse_rate(rate)
    now = int(time.time())
    start = now - now % window
    key = f"rl:{scope}:{ident}:{start}"
    try:
        backend = caches[DEFAULT_CACHE_ALIAS]
        if isinstance(backend, RedisCache):
            count = _redis_hit(backend, key, window + 1)
        else:
            cache.add(key, 0, timeout=window + 1)
            try:
                count = cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=window + 1)
                count = 1
    except (ConnectionError, OSError, RedisError) as exc:
        logger.warning("rate limit %s not counted: the cache is unavailable (%s)", scope, exc)
        return True, 0
    return count <= limit, start + window - now


# INCR, and on a window's first count its expiry: one round trip, atomic (the cache's add + exists + incr were three,
# and a key that expired between them was counted again without an expiry).
_HIT_SCRIPT = "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n"


def _redis_hit(backend: RedisCache, key: str, ttl: int) -> int:
    """`hit`'s count on Redis, on the key the cache's get/incr/decr read (Django stores an int as a plain integer)."""
    full_key = backend.make_and_validate_key(key)
    client = backend._cache.get_client(full_key, write=True)
    return int(client.eval(_HIT_SCRIPT, 1, full_key, ttl))


def unhit(scope: str, ident: str, rate: str) -> None:
    """Take back one count of this window: an attempt that `hit` counted and that turned out not to count (a right
    password). Across a window's end there is nothing of it left to take back."""
    _, window = parse_rate(rate)
    now = int(time.time())
    try:
        cache.decr(f"rl:{scope}:{ident}:{now - now % window}")
    except ValueError:
        pass
    except (ConnectionError, OSError, RedisError) as exc:
        logger.warning("rate limit %s not counted back: the cache is unavailable (%s)", scope, exc)


def over_limit(scope: str, ident: str, rate: str, *, count: bool = True) -> bool:
    """Whether `ident` is over `rate` in this window: counting one more (`count`), or only reading."""
    if count:
        return not hit(scope, ident, rate)[0]
    limit, window = parse_rate(rate)
    now = int(time.time())
    try:
        return int(cache.get(f"rl:{scope}:{ident}:{now - now % window}") or 0) >= limit
    except (ConnectionError, OSError, RedisError):
        return False


class AtomicScopedThrottle(BaseThrottle):
    """A per-client limit on one scope of SUANLI_RATE_LIMITS; the client is accounts.clientip's, never DRF's
    reading of X-Forwarded-For (which anyone can write)."""

    scope = ""

    def get_ident(self, request: Request) -> str:
        return client_key(request)

    def allow_request(self, request: Request, view: object) -> bool:
        rate = settings.SUANLI_RATE_LIMITS[self.scope]
        allowed, self._wait = hit(self.scope, self.get_ident(request), rate)
        return allowed

    def wait(self) -> float | None:
        return float(getattr(self, "_wait", 1))


class AuthThrottle(AtomicScopedThrottle):
    scope = "auth"


class RegisterThrottle(AtomicScopedThrottle):
    scope = "register"
