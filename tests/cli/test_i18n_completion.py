"""`suanli --help` and its messages in English and 简体中文 (the CLI's own gettext catalogue, cli/locale, picked by
--lang, LC_ALL or LANG), every message of the CLI translated, and shell completion."""

from __future__ import annotations

import ast
import gettext
import subprocess
import sys

import pytest

from cli.i18n import normalise, pick_language
from tests.cli.conftest import REPO

CATALOGUE = REPO / "cli" / "locale" / "zh_Hans" / "LC_MESSAGES"


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "200", "HOME": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "env", "chinese"),
    [
        (["--help"], {"LANG": "zh_CN.UTF-8"}, True),
        (["--help"], {"LC_ALL": "zh_Hans", "LANG": "en_US.UTF-8"}, True),
        (["--help", "--lang", "zh_Hans"], {"LANG": "C.UTF-8"}, True),
        (["--help"], {"LANG": "C.UTF-8"}, False),
        (["--lang", "en", "--help"], {"LANG": "zh_CN.UTF-8"}, False),
        (["leases", "create", "--help"], {"LANG": "zh_CN.UTF-8"}, True),
    ],
)
def test_help_speaks_the_language_asked_for(args, env, chinese):
    result = _run(*args, env=env)
    assert result.returncode == 0, result.stderr
    if chinese:
        assert "用法" in result.stdout and "显示此帮助并退出" in result.stdout
        assert "Show this message" not in result.stdout
    else:
        assert "Usage:" in result.stdout and "Show this message and exit." in result.stdout
        assert "用法" not in result.stdout
    if args[:2] == ["leases", "create"]:
        assert "租用：任意计费方式" in result.stdout and "--idempotency-key" in result.stdout


def test_errors_and_query_errors_are_translated_too():
    result = _run("offers", "search", "cards=2", env={"LANG": "zh_CN.UTF-8"})
    assert result.returncode == 2
    assert "错误" in result.stderr and "cards 只能用 >= >，不能用 =" in result.stderr
    assert "  cards=2\n  ^^^^^^^" in result.stderr
    unknown = _run("leases", "nope", env={"LANG": "zh_CN.UTF-8"})
    assert unknown.returncode == 2 and "没有命令 'nope'" in unknown.stderr


def _messages() -> set[str]:
    """Every literal the CLI passes to _()."""
    found = set()
    for path in (REPO / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "_"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found


def test_every_message_has_a_chinese_translation_and_the_mo_is_compiled_from_the_po(tmp_path):
    messages = _messages()
    assert len(messages) > 200
    catalogue = gettext.GNUTranslations(open(CATALOGUE / "suanli-cli.mo", "rb"))  # noqa: SIM115
    untranslated = sorted(m for m in messages if catalogue.gettext(m) == m and m not in {"GPU", "FP16 TFLOPS"})
    assert not untranslated, untranslated
    for message in messages:  # the placeholders survive translation
        if "{" in message:
            assert set(_fields(message)) == set(_fields(catalogue.gettext(message))), message
    fresh = tmp_path / "fresh.mo"
    subprocess.run(["msgfmt", "--check", "-o", str(fresh), str(CATALOGUE / "suanli-cli.po")], check=True)
    assert fresh.read_bytes() == (CATALOGUE / "suanli-cli.mo").read_bytes(), "run msgfmt after editing the .po"


def _fields(text: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def test_the_language_is_picked_from_the_option_then_the_locale():
    assert normalise("zh_CN.UTF-8") == normalise("zh-Hans") == normalise("zh") == "zh_Hans"
    assert normalise("C") == normalise("en_GB.UTF-8") == "en"
    assert normalise("fr_FR.UTF-8") is None
    assert pick_language(["--lang", "zh_Hans"], {"LANG": "en_US"}) == "zh_Hans"
    assert pick_language(["--lang=en"], {"LC_ALL": "zh_CN"}) == "en"
    assert pick_language([], {"LC_ALL": "fr_FR", "LANG": "zh_CN.UTF-8"}) == "zh_Hans"
    assert pick_language([], {}) == "en"
    assert pick_language(["offers", "search", "--", "--lang", "zh_Hans"], {}) == "en"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_for_each_shell(shell):
    result = _run("completion", shell, env={"LANG": "C.UTF-8"})
    assert result.returncode == 0, result.stderr
    assert "_SUANLI_COMPLETE" in result.stdout


def test_completion_completes_commands_and_options():
    def complete(words: str) -> list[str]:
        env = {
            "LANG": "C.UTF-8",
            "_SUANLI_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        }
        result = _run(env=env)
        assert result.returncode == 0, result.stderr
        return [line.split(",", 1)[1] for line in result.stdout.splitlines()]

    assert complete("suanli leases cr") == ["create"]
    assert {"list", "show", "resize", "end"} <= set(complete("suanli leases "))
    assert "--plan" in complete("suanli leases create --pl")
    assert complete("suanli leases create --plan ") == ["card_hour", "server_month", "pflops_year"]
