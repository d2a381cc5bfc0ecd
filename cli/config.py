"""Profiles and credentials: one JSON file in the user's config directory, readable by its owner alone (0600).

    {"default_profile": "default",
     "profiles": {"default": {"api_url": "https://gpu.example.com", "token": "sl_...", "org": 12, "email": "..."}}}

SUANLI_CONFIG_DIR overrides the directory (platformdirs' user config dir for `suanli` otherwise). What a command
uses is resolved in one place, `Settings.resolve`: a command-line option, else its environment variable
(SUANLI_API_URL, SUANLI_ORG, SUANLI_PROFILE, SUANLI_TOKEN), else the profile, else the default."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_PROFILE = "default"


def config_dir() -> Path:
    override = os.environ.get("SUANLI_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir("suanli", appauthor=False))


def config_path() -> Path:
    return config_dir() / "config.json"


def load() -> dict[str, Any]:
    """The whole file, or an empty configuration when there is none."""
    path = config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"profiles": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles", {}), dict):
        raise ConfigError(f"{path}: not a suanli configuration")
    data.setdefault("profiles", {})
    return data


def save(data: dict[str, Any]) -> Path:
    """Write the file atomically with mode 0600 (its directory 0700): it holds API tokens."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".config.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)  # whatever the umask or an older file said
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


class ConfigError(Exception):
    """The configuration file cannot be read or names no such profile."""


@dataclass
class Settings:
    """What one invocation talks to, and as whom."""

    profile: str
    api_url: str
    token: str | None
    org: str | None

    @classmethod
    def resolve(cls, *, profile: str | None, api_url: str | None, org: str | None, new: bool = False) -> Settings:
        """What to use; a profile named on the command line must exist unless `new` (login makes it)."""
        data = load()
        name = profile or os.environ.get("SUANLI_PROFILE") or data.get("default_profile") or DEFAULT_PROFILE
        stored = data["profiles"].get(name, {})
        if profile and not new and name not in data["profiles"]:
            known = ", ".join(sorted(data["profiles"]))
            raise ConfigError(f"no profile named {name!r} (known: {known})")
        url = api_url or os.environ.get("SUANLI_API_URL") or stored.get("api_url") or DEFAULT_API_URL
        token = os.environ.get("SUANLI_TOKEN") or stored.get("token")
        chosen_org = org or os.environ.get("SUANLI_ORG") or stored.get("org")
        return cls(
            profile=name,
            api_url=url.rstrip("/"),
            token=token,
            org=None if chosen_org in (None, "") else str(chosen_org),
        )


def store_profile(name: str, **values: Any) -> Path:
    """Merge `values` into profile `name` (a None value removes that key); the first profile becomes the default."""
    data = load()
    profile = data["profiles"].setdefault(name, {})
    for key, value in values.items():
        if value is None:
            profile.pop(key, None)
        else:
            profile[key] = value
    data.setdefault("default_profile", name)
    return save(data)


def remove_credentials(name: str) -> bool:
    """Forget the profile's token (the site and organisation stay); False when it had none."""
    data = load()
    profile = data["profiles"].get(name)
    if not profile or "token" not in profile:
        return False
    profile.pop("token")
    profile.pop("email", None)
    save(data)
    return True


def use_profile(name: str) -> None:
    data = load()
    if name not in data["profiles"]:
        raise ConfigError(f"no profile named {name!r}")
    data["default_profile"] = name
    save(data)
