"""A volume's move to another server (issue 16: "an explicit, consented move to another server copies the volume
there with progress shown"). Imported by workloads/models.py, so Django registers it with the workloads app.

The Volume row itself moves: its `server` (and its price per GB-month, the target's) changes at the switch, when
the target's agent has reported the copy whole. Until then the source keeps the data and the target's disk is
reserved for the copy; after it, the source's old copy is wiped like a deleted volume (`source_wiped_at` when its
agent reports it). workloads/volume_moves.py has the services, billing/metering.py the billing rule.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from accounts.tenancy import TenantQuerySet
from inventory.models import Server


class MoveState(models.TextChoices):
    PENDING = "pending", _("Waiting for the source server")  # asked for; the source's agent has sent nothing yet
    COPYING = "copying", _("Copying")  # chunks staged on the platform; the target reads and unpacks them
    DONE = "done", _("Moved")  # the target reported the copy whole: the volume is on the target now
    CANCELLED = "cancelled", _("Cancelled")  # by the customer before the switch; the target's copy is wiped
    FAILED = "failed", _("Failed")  # a side reported it cannot go on; the volume stays where it was


LIVE_MOVE_STATES = (MoveState.PENDING, MoveState.COPYING)


class VolumeMove(models.Model):
    """One consented move of a volume from `source` to `target` (see the module docstring)."""

    volume = models.ForeignKey("workloads.Volume", on_delete=models.PROTECT, related_name="moves")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="volume_moves")
    source = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="+")
    target = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="+")
    # A stopped lease whose volumes move with it ("move my volumes and start there"): its server follows them.
    lease = models.ForeignKey(
        "scheduler.Lease", null=True, blank=True, on_delete=models.PROTECT, related_name="volume_moves"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=10, choices=MoveState.choices, default=MoveState.PENDING)
    # The volume's price per GB-month before the switch and after it (the target's offer, in the volume's currency).
    source_price = models.DecimalField(max_digits=14, decimal_places=4)
    target_price = models.DecimalField(max_digits=14, decimal_places=4)
    chunk_bytes = models.PositiveIntegerField()
    chunks = models.PositiveIntegerField(default=0)  # staged on the platform, 0..chunks-1
    bytes_sent = models.BigIntegerField(default=0)  # staged by the source
    bytes_done = models.BigIntegerField(default=0)  # read by the target
    bytes_total = models.BigIntegerField(default=0)  # an estimate (the volume's use) until the source has sent all
    digest = models.CharField(max_length=64, blank=True)  # sha256 of the whole stream, once sent
    message = models.CharField(max_length=300, blank=True)
    requested_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    switched_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)  # cancelled or failed
    # The source's old copy (after the switch) and the target's partial one (after a cancel or failure), reported
    # destroyed by their agents; until then each keeps its size of its server's volume disk.
    source_wiped_at = models.DateTimeField(null=True, blank=True)
    target_wiped_at = models.DateTimeField(null=True, blank=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["pending", "copying", "done", "cancelled", "failed"]), name="move_state_valid"
            ),
            models.CheckConstraint(condition=~Q(source=models.F("target")), name="move_to_another_server"),
            models.CheckConstraint(condition=Q(state="done") | Q(switched_at__isnull=True), name="move_switched_at"),
            models.CheckConstraint(
                condition=Q(bytes_sent__gte=0, bytes_done__gte=0, bytes_total__gte=0), name="move_bytes_positive"
            ),
            # One move of a volume at a time.
            models.UniqueConstraint(
                fields=["volume"], condition=Q(state__in=["pending", "copying"]), name="move_one_live_per_volume"
            ),
        ]
        indexes = [
            models.Index(fields=["source", "state"], name="move_source_state"),
            models.Index(fields=["target", "state"], name="move_target_state"),
        ]

    def __str__(self) -> str:
        return f"move {self.pk} of volume {self.volume_id}: {self.source_id} -> {self.target_id} ({self.state})"
