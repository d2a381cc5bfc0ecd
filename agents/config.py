"""The agent's credentials file and default paths.

The credentials file is JSON: `{"url", "server", "agent_id", "agent_secret", "hostname"}`, written by
`suanli-agent enroll` with mode 0600 (created 0600 from the start, never widened, and checked after writing). A file
that group or others can read is refused at load, as ssh refuses a readable private key.

Paths, first match wins:
- credentials: `--config`, `$SUANLI_AGENT_CONFIG`, `/etc/suanli/agent.json`;
- spool: `--spool-dir`, `$SUANLI_AGENT_SPOOL`, `/var/lib/suanli-agent/spool` (the systemd unit's StateDirectory);
- workload state (the last desired workloads, SSH key files mounted into containers, the host users record):
  `--state-dir`, `$SUANLI_AGENT_STATE`, else the spool directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
from dataclasses import asdict, dataclass

DEFAULT_CONFIG = "/etc/suanli/agent.json"
DEFAULT_SPOOL = "/var/lib/suanli-agent/spool"
ENV_CONFIG = "SUANLI_AGENT_CONFIG"
ENV_SPOOL = "SUANLI_AGENT_SPOOL"
ENV_STATE = "SUANLI_AGENT_STATE"


class ConfigError(Exception):
    """The credentials file is missing, unreadable, malformed or too open. One line for a human."""


@dataclass(frozen=True)
class Credentials:
    url: str
    server: str
    agent_id: str
    agent_secret: str
    hostname: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(url={self.url!r}, server={self.server!r}, agent_id={self.agent_id!r}, agent_secret=***)"


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG


def spool_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_SPOOL) or DEFAULT_SPOOL


def state_path(explicit: str | None = None, spool: str | None = None) -> str:
    return explicit or os.environ.get(ENV_STATE) or spool_path(spool)


def write_credentials(path: str, creds: Credentials, owner: str | None = None) -> None:
    """Write the credentials file with mode 0600 (optionally owned by `owner`, the service user) and verify it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot have widened it, but be explicit
        if owner:
            try:
                entry = pwd.getpwnam(owner)
            except KeyError:
                raise ConfigError(f"no such user {owner!r} to own {path}") from None
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(creds), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o600:
        raise ConfigError(f"{path} has mode {mode:04o} after writing, expected 0600")


def load_credentials(path: str) -> Credentials:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(
            f"no credentials at {path}: run `suanli-agent enroll --url URL --token TOKEN` first"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    missing = [
        k for k in ("url", "server", "agent_id", "agent_secret") if not isinstance(data, dict) or not data.get(k)
    ]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: enroll again")
    return Credentials(
        url=str(data["url"]),
        server=str(data["server"]),
        agent_id=str(data["agent_id"]),
        agent_secret=str(data["agent_secret"]),
        hostname=str(data.get("hostname") or ""),
    )
