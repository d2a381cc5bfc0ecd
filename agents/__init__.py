"""The Suanli host agent: a standalone package (pynvml + the standard library; the `docker` package for the Docker
runtime, imported only when it is used). It never imports Django.

Modules: `nvml` (the collector over the pynvml API), `simulate` (a fake pynvml for `--simulate N`), `signing`,
`spool` (the on-disk queue), `client` (HTTP + back-off), `runner` (the report loop), `workloads` (the reconciler of
customers' workloads), `runtime` (how workloads run: docker, host, simulated), `config`, `cli` (`suanli-agent`).
"""

__version__ = "0.1.0"
