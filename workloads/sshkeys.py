"""OpenSSH public keys: parse, check the type and strength, and fingerprint them as `ssh-keygen -l` does."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from accounts.errors import InvalidInput

MAX_KEY_CHARS = 16_384
MIN_RSA_BITS = 2048
ALLOWED_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


@dataclass(frozen=True)
class ParsedKey:
    key_type: str
    bits: int
    fingerprint: str  # "SHA256:<base64, no padding>"
    text: str  # "<type> <base64> [comment]" on one line, normalised


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, fields={"public_key": [message]})


def fingerprint_of(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(text: str) -> ParsedKey:
    """Validate one OpenSSH public key line (`authorized_keys` format, without options); InvalidInput if not an
    ed25519, ECDSA or RSA (2048+ bits) key."""
    if not isinstance(text, str) or len(text) > MAX_KEY_CHARS:
        raise _bad("Paste one OpenSSH public key (the contents of a .pub file).")
    line = text.strip()
    if not line or "\n" in line or "\r" in line or "\x00" in line:
        raise _bad("Paste exactly one OpenSSH public key, on one line.")
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise _bad("An OpenSSH public key looks like 'ssh-ed25519 AAAA... you@host'.")
    key_type, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if key_type not in ALLOWED_TYPES:
        if key_type.startswith("-----BEGIN"):
            raise _bad("That is a private key or a PEM file: paste the public key (the .pub file) instead.")
        raise _bad(f"Key type {key_type[:40]!r} is not accepted: use ed25519, ECDSA or RSA (2048 bits or more).")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("The key's base64 data is damaged.") from None
    try:
        key = load_ssh_public_key(f"{key_type} {data}".encode())
    except (ValueError, TypeError, AssertionError):
        raise _bad("The key's data is not a valid key of its type.") from None
    # The type in front must be the one inside the blob (load_ssh_public_key checks this too; be explicit).
    if not blob[4:].startswith(key_type.encode()):
        raise _bad("The key's type does not match its data.")
    if isinstance(key, ed25519.Ed25519PublicKey):
        bits = 256
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
    elif isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise _bad(f"This RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed (or use ed25519).")
    else:  # pragma: no cover - excluded by ALLOWED_TYPES
        raise _bad("Unsupported key type.")
    comment = "".join(ch for ch in comment if ch.isprintable())[:200]
    normal = f"{key_type} {data}" + (f" {comment}" if comment else "")
    return ParsedKey(key_type=key_type, bits=bits, fingerprint=fingerprint_of(blob), text=normal)
