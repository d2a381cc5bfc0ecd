"""ScalingRule.status_notes (what the beat job said, as data: [{"code", "params"}], scheduler.elastic.NOTE_SENTENCES)
in place of the prose column status_message, which is now rendered from the notes in English. A rule's old message is
kept as one note "message" carrying its text (shown as it is, as another service's refusal is) until the next beat
run, within a minute, writes its notes afresh. Backwards: the text of such notes comes back; other notes leave an
empty message until the next run."""

from django.db import migrations, models


def message_to_notes(apps, schema_editor):
    ScalingRule = apps.get_model("scheduler", "ScalingRule")
    for rule in ScalingRule.objects.exclude(status_message="").only("pk", "status_message").iterator():
        notes = [{"code": "message", "params": {"text": rule.status_message}}]
        ScalingRule.objects.filter(pk=rule.pk).update(status_notes=notes)


def notes_to_message(apps, schema_editor):
    ScalingRule = apps.get_model("scheduler", "ScalingRule")
    for rule in ScalingRule.objects.exclude(status_notes=[]).only("pk", "status_notes").iterator():
        texts = [n.get("params", {}).get("text", "") for n in rule.status_notes if n.get("code") == "message"]
        ScalingRule.objects.filter(pk=rule.pk).update(status_message=" ".join(t for t in texts if t)[:1000])


class Migration(migrations.Migration):
    dependencies = [("scheduler", "0010_resale")]

    operations = [
        migrations.AddField(
            model_name="scalingrule",
            name="status_notes",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.RunPython(message_to_notes, notes_to_message),
        migrations.RemoveField(model_name="scalingrule", name="status_message"),
    ]
