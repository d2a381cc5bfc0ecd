"""The lease page's scaling-rule form (marketplace/views_scaling.py): the same settings as
`PUT /api/v1/leases/{id}/scaling/`, checked here with the page's words and then by scheduler.elastic.scaling_set.

The schedule is a text box, one window a line: a 5-field UTC cron expression, `=`, and the most cards in every minute
it names (`* 0-8,18-23 * * * = 0`: no cards outside 09:00-18:00 UTC). A cron field never holds `=`, so the line
splits unambiguously."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.formfields import AsciiDecimalField, AsciiIntegerField
from marketplace.forms import IdempotentForm
from scheduler.elastic import MAX_GPUS_LIMIT, MAX_SCHEDULE_ENTRIES, Cron
from scheduler.models import ScalingRule

UTILIZATION = "utilization"
QUEUE = "queue"
MAX_COOLDOWN_SECONDS = 7 * 86400


def schedule_text(schedule: list[dict[str, Any]]) -> str:
    """The rule's schedule as the form's text (one `cron = max` line per window)."""
    return "\n".join(f"{entry['cron']} = {entry['max_gpus']}" for entry in schedule or [])


class ScalingForm(IdempotentForm):
    min_gpus = AsciiIntegerField(label=gettext_lazy("Fewest cards"), min_value=0, max_value=MAX_GPUS_LIMIT, initial=1)
    max_gpus = AsciiIntegerField(label=gettext_lazy("Most cards"), min_value=1, max_value=MAX_GPUS_LIMIT)
    target = forms.ChoiceField(
        label=gettext_lazy("Scale on"),
        choices=[
            (UTILIZATION, gettext_lazy("GPU utilisation of its cards")),
            (QUEUE, gettext_lazy("A queue depth your job reports")),
        ],
        initial=UTILIZATION,
        widget=forms.RadioSelect,
    )
    target_utilization_pct = AsciiIntegerField(
        label=gettext_lazy("Target utilisation (%)"), min_value=1, max_value=100, required=False, initial=70
    )
    queue_depth_per_gpu = AsciiIntegerField(
        label=gettext_lazy("Queued jobs per card"), min_value=1, max_value=1_000_000, required=False
    )
    step_up = AsciiIntegerField(
        label=gettext_lazy("Cards added a step"), min_value=1, max_value=MAX_GPUS_LIMIT, initial=1
    )
    step_down = AsciiIntegerField(
        label=gettext_lazy("Cards removed a step"), min_value=1, max_value=MAX_GPUS_LIMIT, initial=1
    )
    cooldown_seconds = AsciiIntegerField(
        label=gettext_lazy("Cool-down (seconds)"), min_value=0, max_value=MAX_COOLDOWN_SECONDS, initial=300
    )
    schedule = forms.CharField(
        label=gettext_lazy("Schedule"),
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "placeholder": "* 0-8,18-23 * * * = 0"}),
    )
    max_price_per_hour = AsciiDecimalField(
        label=gettext_lazy("Price ceiling an hour"),
        required=False,
        min_value=Decimal("0.000001"),
        max_digits=20,
        decimal_places=6,
    )

    def __init__(self, *args: Any, rule: ScalingRule | None = None, currency: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("min_gpus", "max_gpus", "target_utilization_pct", "queue_depth_per_gpu", "step_up", "step_down"):
            self.fields[name].widget.attrs["inputmode"] = "numeric"
        self.fields["max_price_per_hour"].widget.attrs["inputmode"] = "decimal"
        if currency:
            self.fields["max_price_per_hour"].label = _("Price ceiling an hour (%(currency)s)") % {"currency": currency}
        if rule is not None:
            for name in (
                "min_gpus",
                "max_gpus",
                "target_utilization_pct",
                "queue_depth_per_gpu",
                "step_up",
                "step_down",
                "cooldown_seconds",
                "max_price_per_hour",
            ):
                self.fields[name].initial = getattr(rule, name)
            self.fields["target"].initial = QUEUE if rule.queue_depth_per_gpu is not None else UTILIZATION
            self.fields["schedule"].initial = schedule_text(rule.schedule)

    def clean_schedule(self) -> list[dict[str, Any]]:
        entries = []
        problems = []
        lines = [line.strip() for line in (self.cleaned_data.get("schedule") or "").splitlines()]
        for number, line in enumerate((line for line in lines if line), start=1):
            cron, equals, cap = line.rpartition("=")
            cron, cap = cron.strip(), cap.strip()
            if not equals or not cron or not cap.isascii() or not cap.isdigit():
                problems.append(
                    _("Line %(line)s: write a cron expression, = and the most cards, e.g. %(example)s.")
                    % {"line": number, "example": "* 0-8,18-23 * * * = 0"}
                )
                continue
            try:
                Cron.parse(cron)
            except ValueError:
                problems.append(
                    _("Line %(line)s: %(cron)s is not a cron expression of 5 fields (minute hour day month weekday).")
                    % {"line": number, "cron": cron}
                )
                continue
            entries.append({"cron": cron, "max_gpus": int(cap)})
        if len(entries) > MAX_SCHEDULE_ENTRIES:
            problems.append(_("At most %(count)s schedule lines.") % {"count": MAX_SCHEDULE_ENTRIES})
        if problems:
            raise forms.ValidationError(problems)
        return entries

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        low, high = data.get("min_gpus"), data.get("max_gpus")
        if low is not None and high is not None and low > high:
            self.add_error("min_gpus", _("The fewest cards cannot be more than the most."))
        target = data.get("target")
        if (
            target == UTILIZATION
            and data.get("target_utilization_pct") is None
            and "target_utilization_pct" not in self.errors
        ):
            self.add_error("target_utilization_pct", _("Give the utilisation to aim for, from 1 to 100 %."))
        if target == QUEUE and data.get("queue_depth_per_gpu") is None and not self.has_error("queue_depth_per_gpu"):
            self.add_error("queue_depth_per_gpu", _("Give how many queued jobs one card should take."))
        if low is not None and high is not None and low <= high:
            outside = [e for e in data.get("schedule") or [] if not low <= e["max_gpus"] <= high]
            if outside:
                self.add_error(
                    "schedule",
                    _("A window's most cards must lie between the fewest (%(low)s) and the most (%(high)s).")
                    % {"low": low, "high": high},
                )
        return data

    def settings(self) -> dict[str, Any]:
        """The rule's settings for scheduler.elastic.scaling_set (call after is_valid)."""
        data = self.cleaned_data
        queue = data["target"] == QUEUE
        return {
            "min_gpus": data["min_gpus"],
            "max_gpus": data["max_gpus"],
            "target_utilization_pct": None if queue else data["target_utilization_pct"],
            "queue_depth_per_gpu": data["queue_depth_per_gpu"] if queue else None,
            "step_up": data["step_up"],
            "step_down": data["step_down"],
            "cooldown_seconds": data["cooldown_seconds"],
            "schedule": data["schedule"],
            "max_price_per_hour": data.get("max_price_per_hour"),
        }
