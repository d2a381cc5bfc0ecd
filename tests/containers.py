"""Real containers and a real OpenSSH server for tests: a pytest plugin (tests/conftest.py loads it).

Nothing here is a mock. The fixtures start this machine's own programs, which `scripts/test` installs from
Debian when it may (root with apt-get): docker.io, busybox-static, dropbear-bin, openssh-server, openssh-client.
Where a program is missing or cannot start, the tests that need it are skipped with the reason; under CI=true
they fail instead, so CI never passes by skipping them.

- `dockerd` (session): a Docker daemon of this test session alone (its own socket, data and exec roots, bridge;
  vfs storage; it touches no iptables rules and no system docker), as a `Dockerd`: `.url`, `.run(*args)`.
- `ssh_image` (session): the tag of a tiny image made from Debian's busybox and dropbear (no registry needed)
  that serves SSH on port 22 as root, with the keys of /root/.ssh/authorized_keys (mount them read-only).
- `failing_image` (session): an image reference that no pull can ever find (fails within milliseconds).
- `sshd` (function): a real OpenSSH sshd on a free loopback port (root login refused; keys only); its port.
  `sshd_server` is the same server as an `SshdServer` (port, config, log); a failing test shows its log.
- `ssh_keypair` (function): a fresh ed25519 key pair, as a `KeyPair`.
- `local_user` (function): a fresh local account that sshd lets in by key; removed afterwards.
- `ssh_run(port, key_path, command)`: the real `ssh` client, retried until the server answers.

Tests that use `dockerd` (or a fixture built on it) get the `containers` marker, so `-m "not containers"`
leaves them out. Under pytest-xdist each worker that runs one has a dockerd of its own (everything here is per
process); and since some publish fixed host ports, a container test runs holding a lock of this machine
(/tmp/suanli-test-containers.lock), so no two run at once, in one run or in runs side by side.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import ipaddress
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSH_IMAGE = "suanli-test/ssh:1"
# The image's command: dropbear in the foreground (-F), logging to stderr (-E), making its host keys on first use
# (-R), passing the container's environment (docker run -e) on to sessions (-e), keys only (-s), port 22.
SSH_IMAGE_CMD = ["/usr/sbin/dropbear", "-F", "-E", "-R", "-e", "-s", "-p", "22"]
SSH_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
_INSTALL_HINT = (
    "scripts/test installs it when run as root with apt-get "
    "(apt-get install docker.io busybox-static dropbear-bin openssh-server openssh-client iptables)"
)


def pytest_configure(config: pytest.Config) -> None:
    # Also in pyproject.toml; here too, so the plugin works wherever it is loaded (`-p tests.containers`).
    config.addinivalue_line("markers", "containers: needs the test session's own dockerd (tests/containers.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "dockerd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.containers)


CONTAINERS_LOCK = Path("/tmp/suanli-test-containers.lock")  # noqa: S108 (one per machine, by design)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A container test runs (setup, call and teardown) holding this machine's containers lock: some publish fixed
    host ports (a runtime's port range), which two such tests at once, in pytest-xdist workers or in runs side by
    side, would take from each other. The kernel lets go of the lock when its holder dies."""
    if item.get_closest_marker("containers") is None:
        return (yield)
    with open(CONTAINERS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip the test (it cannot run here), saying why; under CI=true fail it, so CI cannot pass by skipping."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing rather than skipping)", pytrace=False)
    pytest.skip(reason)


def which(program: str) -> str | None:
    return shutil.which(program, path=_SBIN_PATH)


def require(*programs: str, purpose: str = "", root: bool = True) -> dict[str, str]:
    """The paths of programs (looked up in /usr/sbin and /sbin too), which must run as root unless root=False: where
    one is missing or this is not root, the test is skipped (failed under CI=true), saying why."""
    purpose = purpose or ", ".join(programs)
    found = {program: which(program) for program in programs}
    missing = [program for program, path in found.items() if path is None]
    if missing:
        unavailable(f"{purpose}: {', '.join(missing)} not installed; {_INSTALL_HINT}")
    if root and os.geteuid() != 0:
        unavailable(f"{purpose} needs root; these tests run as uid {os.geteuid()}")
    return found


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: between fork and exec, only call it
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the test process dies, so a killed pytest leaves no daemon behind."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        return sock.recv(64)


