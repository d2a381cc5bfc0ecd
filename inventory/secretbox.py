"""Encryption at rest for agent secrets.

The platform must know an agent's secret to check its HMAC signatures, so the secret is stored encrypted
(Fernet: AES-128-CBC + HMAC-SHA256), never in the clear. Keys come from AGENT_SECRET_KEYS (comma-separated,
newest first, for rotation) or, when unset, are derived from DJANGO_SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings


def _fernet_key(material: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(b"suanli-agent-secret:" + material.encode()).digest())


@lru_cache(maxsize=1)
def _box() -> MultiFernet:
    materials = list(settings.AGENT_SECRET_KEYS) or [settings.SECRET_KEY]
    return MultiFernet([Fernet(_fernet_key(material)) for material in materials])


def seal(secret: str) -> str:
    return _box().encrypt(secret.encode()).decode()


def unseal(token: str) -> str:
    return _box().decrypt(token.encode()).decode()
