"""Form widgets that write their markup in Python: byte for byte what Django's own widget templates
(django/forms/widgets/select.html, select_option.html, input.html, attrs.html) write for the same context.

Why: the offer search's filter form renders every option of every select through two template includes (the
option and its attributes); at the storefront's ~40 options that was the largest single cost of the page after its
SQL (issue 18). The context still comes from Django's `get_context`, so choices, the selected option, `required`,
`aria-*` and `checked` are decided exactly as before; only the string is written here.
tests/marketplace/test_search_page_render.py compares each against the template's output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.utils.formats import localize
from django.utils.html import conditional_escape, escape
from django.utils.safestring import SafeData, mark_safe


def _formatted(value: Any) -> str:
    """`{{ value|stringformat:'s' }}` under autoescape: escaped unless the value was already safe."""
    text = "%s" % (value,)  # noqa: UP031 -- the filter's own formatting, for any object
    return text if isinstance(value, SafeData) else escape(text)


def _shown(value: Any) -> str:
    """`{{ value }}` under autoescape: localized, then escaped unless safe."""
    return str(conditional_escape(localize(value)))


def _attrs(attrs: dict[str, Any]) -> str:
    """django/forms/widgets/attrs.html."""
    out = []
    for name, value in attrs.items():
        if value is False:
            continue
        out.append(f" {_shown(name)}" if value is True else f' {_shown(name)}="{_formatted(value)}"')
    return "".join(out)


def _option(widget: dict[str, Any]) -> str:
    """django/forms/widgets/select_option.html."""
    attrs = _attrs(widget["attrs"])
    return f'<option value="{_formatted(widget["value"])}"{attrs}>{_shown(widget["label"])}</option>\n'


def _select(widget: dict[str, Any]) -> str:
    """django/forms/widgets/select.html."""
    out = [f'<select name="{_shown(widget["name"])}"{_attrs(widget["attrs"])}>']
    for group_name, group_choices, _index in widget["optgroups"]:
        if group_name:
            out.append(f'\n  <optgroup label="{_shown(group_name)}">')
        for option in group_choices:
            out.append("\n  ")
            out.append(_WRITERS[option["template_name"]](option))
        if group_name:
            out.append("\n  </optgroup>")
    out.append("\n</select>\n")
    return "".join(out)


def _input(widget: dict[str, Any]) -> str:
    """django/forms/widgets/input.html."""
    value = "" if widget["value"] is None else f' value="{_formatted(widget["value"])}"'
    return f'<input type="{_shown(widget["type"])}" name="{_shown(widget["name"])}"{value}{_attrs(widget["attrs"])}>\n'


def _included_input(widget: dict[str, Any]) -> str:
    """number.html, checkbox.html, text.html: input.html included, then the file's own line end."""
    return _input(widget) + "\n"


_WRITERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "django/forms/widgets/select.html": _select,
    "django/forms/widgets/select_option.html": _option,
    "django/forms/widgets/input.html": _input,
    "django/forms/widgets/number.html": _included_input,
    "django/forms/widgets/checkbox.html": _included_input,
}


class PythonMarkup:
    """Mixin for a widget: write its markup in Python where its template is one of Django's own above (a project
    template override of those files would not be seen: there is none, and the tests compare against them)."""

    def _render(self, template_name: str, context: dict[str, Any], renderer: Any = None) -> str:
        writer = _WRITERS.get(template_name)
        if writer is None:
            return super()._render(template_name, context, renderer)  # type: ignore[misc]
        # Stripped, as django.forms.renderers.BaseRenderer.render strips the template's output.
        return mark_safe(writer(context["widget"]).strip())  # noqa: S308 -- every value in it is escaped above


class Select(PythonMarkup, forms.Select):
    pass


class NumberInput(PythonMarkup, forms.NumberInput):
    pass


class CheckboxInput(PythonMarkup, forms.CheckboxInput):
    pass
