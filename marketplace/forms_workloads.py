"""Forms of the workload pages: adding an SSH key, the workload section of the rent form, and the Restart and Stop
buttons of a lease's workload.

The rules (what a key must be, which templates and keys a lease may use, host access only by the server-month)
are workloads.services'; these forms collect the fields and put the service's field errors beside them, in the
page's language.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _

from accounts.error_text import place_errors
from accounts.errors import InvalidInput
from accounts.models import Organization, User
from inventory.models import Offer
from marketplace.forms import IdempotentForm
from scheduler.models import Plan
from workloads.access import ssh_keys_of, templates_visible
from workloads.models import Access, SshKey, Template
from workloads.volumes import mountable_volumes

# --- SSH keys ---------------------------------------------------------------------------------------------


class SshKeyForm(forms.Form):
    public_key = forms.CharField(
        label=gettext_lazy("Public key"),
        max_length=16384,
        widget=forms.Textarea(
            attrs={
                "rows": 4,
                "spellcheck": "false",
                "autocomplete": "off",
                "placeholder": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA… you@laptop",
            }
        ),
    )
    name = forms.CharField(
        label=gettext_lazy("Name (optional)"),
        max_length=100,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "placeholder": gettext_lazy("e.g. work laptop")}),
    )

    def add_service_errors(self, exc: InvalidInput) -> None:
        place_errors(self, exc.fields, exc.message, names={"public_key": "public_key", "name": "name"})


# --- the rent form's workload section ---------------------------------------------------------------------


def template_description(template: Template) -> str:
    """The template's description in the page's language (the English one when it has no Chinese one)."""
    if (get_language() or "").startswith("zh") and template.description_zh:
        return template.description_zh
    return template.description


class WorkloadForm(forms.Form):
    """What the lease runs (optional): a template of the catalogue or the organisation's, or an image; the user's
    SSH keys; for a server-month of an offer with host access, a container or SSH onto the bare server. Its
    fields are sent with the rent form, prefixed `workload-`."""

    prefix = "workload"

    template = forms.TypedChoiceField(
        label=gettext_lazy("Template"), coerce=int, empty_value=None, required=False, widget=forms.RadioSelect
    )
    image = forms.CharField(
        label=gettext_lazy("Or your own image"),
        max_length=255,
        required=False,
        widget=forms.TextInput(
            attrs={"placeholder": "nvcr.io/nvidia/pytorch:24.10-py3", "autocomplete": "off", "spellcheck": "false"}
        ),
    )
    access = forms.ChoiceField(
        label=gettext_lazy("Access"),
        required=False,
        initial=Access.CONTAINER,
        choices=[
            (Access.CONTAINER, gettext_lazy("A container of the image")),
            (Access.HOST, gettext_lazy("SSH onto the bare server")),
        ],
        widget=forms.RadioSelect,
    )
    ssh_keys = forms.ModelMultipleChoiceField(
        label=gettext_lazy("SSH keys"), queryset=None, required=False, widget=forms.CheckboxSelectMultiple
    )
    # Shown only when the organisation has ready volumes on the offer's server (workloads.volumes): one of them,
    # mounted into the workload's container at `volume_path`.
    volume = forms.TypedChoiceField(label=gettext_lazy("Volume"), coerce=int, empty_value=None, required=False)
    volume_path = forms.CharField(label=gettext_lazy("Mount path"), max_length=255, required=False, initial="/data")

    def __init__(
        self, *args: Any, offer: Offer, org: Organization | None = None, user: User | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.templates = list(templates_visible(org))
        self.fields["template"].choices = [
            ("", _("None: just the cards")),
            *((t.pk, t.name) for t in self.templates),
        ]
        self.fields["template"].initial = ""
        keys = ssh_keys_of(user) if user is not None and user.is_authenticated else SshKey.objects.none()
        self.fields["ssh_keys"].queryset = keys
        self.keys = list(keys)
        # Every key is ticked at first: most people want all of theirs on what they rent.
        self.fields["ssh_keys"].initial = [key.pk for key in self.keys]
        self.host_access = offer.host_access
        if not offer.host_access:
            del self.fields["access"]
        self.volumes = list(mountable_volumes(org, offer.server)) if org is not None else []
        if self.volumes:
            self.fields["volume"].choices = [
                ("", _("None")),
                *((v.pk, _("%(name)s (%(size)s GB)") % {"name": v.name, "size": v.size_gb}) for v in self.volumes),
            ]
        else:
            del self.fields["volume"], self.fields["volume_path"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        host = data.get("access") == Access.HOST
        if (
            data.get("volume") is not None
            and not host
            and data.get("template") is None
            and not (data.get("image") or "").strip()
        ):
            self.add_error("volume", _("A volume is mounted into a workload: choose a template or an image too."))
        return data

    def template_options(self) -> list[dict[str, Any]]:
        """Each radio of the template choice with its template (None for "no workload") and description."""
        radios = list(self["template"])
        templates: list[Template | None] = [None, *self.templates]
        return [
            {
                "radio": radio,
                "template": template,
                "description": template_description(template) if template else "",
            }
            for radio, template in zip(radios, templates, strict=True)
        ]

    @property
    def chosen_access(self) -> str:
        if self.is_bound and "access" in self.fields:
            value = self.data.get(self.add_prefix("access"))
            if value in Access.values:
                return str(value)
        return Access.CONTAINER

    def workload(self, plan: str) -> dict[str, Any] | None:
        """The `workload` argument of workloads.services.lease_create from a valid form; None when none was asked
        for (no template, no image, no host access): the lease is then made as before, without a workload."""
        data = self.cleaned_data
        access = data.get("access") if plan == Plan.SERVER_MONTH and self.host_access else Access.CONTAINER
        keys = [key.pk for key in data.get("ssh_keys") or []]
        mounts = (
            [{"volume": data["volume"], "path": (data.get("volume_path") or "").strip() or "/data"}]
            if data.get("volume") is not None
            else []
        )
        if access == Access.HOST:
            # The image choices are for a container; the page hides them once host access is picked. A volume
            # chosen anyway goes with it, for the service to refuse beside the volume (never silently dropped).
            return {"access": Access.HOST, "ssh_keys": keys, **({"volumes": mounts} if mounts else {})}
        template, image = data.get("template"), (data.get("image") or "").strip()
        if template is None and not image and not mounts:
            return None
        body: dict[str, Any] = {"access": Access.CONTAINER, "ssh_keys": keys}
        if template is not None:
            body["template"] = template
        if image:
            body["image"] = image
        if mounts:
            body["volumes"] = mounts
        return body

    def add_service_errors(self, fields: dict[str, Any] | None, message: str) -> None:
        names = {"template": "template", "image": "image", "ssh_keys": "ssh_keys", "access": "access"}
        names["volumes"] = "volume" if "volume" in self.fields else "template"
        if "access" not in self.fields:
            names["access"] = "template"
        place_errors(self, fields, message, names=names)


# --- a workload's buttons ---------------------------------------------------------------------------------


class WorkloadActionForm(IdempotentForm):
    """Restart or Stop: only the key that makes a double click act once."""
