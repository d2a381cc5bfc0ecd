"""The Suanli host agent: a standalone package (pynvml + the standard library). It never imports Django.

Modules: `nvml` (the collector over the pynvml API), `simulate` (a fake pynvml for `--simulate N`), `signing`,
`spool` (the on-disk queue), `client` (HTTP + back-off), `runner` (the report loop), `config`, `cli` (`suanli-agent`).
"""

__version__ = "0.1.0"
