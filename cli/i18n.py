"""The CLI's own translations: English, and 简体中文 from cli/locale (gettext domain `suanli-cli`).

The language is picked once, before any command is defined, so `--help` is translated too: `--lang` on the
command line, else SUANLI_LANG, LC_ALL, LC_MESSAGES, LANGUAGE or LANG. Any Chinese locale (zh, zh_CN, zh_Hans, ...)
selects zh_Hans. click's own words ("Usage:", "Options:") come from the same catalogue: click looks them up in
gettext's default domain, which this module binds to it."""

from __future__ import annotations

import gettext
import os
import sys
from pathlib import Path

DOMAIN = "suanli-cli"
LOCALEDIR = Path(__file__).with_name("locale")
LANGUAGES = ("en", "zh_Hans")


def normalise(value: str | None) -> str | None:
    """`zh_CN.UTF-8`, `zh-Hans`, `zh` -> zh_Hans; `en_US`, `C`, `POSIX` -> en; anything else None."""
    if not value:
        return None
    head = value.split(":")[0].split(".")[0].split("@")[0].replace("-", "_").lower()
    if head.startswith("zh"):
        return "zh_Hans"
    if head.startswith("en") or head in {"c", "posix"}:
        return "en"
    return None


def _from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--lang" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--lang="):
            return arg.split("=", 1)[1]
    return None


def pick_language(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """The language to speak: the first of --lang and the locale variables that names one we have."""
    environ = os.environ if environ is None else environ
    candidates = [_from_argv(sys.argv[1:] if argv is None else argv)]
    candidates += [environ.get(name) for name in ("SUANLI_LANG", "LC_ALL", "LC_MESSAGES", "LANGUAGE", "LANG")]
    for candidate in candidates:
        language = normalise(candidate)
        if language:
            return language
    return "en"


LANGUAGE = pick_language()
_translation = gettext.translation(DOMAIN, LOCALEDIR, languages=[LANGUAGE], fallback=True)
if LANGUAGE != "en":
    # click calls gettext.gettext (the default domain); point that at our catalogue, in our language.
    os.environ["LANGUAGE"] = LANGUAGE
    gettext.bindtextdomain(DOMAIN, str(LOCALEDIR))
    gettext.textdomain(DOMAIN)


def _(message: str) -> str:
    """`message` in the chosen language."""
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translation.ngettext(singular, plural, n)
