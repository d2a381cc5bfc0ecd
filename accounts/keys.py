"""API key material: `sl_<prefix>_<secret>`; only sha256(secret) is kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LEN = 12


def new_key() -> tuple[str, str, str]:
    """(plaintext token, prefix, hash)."""
    prefix = secrets.token_hex(PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(32)
    return f"sl_{prefix}_{secret}", prefix, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "sl" or len(parts[1]) != PREFIX_LEN or not parts[2]:
        return None
    return parts[1], parts[2]


def matches(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), key_hash)