# ---------------------------------------------------------------------------------------------------- dockerd


class DockerError(AssertionError):
    pass


@dataclass
class Dockerd:
    """This session's own Docker daemon."""

    url: str  # unix:///tmp/suanli-dockerd-.../docker.sock, for DOCKER_HOST or docker.DockerClient(base_url=...)
    root: Path  # its data root, exec root, pidfile, log and CLI config all live under here
    bridge: str  # the Linux bridge of its default network (slt<pid>)
    bridge_ip: str  # the host's address on that bridge: containers reach the host there
    docker: str  # the docker CLI
    dead_port: int  # a loopback port where nothing answers: the daemon's HTTP(S) proxy, so pulls fail at once
    process: subprocess.Popen = field(repr=False)
    env: dict[str, str] = field(repr=False, default_factory=dict)  # the CLI's: DOCKER_HOST, an empty DOCKER_CONFIG
    started_in: float = 0.0  # seconds from starting dockerd to its first answer

    @property
    def socket_path(self) -> str:
        return self.url.removeprefix("unix://")

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | bytes | None = None
    ) -> subprocess.CompletedProcess:
        """The docker CLI against this daemon: `dockerd.run("ps", "-q").stdout`. Text in and out unless `input`
        is bytes. With check (the default) a non-zero exit raises DockerError with what docker said."""
        text = not isinstance(input, bytes)
        result = subprocess.run(
            [self.docker, *map(str, args)],
            env=self.env,
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            stderr = result.stderr if text else result.stderr.decode(errors="replace")
            raise DockerError(f"docker {' '.join(map(str, args))} exited {result.returncode}: {stderr.strip()}")
        return result

    def published_port(self, container: str, port: int = 22) -> int:
        """The host port that `container`'s `port`/tcp is published on (`-p 127.0.0.1::22` picks a free one)."""
        out = self.run("port", container, f"{port}/tcp").stdout.split()
        return int(out[0].rsplit(":", 1)[1])

    def remove_all_containers(self) -> None:
        ids = self.run("ps", "-aq").stdout.split()
        if ids:
            self.run("rm", "-f", "-v", *ids, check=False)

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(self.socket_path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return sock.recv(64).split(b"\r\n", 1)[0].split()[1:2] == [b"200"]
        except OSError:
            return False


_BRIDGE_RE = re.compile(r"^slt(\d+)$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _remove_stale_bridges() -> None:
    """Bridges left by test sessions that were killed (slt<pid> whose pid is gone)."""
    out = _ip("-o", "link", "show", "type", "bridge", check=False).stdout
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        match = _BRIDGE_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("link", "delete", name, check=False)


def _remove_stale_roots() -> None:
    """What killed test sessions left in /tmp: a suanli-dockerd-* folder whose session (its `owner` pid) is gone."""
    for root in Path("/tmp").glob("suanli-dockerd-*"):  # noqa: S108
        try:
            owner = int((root / "owner").read_text())
        except (OSError, ValueError):
            continue
        if not _pid_alive(owner):
            _unmount_all(root)
            shutil.rmtree(root, ignore_errors=True)


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no address or route of this machine overlaps (a system docker's 172.17/16
    included); where to start looking depends on the pid, so sessions side by side pick different ones."""
    taken = []
    for args in (("-4", "-o", "addr"), ("-4", "route")):
        for token in _ip(*args, check=False).stdout.split():  # every address or prefix in what `ip` says
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(token, strict=False))
    start = os.getpid() % 256
    for offset in range(256):
        candidate = ipaddress.ip_network(f"10.213.{(start + offset) % 256}.0/24")
        if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
            return candidate
    raise RuntimeError("no free /24 in 10.213.0.0/16 for the test dockerd's bridge")


def _mounts_under(root: Path) -> list[str]:
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")  # \040 for a space, and so on
            if point == str(root) or point.startswith(f"{root}/"):
                found.append(point)
    return found


def _unmount_all(root: Path) -> None:
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False, timeout=30)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A Docker daemon of this session alone, started once (about 0.2 s) and stopped at the end: `start_dockerd`."""
    with start_dockerd() as daemon:
        yield daemon


@contextlib.contextmanager
def start_dockerd() -> Iterator[Dockerd]:
    """A Docker daemon of this process alone, stopped (containers, bridge, mounts and root removed) on exit. Outside
    pytest too (bench/workload_ssh.py); where it cannot start, `unavailable` raises pytest's skip (or fail) outcome.

    - Its own unix socket, --data-root, --exec-root and --pidfile under /tmp/suanli-dockerd-XXXX (short paths:
      unix socket names are limited to 108 bytes), its own empty --config-file (so /etc/docker/daemon.json
      cannot clash), its own containerd namespace, vfs storage (works on any file system, no overlay mounts).
    - Its default network is a bridge of its own, slt<pid>, on a free 10.213.X.0/24: no clash with docker0 or a
      system docker. --iptables=false --ip-forward=false: it changes no firewall rule or sysctl of the machine;
      ports published on 127.0.0.1 (`-p 127.0.0.1::22`) go through docker-proxy, which needs neither. Containers
      reach the host at `bridge_ip`; they have no route out (no masquerading), as a test wants.
    - Its HTTP(S) proxy is a loopback port where nothing listens: a pull from any registry (Docker Hub included)
      fails at once instead of waiting on DNS or a network that a test machine may not have. Loopback
      registries are never proxied, so a test can still run a registry on 127.0.0.1.
    """
    found = require("dockerd", "docker", "ip", purpose="the test dockerd")
    docker = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else found["docker"]  # Debian's, as dockerd
    _remove_stale_bridges()
    _remove_stale_roots()
    root = Path(tempfile.mkdtemp(prefix="suanli-dockerd-", dir="/tmp"))  # noqa: S108 (short: see above)
    bridge = f"slt{os.getpid()}"
    subnet = _pick_subnet()
    bridge_ip = str(next(subnet.hosts()))
    # Bound but never listening: every connection to it is refused, and no other program can take the port.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    (root / "owner").write_text(f"{os.getpid()}\n")
    (root / "daemon.json").write_text("{}\n")
    (root / "cli").mkdir()
    (root / "cli" / "config.json").write_text(json.dumps({"auths": {}}) + "\n")
    clean_env = {
        k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith("DOCKER_")
    }
    proxy = f"http://127.0.0.1:{dead_port}"
    daemon_env = {**clean_env, "PATH": _SBIN_PATH, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "NO_PROXY": ""}
    cli_env = {**clean_env, "DOCKER_HOST": f"unix://{root}/docker.sock", "DOCKER_CONFIG": str(root / "cli")}
    namespace = f"suanli-test-{os.getpid()}"
    command = [
        found["dockerd"],
        "--host", f"unix://{root}/docker.sock",
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"),
        "--config-file", str(root / "daemon.json"),
        "--storage-driver", "vfs",
        "--bridge", bridge,
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--userland-proxy=true",
        "--containerd-namespace", namespace,
        "--containerd-plugins-namespace", f"{namespace}-plugins",
    ]  # fmt: skip
    process = daemon = None
    log = open(root / "dockerd.log", "wb")  # closed at teardown
    try:
        _ip("link", "add", "name", bridge, "type", "bridge")
        _ip("addr", "add", f"{bridge_ip}/{subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=daemon_env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        daemon = Dockerd(
            url=f"unix://{root}/docker.sock",
            root=root,
            bridge=bridge,
            bridge_ip=bridge_ip,
            docker=docker,
            dead_port=dead_port,
            process=process,
            env=cli_env,
        )
        deadline = started + 60
        while not daemon.ping():
            if process.poll() is not None:
                unavailable(f"dockerd exited ({process.returncode}) before answering: {_tail(root / 'dockerd.log', 8)}")
            if time.monotonic() > deadline:
                unavailable(f"dockerd did not answer within 60 s: {_tail(root / 'dockerd.log', 8)}")
            time.sleep(0.05)
        daemon.started_in = time.monotonic() - started
        yield daemon
    except subprocess.CalledProcessError as error:
        unavailable(f"could not make the test dockerd's bridge {bridge}: {(error.stderr or '').strip()}")
    finally:
        if process is not None:
            if process.poll() is None and daemon is not None:
                # SIGKILL the containers first: dockerd would otherwise give each its stop timeout (10 s).
                with contextlib.suppress(Exception):
                    daemon.remove_all_containers()
            _stop(process, timeout=30)
            containerd_pid = root / "exec" / "containerd" / "containerd.pid"
            with contextlib.suppress(OSError, ValueError):
                pid = int(containerd_pid.read_text())
                if _pid_alive(pid):  # dockerd had to be killed and left its containerd
                    os.kill(pid, signal.SIGTERM)
        log.close()
        dead.close()
        _unmount_all(root)
        _ip("link", "delete", bridge, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def failing_image(dockerd: Dockerd) -> str:
    """An image reference that is not in the test dockerd and that no pull can find: its registry is a loopback
    port where nothing listens, so `docker pull` / `docker run` fail within milliseconds ("connection refused")."""
    return f"127.0.0.1:{dockerd.dead_port}/suanli-test/missing:1"


# ---------------------------------------------------------------------------------------------------- ssh image


def _libraries(binary: str) -> list[str]:
    """The shared libraries `ldd` lists for binary (the dynamic loader included); none for a static one."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:  # "not a dynamic executable"
        return []
    return re.findall(r"(?:=>\s*|^\s*)(/\S+)\s+\(0x", result.stdout, flags=re.MULTILINE)


def _busybox_applets(busybox: str) -> list[str]:
    result = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=False, timeout=30)
    applets = result.stdout.split() if result.returncode == 0 else []
    basic = ["sh", "ls", "cat", "env", "sleep", "id", "ps", "kill", "echo", "true", "false", "test", "mkdir", "rm"]
    return sorted(set(applets) | set(basic))


def ssh_rootfs(busybox: str, dropbear: str) -> bytes:
    """The image's root file system, as a tar: busybox with a /bin symlink per applet, dropbear with the libraries
    it links, root's account, and the directories dropbear and docker expect. /dev, /proc, /sys, /etc/hosts,
    /etc/resolv.conf and /etc/hostname are docker's to provide."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, 0, 0, 0
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        dirs = set("bin dev etc etc/dropbear proc sys run usr usr/bin usr/sbin var var/log".split())
        files: dict[str, bytes] = {
            "/bin/busybox": Path(busybox).read_bytes(),
            "/usr/sbin/dropbear": Path(dropbear).read_bytes(),
        }
        for library in {*_libraries(busybox), *_libraries(dropbear)}:
            files[library] = Path(library).resolve().read_bytes()
        for path in files:
            parts = Path(path).parent.parts[1:]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for directory in sorted(dirs):
            add(directory)
        add("root", mode=0o700)
        add("tmp", mode=0o1777)
        add("var/run", tarfile.SYMTYPE, link="../run")
        add("var/tmp", tarfile.SYMTYPE, link="../tmp")
        for path, data in sorted(files.items()):
            add(path, tarfile.REGTYPE, 0o755, data)
        for applet in _busybox_applets(busybox):
            if applet != "busybox" and "/" not in applet:
                add(f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        etc = {
            "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            "group": "root:x:0:\nnogroup:x:65534:\n",
            "shells": "/bin/sh\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        }
        for name, text in etc.items():
            add(f"etc/{name}", tarfile.REGTYPE, 0o644, text.encode())
    return buffer.getvalue()


def build_ssh_image(daemon: Dockerd, tag: str = SSH_IMAGE) -> str:
    found = require("busybox", "dropbear", "ldd", purpose="the ssh test image")
    changes = [f"CMD {json.dumps(SSH_IMAGE_CMD)}", "EXPOSE 22", f"ENV PATH={SSH_IMAGE_PATH}"]
    daemon.run("import", *itertools.chain.from_iterable(("--change", c) for c in changes), "-", tag,
               input=ssh_rootfs(found["busybox"], found["dropbear"]))  # fmt: skip
    return tag


@pytest.fixture(scope="session")
def ssh_image(dockerd: Dockerd) -> str:
    """The tag (suanli-test/ssh:1) of an image, imported into the test dockerd once a session (about 0.1 s), that
    serves SSH: dropbear as root on port 22, public keys only, from /root/.ssh/authorized_keys. Run it as

        docker run -d -e FOO=bar -p 127.0.0.1::22 -v KEYS_DIR:/root/.ssh:ro suanli-test/ssh:1

    with KEYS_DIR made by `authorized_keys_dir` (or a fresh `docker run` without the mount: no one gets in).
    Sessions see the container's environment (`-e`); the shell is busybox's sh with all its applets."""
    return build_ssh_image(dockerd)


def authorized_keys_dir(directory: Path, *public_keys: str) -> Path:
    """Make `directory` (mode 0700) with an authorized_keys (0600) holding public_keys: what the ssh image wants
    mounted read-only at /root/.ssh."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    keys = directory / "authorized_keys"
    keys.write_text("".join(f"{key.strip()}\n" for key in public_keys))
    keys.chmod(0o600)
    return directory


# ---------------------------------------------------------------------------------------------------- ssh


@dataclass(frozen=True)
class KeyPair:
    private: Path  # the private key (0600), for `ssh -i`
    public: Path  # private + ".pub"
    public_text: str  # "ssh-ed25519 AAAA... comment", one line, no newline


def make_keypair(directory: Path, name: str = "id_ed25519", comment: str = "suanli-test") -> KeyPair:
    require("ssh-keygen", purpose="an ssh key pair", root=False)
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    public = private.with_name(f"{name}.pub")
    return KeyPair(private=private, public=public, public_text=public.read_text().strip())


@pytest.fixture
def ssh_keypair(tmp_path: Path) -> KeyPair:
    """A fresh ed25519 key pair made by ssh-keygen in this test's tmp_path."""
    return make_keypair(tmp_path / "ssh-keys")


# What ssh says (exit 255) when the server is not answering yet, e.g. a container's published port whose dropbear
# is not listening yet: docker-proxy takes the connection, then drops it. Not retried: a refused key, an answer.
_NOT_YET = re.compile(
    r"Connection refused|Connection reset|Connection closed|connection closed|kex_exchange_identification|"
    r"timed out|No route to host|Broken pipe|Connection to .* closed by remote host",
)


def ssh_run(
    port: int,
    key_path: Path | str,
    command: str,
    user: str = "root",
    timeout: float = 30,
    host: str = "127.0.0.1",
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run `command` over SSH with the real `ssh` client: key only (BatchMode), no known hosts, no user config.
    Retried while the server is not answering yet, until `timeout` seconds have passed; returns the last
    CompletedProcess (text): exit status 255 with stderr "Permission denied (publickey)" for a refused key."""
    require("ssh", purpose="the ssh client", root=False)
    args = [
        "ssh", "-F", "/dev/null", "-i", str(key_path), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5",
        f"{user}@{host}", command,
    ]  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(deadline - time.monotonic(), 1)
        try:
            result = subprocess.run(args, input=input, capture_output=True, text=True, timeout=remaining, check=False)
        except subprocess.TimeoutExpired as expired:
            stdout, stderr = expired.stdout, expired.stderr
            stdout = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout or ""
            stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
            return subprocess.CompletedProcess(args, 124, stdout, f"{stderr}ssh_run: timed out after {timeout} s")
        if result.returncode != 255 or not _NOT_YET.search(result.stderr) or time.monotonic() >= deadline:
            return result
        time.sleep(0.1)


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    home: Path

    def authorize(self, *public_keys: str) -> Path:
        """Write ~/.ssh/authorized_keys (0600 in a 0700 ~/.ssh, owned by the user: what StrictModes wants)."""
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text("".join(f"{key.strip()}\n" for key in public_keys))
        keys.chmod(0o600)
        for path in (ssh_dir, keys):
            os.chown(path, self.uid, self.gid)
        return keys


_user_numbers = itertools.count(1)


@pytest.fixture
def local_user() -> Iterator[LocalUser]:
    """A fresh local account (useradd, home under /home, shell /bin/sh), deleted with its home afterwards.
    Its password is "*", not useradd's "!": with UsePAM no, sshd refuses a "!" (locked) account even by key."""
    require("useradd", "userdel", purpose="a local user")
    for stale in pwd.getpwall():  # left by a test session that was killed
        match = re.fullmatch(r"slt(\d+)u\d+", stale.pw_name)
        if match and not _pid_alive(int(match.group(1))):
            subprocess.run(["userdel", "--force", "--remove", stale.pw_name], capture_output=True, timeout=30)
    name = f"slt{os.getpid()}u{next(_user_numbers)}"
    subprocess.run(["userdel", "--force", "--remove", name], capture_output=True, check=False, timeout=30)
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", name],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    entry = pwd.getpwnam(name)
    try:
        yield LocalUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=Path(entry.pw_dir))
    finally:
        subprocess.run(["userdel", "--force", "--remove", name], capture_output=True, check=False, timeout=30)


SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {host_key}
PidFile {pidfile}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthenticationMethods publickey
StrictModes yes
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
PrintMotd no
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


@dataclass(frozen=True)
class SshdServer:
    port: int
    config: Path  # its sshd_config
    log: Path  # what it logged (LogLevel VERBOSE): shown under a test that fails
    sshd: str  # the sshd binary, for `sshd -T -f config`


_SSHD_LOG = pytest.StashKey[Path]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    log = item.stash.get(_SSHD_LOG, None)
    if report.failed and log is not None:
        report.sections.append(("sshd log", _tail(log, 40)))
    return report


@pytest.fixture
def sshd_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SshdServer]:
    """A real OpenSSH server (`sshd -D -e -f CONFIG`) on a free 127.0.0.1 port, with a host key of its own:
    PermitRootLogin no, keys only (PasswordAuthentication no, UsePAM no), StrictModes yes. Yields it once it
    answers (about 20 ms); stopped afterwards. Log in as a `local_user` that `authorize`d a key."""
    found = require("sshd", "ssh-keygen", purpose="the test sshd")
    sshd_path = str(Path(found["sshd"]).resolve())  # sshd re-executes itself: it needs an absolute path
    # The privilege separation directory: Debian's systemd unit makes it, a container has none.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    directory = tmp_path / "sshd"
    directory.mkdir()
    host_key = directory / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, timeout=30)
    log_path = directory / "sshd.log"
    request.node.stash[_SSHD_LOG] = log_path
    for _attempt in range(5):  # the free port may be taken between choosing it and sshd binding it
        port = free_port()
        config = directory / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=port, host_key=host_key, pidfile=directory / "sshd.pid"))
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sshd_path, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _banner(port).startswith(b"SSH-2.0-OpenSSH"):
                    break
            time.sleep(0.02)
        else:
            _stop(process, timeout=5)
            continue
        try:
            yield SshdServer(port=port, config=config, log=log_path, sshd=sshd_path)
        finally:
            _stop(process, timeout=10)
        return
    unavailable(f"sshd did not start: {_tail(log_path, 8)}")


@pytest.fixture
def sshd(sshd_server: SshdServer) -> int:
    """The port of `sshd_server`: a real OpenSSH sshd on 127.0.0.1 that lets in `local_user`s by key only."""
    return sshd_server.port
