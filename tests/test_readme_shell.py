"""Every shell example of README.md, run as written against a running demo (issue 17).

The examples are read out of the README (its ```sh, ```bash and ```console blocks), so a new one is covered without
touching this file. The demo is started the README's way, `./scripts/dev` (on a free port, its embedded PostgreSQL
and var/ in a temporary folder). The examples then run one command at a time in bash, in README order, their shell
variables carried from one to the next, with only what the README tells the reader to fill in substituted (the
port, the demo customer's token that ./scripts/dev prints, a key under ~/.ssh, the `...` of the deployment check).
Each command must exit 0 and answer no `{"error": ...}`; where the README shows an answer (a `# {...}` comment under
the command or after it), the answer must have the keys it shows and the values it shows (`...` elides a value or
the rest of a string; a read is retried for a while when it shows a state the demo reaches later).

Blocks that cannot run in a test are listed in EXCLUDED with the reason; a block neither run nor listed fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT, free_port

README = ROOT / "README.md"
FENCE = re.compile(r"^```(sh|bash|console)[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

# Blocks not run here, each found by a pattern of its text, with the reason. Each must match exactly one block.
EXCLUDED = {
    r"\A\./scripts/dev\s*\Z": "it is the demo itself: the fixture runs it as written, adding --port (README: options "
    "go to manage.py dev) for a free port",
    r"\./scripts/test\b": "it runs the test suite, inside the test suite: tests/test_scripts.py runs scripts/test on a "
    "selection in a clone of the repository with no servers configured",
    r"docker compose up": "it builds and starts the production images with Docker Compose, whose base images "
    "(python:3.11-slim, PostgreSQL, Redis) come from a registry the tests cannot reach",
    r"suanli-agent enroll": "it installs the agent on a GPU host (NVML, systemd, /opt): tests/test_agent_end_to_end.py "
    "enrols the real agent with simulated cards instead",
    r"^suanli login --email": "the suanli command line's walk-through: tests/cli/test_readme_cli.py runs it as written "
    "against a live site with demo-like data (a server whose agent runs the rented workload), the passwords given on "
    "stdin and ssh stood in for",
}
# Blocks run after the others: `embedded_db stop` stops the demo's database.
LAST = (r"manage\.py embedded_db",)


@dataclass
class Command:
    text: str  # the shell text, as in the README
    shown: str = ""  # the answer the README shows for it (pseudo-JSON), or ""
    block: int = 0

    def reads(self) -> bool:
        return not re.search(r"-X\s+(POST|PUT|PATCH|DELETE)|\s-d\s", self.text)


@dataclass
class Block:
    index: int
    text: str
    commands: list[Command] = field(default_factory=list)


def _complete(text: str) -> bool:
    """Whether `text` is one or more whole shell commands (bash parses it without running it)."""
    if text.endswith("\\"):
        return False  # continued on the next line
    checked = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    return checked.returncode == 0 and "here-document" not in checked.stderr  # an open <<EOF is only a warning


def _answer_in(comment: str) -> str:
    """The pseudo-JSON answer a comment shows ('201 {...}', 'answers 201 {...}', '[...]', 'live: {...}'), or ""."""
    found = re.match(r"(?:answers\s+)?(?:\d{3}\s+)?([\[{].*)", comment, re.DOTALL)
    if found:
        return found[1]
    found = re.search(r":\s+(\{.*)", comment, re.DOTALL)
    return found[1] if found else ""


def _split(block_text: str, console: bool) -> list[Command]:
    lines = block_text.splitlines()
    if console:  # `$ command` lines, each followed by its output
        commands: list[Command] = []
        for line in lines:
            if line.startswith("$ "):
                commands.append(Command(line[2:]))
            elif commands:
                commands[-1].shown += line + "\n"
        return commands
    commands = []
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        chunk = [lines[i]]
        while not _complete("\n".join(chunk)):
            i += 1
            assert i < len(lines), f"README: an unfinished shell command: {chunk[0]}"
            chunk.append(lines[i])
        i += 1
        text = "\n".join(chunk)
        comments = []
        inline = re.match(r"(?s)^(.*\S)\s+#\s+(.*)$", chunk[-1])
        if inline and _complete("\n".join([*chunk[:-1], inline[1]])):
            comments.append(inline[2])
        while i < len(lines) and lines[i].lstrip().startswith("#"):
            comments.append(lines[i].lstrip()[1:].strip())
            i += 1
        shown = next((_answer_in(" ".join(comments[k:])) for k in range(len(comments)) if _answer_in(comments[k])), "")
        commands.append(Command(text, shown))
    return commands


def readme_blocks() -> list[Block]:
    blocks = []
    for index, match in enumerate(FENCE.finditer(README.read_text())):
        block = Block(index, match[2])
        block.commands = _split(match[2], console=match[1] == "console")
        for command in block.commands:
            command.block = index
        blocks.append(block)
    return blocks


def excluded(block: Block) -> str | None:
    reasons = [why for pattern, why in EXCLUDED.items() if re.search(pattern, block.text, re.MULTILINE)]
    assert len(reasons) <= 1, block.text
    return reasons[0] if reasons else None


# --- what the README shows, as a pattern --------------------------------------------------------------------------

ELLIPSIS = object()
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\.\.\.|…|-?\d+(?:\.\d+)?|true|false|null|[{}\[\],:])')


class _Parser:
    """JSON where `...` (or `…`) may stand for a value, for the rest of an object or array, or inside a string."""

    def __init__(self, text: str) -> None:
        self.tokens: list[str] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match:
                break
            self.tokens.append(match[1])
            pos = match.end()
            if self._closed():
                break
        self.pos = 0

    def _closed(self) -> bool:
        depth = 0
        for token in self.tokens:
            depth += token in "{[" and len(token) == 1
            depth -= token in "}]" and len(token) == 1
        return depth == 0

    def take(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def value(self) -> Any:
        token = self.take()
        if token in ("...", "…"):
            return ELLIPSIS
        if token == "{":
            members: dict[str, Any] = {}
            while (token := self.take()) != "}":
                if token == ",":
                    continue
                if token in ("...", "…"):
                    continue
                assert self.take() == ":", token
                members[json.loads(token)] = self.value()
            return members
        if token == "[":
            items: list[Any] = []
            while (token := self.tokens[self.pos]) != "]":
                if token == ",":
                    self.pos += 1
                    continue
                items.append(self.value())
            self.pos += 1
            return items
        return json.loads(token)


def shown_pattern(text: str) -> Any:
    return _Parser(text).value()


def mismatch(pattern: Any, actual: Any, where: str = "") -> str | None:
    """Where `actual` differs from what the README shows, or None."""
    if pattern is ELLIPSIS:
        return None
    if isinstance(pattern, dict):
        if not isinstance(actual, dict):
            return f"{where or 'answer'}: an object is shown, got {actual!r:.200}"
        for key, value in pattern.items():
            if key not in actual:
                return f"{where}.{key}: shown, missing from {sorted(actual)}"
            problem = mismatch(value, actual[key], f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(pattern, list):
        if not isinstance(actual, list):
            return f"{where}: a list is shown, got {actual!r:.200}"
        open_ended = bool(pattern) and pattern[-1] is ELLIPSIS
        items = pattern[:-1] if open_ended else pattern
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            return f"{where}: {len(items)}{'+' if open_ended else ''} items shown, got {len(actual)}"
        for k, item in enumerate(items):
            problem = mismatch(item, actual[k], f"{where}[{k}]")
            if problem:
                return problem
        return None
    if isinstance(pattern, str) and ("..." in pattern or "…" in pattern):
        regex = ".*".join(re.escape(part) for part in re.split(r"\.\.\.|…", pattern))
        if isinstance(actual, str) and re.fullmatch(regex, actual, re.DOTALL):
            return None
        return f"{where}: {pattern!r} shown, got {actual!r}"
    if type(pattern) is not type(actual) and not (
        isinstance(pattern, int | float) and isinstance(actual, int | float) and not isinstance(actual, bool)
    ):
        return f"{where}: {pattern!r} shown, got {actual!r}"
    return None if pattern == actual else f"{where}: {pattern!r} shown, got {actual!r}"


def json_values(output: str) -> list[Any]:
    """The JSON values of an answer (one, or a stream as `jq -c '.[]'` prints); [] when it is not JSON."""
    decoder, values, pos, text = json.JSONDecoder(), [], 0, output.strip()
    while pos < len(text):
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return values
        values.append(value)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return values


# --- the tests ----------------------------------------------------------------------------------------------------


def test_every_shell_block_of_the_readme_is_run_or_excluded_with_a_reason():
    blocks = readme_blocks()
    assert len(blocks) >= 8, "the README's sh blocks"
    for pattern in EXCLUDED:
        matching = [b.index for b in blocks if re.search(pattern, b.text, re.MULTILINE)]
        assert len(matching) == 1, f"EXCLUDED pattern {pattern!r} matches blocks {matching}: update the list"
    run = [b for b in blocks if not excluded(b)]
    assert sum(len(b.commands) for b in run) >= 30, "most of the README's commands run"
    shown = [c for b in run for c in b.commands if c.shown]
    assert len(shown) >= 8, [c.text for c in shown]
    for command in shown:
        shown_pattern(command.shown)  # every answer the README shows parses


def test_the_pattern_reads_what_the_readme_shows():
    pattern = shown_pattern('{"id": ..., "name": "Example IDC", "gpus": [], "token": "sl_...", ...}: and more')
    assert mismatch(pattern, {"id": 4, "name": "Example IDC", "gpus": [], "token": "sl_abc", "x": 1}) is None
    assert mismatch(pattern, {"id": 4, "name": "Example", "gpus": [], "token": "sl_abc"}) == (
        ".name: 'Example IDC' shown, got 'Example'"
    )
    assert mismatch(pattern, {"id": 4, "name": "Example IDC", "gpus": [1], "token": "sl_abc"}) is not None
    assert mismatch(pattern, {"id": 4, "name": "Example IDC", "gpus": [], "token": "tok"}) is not None
    assert mismatch(pattern, {"name": "Example IDC", "gpus": [], "token": "sl_"}) is not None
    listed = shown_pattern('[{"kind": "ssh", "port": 40000}, {"kind": "http"}], ...')
    assert mismatch(listed, [{"kind": "ssh", "port": 40000}, {"kind": "http", "url": "u"}]) is None
    assert mismatch(listed, [{"kind": "ssh", "port": 40001}, {"kind": "http"}]) is not None
    assert mismatch(listed, [{"kind": "ssh", "port": 40000}]) is not None
    assert mismatch(shown_pattern('{"count": 3, "results": [...]}'), {"count": 3, "results": []}) is None
    assert mismatch(shown_pattern('{"reliability": 1.0}'), {"reliability": 1}) is None
    assert json_values('{"a": 1}\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    assert _answer_in('answers 201 {"id": ...}') == '{"id": ...}'
    assert _answer_in('cost so far, live: {"amount": "..."}') == '{"amount": "..."}'
    assert _answer_in("the organisation's servers; /servers/{id}/ adds their GPUs") == ""


@dataclass
class Demo:
    port: int
    token: str
    database_url: str
    pg_dir: Path
    output: list[str]


def _clean_env(**extra: str) -> dict[str, str]:
    """A developer's shell: none of the test run's settings (its database, Redis, payment mode, debug)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "DJANGO_", "SUANLI_", "EMBEDDED_PG"))
        and name not in ("DATABASE_URL", "REDIS_URL", "DEFAULT_PAYMENT_MODE", "VIRTUAL_ENV")
    }
    env.update(extra)
    return env


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch):
    """`./scripts/dev --port <free>` on a fresh embedded PostgreSQL, until it says it is up; Ctrl-C after."""
    base = Path(tempfile.mkdtemp(prefix="suanli-readme-"))  # the server's user must reach it (see pg_base)
    port = free_port()
    env = _clean_env(EMBEDDED_PG_DIR=str(base / "pgdata"), SUANLI_VAR_DIR=str(base / "var"))
    proc = subprocess.Popen(  # noqa: S603
        ["./scripts/dev", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("Suanli is up" in line for line in output):
            assert proc.poll() is None, "".join(output)[-5000:]
            assert time.monotonic() < deadline, "".join(output)[-5000:]
            time.sleep(0.5)
        text = "".join(output)
        token = re.search(r"customer API token: (sl_\S+)", text)
        database = re.search(r"embedded PostgreSQL 18 at (postgres://\S+)", text)
        assert token and database, text[-5000:]
        yield Demo(port, token[1], database[1], base / "pgdata", output)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the README's way to stop it
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(5)
        from config import embedded

        monkeypatch.setenv("EMBEDDED_PG_DIR", str(base / "pgdata"))
        if embedded.is_running(base):  # left running when the demo did not stop it
            embedded.stop(base)
        shutil.rmtree(base, ignore_errors=True)


def _substitutions(demo: Demo) -> list[tuple[str, Any]]:
    """What the README tells the reader to fill in: each must still be in the README. A callable is asked when its
    command runs (what the demo printed by then)."""
    return [
        ("API=http://127.0.0.1:8000/api/v1", f"API=http://127.0.0.1:{demo.port}/api/v1"),
        ("DJANGO_SECRET_KEY=... ", f"DJANGO_SECRET_KEY={secrets.token_urlsafe(45)} "),
        ("DATABASE_URL=... ", f"DATABASE_URL={demo.database_url} "),
        ("<the key from the link>", lambda: _printed_verification_key(demo)),
    ]


def _printed_verification_key(demo: Demo) -> str:
    """The key of the last verification link the demo printed on its console (its e-mail backend)."""
    deadline = time.monotonic() + 30
    while True:
        keys = re.findall(r"/accounts/confirm-email/([^/\s]+)/", "".join(demo.output))
        if keys or time.monotonic() > deadline:
            assert keys, "the demo printed no verification mail"
            return keys[-1]
        time.sleep(0.5)


_ASSIGNED_FROM_JQ = re.compile(r"(?s)^([A-Z_][A-Z0-9_]*)=\$\((.*?)\s*\|\s*(jq [^\n]*)\)\s*$")


def _runnable(text: str) -> str:
    """`NAME=$(request | jq filter)` prints the request's answer too (so it can be checked) and fails when the
    filter found nothing."""
    match = _ASSIGNED_FROM_JQ.match(text)
    if not match:
        return text
    name, request, jq = match.groups()
    return (
        f"__answer=$({request}) && {name}=$(printf '%s' \"$__answer\" | {jq}) && printf '%s\\n' \"$__answer\""
        f' && [ -n "${name}" ] && [ "${name}" != null ]'
    )


@pytest.mark.slow
def test_the_readme_shell_examples_run_as_written_against_a_running_demo(demo, tmp_path):
    blocks = [b for b in readme_blocks() if not excluded(b)]
    blocks.sort(key=lambda b: any(re.search(p, b.text) for p in LAST))  # stable: README order otherwise
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "readme", "-f", str(home / ".ssh" / "id_ed25519")],
        check=True,
    )
    venv_bin = str(ROOT / ".venv" / "bin")
    env = _clean_env(
        HOME=str(home),
        CUSTOMER_TOKEN=demo.token,  # "./scripts/dev prints its token"
        EMBEDDED_PG_DIR=str(demo.pg_dir),  # the demo's own, as `embedded_db` finds it on a fresh clone
        PATH=os.pathsep.join([venv_bin, *(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)]),
    )
    readme_text = README.read_text()
    substitutions = _substitutions(demo)
    for before, _after in substitutions:
        assert before in readme_text, f"the README no longer has {before!r}: update _substitutions"
    names = sorted({m for b in blocks for c in b.commands for m in re.findall(r"(?m)^([A-Z_][A-Z0-9_]*)=", c.text)})
    state = tmp_path / "state.sh"
    state.write_text("")
    failures: list[str] = []
    ran = 0
    for block in blocks:
        for command in block.commands:
            text = command.text
            for before, after in substitutions:
                if before in text:
                    text = text.replace(before, after() if callable(after) else after)
            script = (
                f"set -o pipefail\nsource {state}\n{{ {_runnable(text)}\n}}\nstatus=$?\n"
                f"declare -p {' '.join(names)} > {state}.new 2>/dev/null; mv {state}.new {state}\nexit $status\n"
            )
            deadline = time.monotonic() + (120 if command.reads() and command.shown else 0)
            while True:
                result = subprocess.run(
                    ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
                )
                problem = _problem(command, result)
                if problem is None or time.monotonic() >= deadline:
                    break
                time.sleep(2)
            ran += 1
            if problem:
                failures.append(f"README block {block.index}: {command.text}\n  -> {problem}")
                if result.returncode != 0:
                    break  # later commands of the block depend on this one
    assert ran >= 30
    assert not failures, "\n\n".join(failures) + "\n\ndemo output (tail):\n" + "".join(demo.output)[-3000:]


def _problem(command: Command, result: subprocess.CompletedProcess) -> str | None:
    if result.returncode != 0:
        return f"exit {result.returncode}: {(result.stdout + result.stderr).strip()[-1500:]}"
    values = json_values(result.stdout)
    for value in values:
        if isinstance(value, dict) and "error" in value and "error" not in command.shown:
            return f"answered an error: {json.dumps(value)[:1500]}"
    if command.shown:
        if not values:
            return f"the README shows an answer, got no JSON: {result.stdout.strip()[-1500:]}"
        problem = mismatch(shown_pattern(command.shown), values[0])
        if problem:
            return f"{problem} (answer: {json.dumps(values[0])[:1500]})"
    return None
