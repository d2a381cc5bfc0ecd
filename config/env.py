"""Read settings from the environment. Every variable is listed in README.md (Configuration)."""

import os

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_networks(name: str, default: str = "") -> list[str]:
    """IP addresses and networks "10.0.0.0/8,192.0.2.7,::1"; a bad entry fails at startup, naming it."""
    import ipaddress

    entries = env_list(name, default)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{name}: {entry!r} is not an IP address or network") from None
    return entries


def env_rates(name: str, default: str = "") -> dict:
    """Exchange rates "USD:CNY=7.10,CNY:USD=0.1408" -> {("USD", "CNY"): Decimal("7.10"), ...}."""
    from decimal import Decimal, InvalidOperation

    rates = {}
    for item in env_list(name, default):
        try:
            pair, rate = item.split("=")
            source, target = (part.strip().upper() for part in pair.split(":"))
            rates[(source, target)] = Decimal(rate.strip())
        except (ValueError, InvalidOperation):
            raise ValueError(f"{name}: {item!r} is not FROM:TO=RATE") from None
        if rates[(source, target)] <= 0:
            raise ValueError(f"{name}: the rate of {source}:{target} must be positive")
    return rates
