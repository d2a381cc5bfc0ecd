"""What a service's refusal says on a page, in the page's language: the one catalogue of the messages services raise
(a DomainError's message and its field problems), `error_text`, which every page and form shows them through, and
`place_errors`, which puts them beside a form's fields.

The API answers a DomainError in English (accounts/errors.py maps it to API.md's shape); a page shows the same
refusal translated. Error codes are too coarse to key the catalogue (one `invalid_state` covers several refusals, and a
field problem has no code), so it is keyed by the service's own English text, which is also what the API sends.
A message that carries a figure or a name is matched by its pattern and translated with the figure put back; any
other text passes through gettext (untranslated when the catalogue does not know it).
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

# The fixed messages services raise that reach a page, marked here (not at the raise) so that makemessages puts
# them in locale/<lang>/LC_MESSAGES/django.po.
MESSAGES = frozenset(
    {
        # marketplace.services (offers)
        gettext_noop("Price at least one plan."),
        gettext_noop("Check the prices."),
        gettext_noop("Not one of your servers."),
        gettext_noop("More cards than the server has."),
        gettext_noop("This server already has a live offer; change or delist it."),
        gettext_noop("A delisted offer cannot change."),
        # inventory.services (servers)
        gettext_noop("A server with this name already exists in your organization."),
        gettext_noop("Inactive GPU model."),
        gettext_noop("A whole number of GB, 0 or more."),
        # billing.invoicing (closing and reconciling a month)
        gettext_noop("A period is YYYY-MM."),
        gettext_noop("Use YYYY-MM, e.g. 2026-05."),
        # scheduler (leases) and its idempotency keys
        gettext_noop("Your organisation has an overdue invoice; pay it to start new leases."),
        gettext_noop("The cards are busy right now; try again."),
        gettext_noop("An offer was withdrawn while the cards were being placed; try again."),
        gettext_noop("Only card_hour leases can be resized."),
        gettext_noop("Only card_hour leases resize."),
        gettext_noop("Giving back that many cards would leave a server with fewer than its offer's minimum."),
        gettext_noop("That would leave a server with fewer cards than its offer's minimum."),
        gettext_noop("This Idempotency-Key was used with a different request."),
        # workloads.services and workloads.sshkeys
        gettext_noop("The lease is not active."),
        gettext_noop("The lease holds no cards on this server any more."),
        gettext_noop("Unknown workload."),
        gettext_noop("Paste one OpenSSH public key (the contents of a .pub file)."),
        gettext_noop("Paste exactly one OpenSSH public key, on one line."),
        gettext_noop("An OpenSSH public key looks like 'ssh-ed25519 AAAA... you@host'."),
        gettext_noop("That is a private key or a PEM file: paste the public key (the .pub file) instead."),
        gettext_noop("The key's base64 data is damaged."),
        gettext_noop("The key's data is not a valid key of its type."),
        gettext_noop("The key's type does not match its data."),
        gettext_noop("Unsupported key type."),
        gettext_noop("Too many keys."),
        gettext_noop("container or host."),
        gettext_noop("Unknown template."),
        gettext_noop("Not one of your keys."),
        gettext_noop("Host access comes with server_month leases only."),
        gettext_noop("Host access runs no image."),
        gettext_noop("Host access needs at least one SSH key."),
        gettext_noop("Name a template or an image."),
        gettext_noop("Not a valid image reference."),
        # workloads.volumes (the volumes page and the rent form's volume)
        gettext_noop("This server lends no volume storage."),
        gettext_noop("You already have a volume of this name."),
        gettext_noop("A whole number of GB, 1-100000."),
        gettext_noop("A live lease's workload mounts this volume; end or stop that lease first."),
        gettext_noop("A mount path is absolute (it starts with /), at most 255 characters."),
        gettext_noop("A mount path is printable ASCII without '\\', ':' or ','."),
        gettext_noop("A volume cannot be mounted on /."),
        gettext_noop("Each path once."),
        gettext_noop("Each volume once."),
        gettext_noop("All volumes of a workload must be on one server."),
        gettext_noop(
            "With host access a volume is mounted on the server itself, under /data, /mnt, /srv, /scratch or "
            "/workspace."
        ),
        gettext_noop("The volumes are on another server than the one asked for."),
        gettext_noop("A lease with volumes runs on their one server."),
        # workloads.volume_moves and lease_moves (a volume's or a stopped lease's move to another server)
        gettext_noop(
            "Moving copies this volume's data to the other server, switches the volume there, and then wipes the "
            'copy on this server. Tick consent ("consent": true) to go on.'
        ),
        gettext_noop("This volume is being moved already."),
        gettext_noop("This volume is not being moved (a finished move cannot be undone)."),
        gettext_noop(
            "A live lease's workload mounts this volume (a stopped lease keeps its volumes); end that lease first."
        ),
        gettext_noop("An earlier copy of this volume on that server is still being wiped; try again in a few minutes."),
        gettext_noop("The volume is on this server already; choose another one."),
        gettext_noop("This volume is being moved; cancel the move first."),
        gettext_noop("This lease's volumes are being moved to another server; it starts there once they are."),
        gettext_noop("This lease's volumes are being moved already."),
    }
)
# The messages that carry a figure or a name: their English pattern, and the text to show with the figure.
PATTERNS = (
    # scheduler: the largest request that could be met (said of the offer the rent form is on)
    (
        re.compile(r"^At most (?P<most>.*) can be allocated with these filters\.\Z", re.DOTALL),
        gettext_lazy("At most %(most)s can be rented from this offer right now."),
    ),
    # workloads
    (
        re.compile(r"^Key type (?P<type>.+) is not accepted: use ed25519, ECDSA or RSA \(2048 bits or more\)\.$"),
        gettext_lazy("Key type %(type)s is not accepted: use ed25519, ECDSA or RSA (2048 bits or more)."),
    ),
    (
        re.compile(r"^This RSA key has (?P<bits>\d+) bits; at least (?P<least>\d+) are needed \(or use ed25519\)\.$"),
        gettext_lazy("This RSA key has %(bits)s bits; at least %(least)s are needed (or use ed25519)."),
    ),
    (
        re.compile(r"^This key \((?P<fingerprint>\S+)\) is already on your account\.$"),
        gettext_lazy("This key (%(fingerprint)s) is already on your account."),
    ),
    (
        re.compile(r"^At least (?P<least>\d+) GB \(the template's minimum\), at most (?P<most>\d+)\.$"),
        gettext_lazy("At least %(least)s GB (the template's minimum), at most %(most)s."),
    ),
    # workloads.volumes
    (
        re.compile(r"^This server has (?P<free>\d+) GB of volume storage left\.$"),
        gettext_lazy("This server has %(free)s GB of volume storage left."),
    ),
    (re.compile(r"^Unknown volume (?P<id>\d+)\.$"), gettext_lazy("Unknown volume %(id)s.")),
    (
        re.compile(r"^Volume (?P<name>[a-z0-9-]+) is being moved to another server\.$"),
        gettext_lazy("Volume %(name)s is being moved to another server."),
    ),
    (
        re.compile(
            r"^Server (?P<server>\d+) has not got (?P<count>\d+) free cards of this model, or room for the lease's "
            r"volumes, now; nothing changed\.$"
        ),
        gettext_lazy(
            "Server %(server)s has not got %(count)s free cards of this model, or room for the lease's volumes, now; "
            "nothing changed."
        ),
    ),
    # scheduler.services.lease_start: no free cards on a stopped lease's server
    (
        re.compile(
            r"^Server (?P<server>\d+) has not got (?P<count>\d+) free cards now; nothing changed\. "
            r"(?P<cleaning>\d+) of its cards are being cleaned after the leases that used them: they are free once the "
            r"server reports them clean, normally within a minute; try again in (?P<seconds>\d+) seconds\.$"
        ),
        gettext_lazy(
            "Server %(server)s has not got %(count)s free cards now; nothing changed. %(cleaning)s of its cards are "
            "being cleaned after the leases that used them: they are free once the server reports them clean, "
            "normally within a minute; try again in %(seconds)s seconds."
        ),
    ),
    (
        re.compile(
            r"^Server (?P<server>\d+) has not got (?P<count>\d+) free cards now; nothing changed\. "
            r"Its cards are rented by other leases; try again later, or move its volumes to another server\.$"
        ),
        gettext_lazy(
            "Server %(server)s has not got %(count)s free cards now; nothing changed. Its cards are rented by other "
            "leases; try again later, or move its volumes to another server."
        ),
    ),
    # inventory.services (a server's disk lent for volumes) and the check workloads registers there
    (
        re.compile(
            r"^Its volumes take (?P<taken>\d+) GB of the disk lent for volumes: lend at least that much \(volumes "
            r"deleted and wiped free theirs\)\.$"
        ),
        gettext_lazy(
            "Its volumes take %(taken)s GB of the disk lent for volumes: lend at least that much (volumes deleted "
            "and wiped free theirs)."
        ),
    ),
    (
        re.compile(r"^At most the server's disk, (?P<disk>\d+) GB\.$"),
        gettext_lazy("At most the server's disk, %(disk)s GB."),
    ),
    (
        re.compile(r"^Volume (?P<name>\S+) is kept for a grace period \(your balance ran out\); top up first\.$"),
        gettext_lazy("Volume %(name)s is kept for a grace period (your balance ran out); top up first."),
    ),
    (
        re.compile(r"^Volume (?P<name>\S+) is mounted by another live lease\.$"),
        gettext_lazy("Volume %(name)s is mounted by another live lease."),
    ),
    (
        re.compile(r"^(?P<path>/.*): not under /proc, /sys or /dev\.\Z", re.DOTALL),
        gettext_lazy("%(path)s: not under /proc, /sys or /dev."),
    ),
    (
        re.compile(r"^(?P<path>.*): no empty, '\.' or '\.\.' parts\.\Z", re.DOTALL),
        gettext_lazy("%(path)s: no empty, '.' or '..' parts."),
    ),
)


def error_text(text: object) -> str:
    """A service's message or field problem (`DomainError.message`, an entry of its `fields`) in the page's
    language where the catalogue has it."""
    text = str(text)
    for pattern, translated in PATTERNS:
        match = pattern.match(text)
        if match:
            return str(translated) % match.groupdict()
    return _(text)


def place_errors(
    form: forms.Form, fields: dict[str, Any] | None, message: str, *, names: dict[str, str] | None = None
) -> None:
    """A service's refusal on `form`: each field problem beside the form field `names` maps its field to (the
    field of the same name when `names` is not given), the others above the form; the message above the form when
    no problem was placed."""
    placed = False
    for field, problems in (fields or {}).items():
        name = field if names is None else names.get(field)
        for problem in problems if isinstance(problems, list) else [problems]:
            form.add_error(name if name in form.fields else None, error_text(problem))
            placed = True
    if not placed:
        form.add_error(None, error_text(message))
