"""What a lease runs: customers' SSH keys, launch templates, each lease's workload spec and, per server it spans, the
workload the server's agent runs with its last reported state; and each server's desired-state version.

Workloads sit above the scheduler (they read leases and allocations) and under billing, which charges a card-hour
lease from its workload's first `running` report (`Workload.started_at`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from accounts.tenancy import TenantQuerySet
from inventory.models import Server
from scheduler.models import Lease


class SshKey(models.Model):
    """An OpenSSH public key of one user (ed25519, ECDSA, or RSA of 2048 bits or more), validated on the way in."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100)
    public_key = models.TextField()
    key_type = models.CharField(max_length=40)
    bits = models.PositiveIntegerField()
    fingerprint = models.CharField(max_length=60)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "SSH key"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "fingerprint"], name="sshkey_unique_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class Template(models.Model):
    """A launch template: an image with its default command, ports and environment. Public ones (no organisation)
    are kept by staff; an organisation may keep private ones that only its members see."""

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="templates"
    )
    slug = models.SlugField(max_length=60)
    name = models.CharField(max_length=100)
    image = models.CharField(max_length=255)
    command = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    ports = models.JSONField(default=list, blank=True)
    min_disk_gb = models.PositiveIntegerField(default=20)
    description = models.TextField(blank=True)
    description_zh = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["slug"], condition=Q(organization__isnull=True), name="template_public_slug_unique"
            ),
            models.UniqueConstraint(fields=["organization", "slug"], name="template_slug_unique_per_org"),
        ]

    def __str__(self) -> str:
        return self.name


class Access(models.TextChoices):
    CONTAINER = "container", _("Container")
    HOST = "host", _("Host access")


class WorkloadSpec(models.Model):
    """What a lease runs on every server it spans, fixed when the lease is made. The keys are copied in (a key
    deleted later keeps working for this lease until it ends, as on every cloud)."""

    lease = models.OneToOneField(Lease, on_delete=models.CASCADE, related_name="workload_spec")
    access = models.CharField(max_length=16, choices=Access.choices, default=Access.CONTAINER)
    template = models.ForeignKey(Template, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    image = models.CharField(max_length=255, blank=True)
    command = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    ports = models.JSONField(default=list, blank=True)
    ssh_keys = models.JSONField(default=list, blank=True)  # [{"name", "fingerprint", "public_key"}]
    disk_gb = models.PositiveIntegerField(default=20)
    # A notebook (port 8888) is protected by a token of its own, shown to the customer in its URL.
    notebook_token = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "lease__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(access__in=["container", "host"]), name="workloadspec_access_valid"),
            models.CheckConstraint(condition=Q(access="host") | ~Q(image=""), name="workloadspec_image_unless_host"),
        ]

    def __str__(self) -> str:
        return f"workload of lease {self.lease_id}"


class WorkloadState(models.TextChoices):
    PENDING = "pending", _("Pending")
    PULLING = "pulling", _("Pulling the image")
    STARTING = "starting", _("Starting")
    RUNNING = "running", _("Running")
    EXITED = "exited", _("Exited")
    FAILED = "failed", _("Failed")
    STOPPING = "stopping", _("Stopping")
    CLEANED = "cleaned", _("Cleaned up")


class Workload(models.Model):
    """A lease's workload on one server: what the customer asked for it (run or stopped, restarts) and what the
    server's agent last reported of it. Or a data-access session's container (`data_access` set, no lease): the
    same agent pipeline runs it, without cards (workloads/data_access.py)."""

    class Desired(models.TextChoices):
        RUNNING = "running", _("Running")
        STOPPED = "stopped", _("Stopped")

    lease = models.ForeignKey(Lease, null=True, blank=True, on_delete=models.CASCADE, related_name="workloads")
    data_access = models.OneToOneField(
        "DataAccess", null=True, blank=True, on_delete=models.CASCADE, related_name="workload"
    )
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="workloads")
    desired = models.CharField(max_length=16, choices=Desired.choices, default=Desired.RUNNING)
    generation = models.PositiveIntegerField(default=0)  # a restart asks the agent for the next one
    state = models.CharField(max_length=16, choices=WorkloadState.choices, default=WorkloadState.PENDING)
    progress = models.PositiveSmallIntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    ports = models.JSONField(default=dict, blank=True)  # {"22": 40022}: container port -> published host port
    # First `running` report: a card_hour lease is charged from here on this server (billing/metering.py).
    started_at = models.DateTimeField(null=True, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    TENANT_FIELD = "lease__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["lease", "server"], name="workload_one_per_lease_and_server"),
            models.CheckConstraint(
                condition=Q(
                    state__in=["pending", "pulling", "starting", "running", "exited", "failed", "stopping", "cleaned"]
                ),
                name="workload_state_valid",
            ),
            models.CheckConstraint(condition=Q(desired__in=["running", "stopped"]), name="workload_desired_valid"),
            models.CheckConstraint(
                condition=Q(lease__isnull=False, data_access__isnull=True)
                | Q(lease__isnull=True, data_access__isnull=False),
                name="workload_lease_or_data_access",
            ),
        ]
        indexes = [
            models.Index(fields=["server", "state"], name="workload_server_state"),
            models.Index(fields=["state", "state_changed_at"], name="workload_state_since"),
        ]

    def __str__(self) -> str:
        if self.lease_id is None:
            return f"workload {self.pk} of data access {self.data_access_id} on server {self.server_id}"
        return f"workload {self.pk} of lease {self.lease_id} on server {self.server_id}"


class DesiredVersion(models.Model):
    """The version of a server's desired state: it goes up whenever what the agent is told changes (the digest of
    the last answer tells), so an agent applies each change once and reports the version it has applied."""

    server = models.OneToOneField(Server, on_delete=models.CASCADE, primary_key=True, related_name="+")
    version = models.BigIntegerField(default=0)
    digest = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"server {self.server_id} v{self.version}"


# --- volumes: storage that outlives a lease -------------------------------------------------------------------


class VolumeState(models.TextChoices):
    CREATING = "creating", _("Creating")  # asked for; the agent has not reported it made yet
    READY = "ready", _("Ready")  # made, mounted by no running workload
    IN_USE = "in_use", _("In use")  # mounted by a workload of a live lease
    GRACE = "grace", _("Kept for a grace period")  # its organisation ran out of money: wiped at `wipe_at`
    WIPING = "wiping", _("Wiping")  # deleted (or its grace ran out): the agent destroys its data
    WIPED = "wiped", _("Wiped")  # the agent reported its data destroyed


class Volume(models.Model):
    """Storage an organisation keeps on one server, apart from any lease: it survives the lease's end, preemption
    and failover, and a later workload of the same organisation on that server mounts it again.

    Its price per GB-month is fixed from the server's offer when it is made (in the organisation's currency). It
    is billed from `created_at` until its data is wiped (`wiped_at`), whatever its state in between: the disk is
    taken all that time; but only once its agent has made it (`ready_at`): until then it is not metered, and a
    volume never made (its agent failed, or did not make it within SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS, which
    stays within the meter's hour of look-back) is never billed. A wiped volume's row stays, for the invoices and
    the organisation's log.
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="volumes")
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="volumes")
    name = models.CharField(max_length=63)
    size_gb = models.PositiveIntegerField()
    used_gb = models.DecimalField(max_digits=12, decimal_places=3, default=0)
    state = models.CharField(max_length=10, choices=VolumeState.choices, default=VolumeState.CREATING)
    price_per_gb_month = models.DecimalField(max_digits=14, decimal_places=4)
    currency = models.CharField(max_length=3, choices=Organization.Currency.choices)
    created_at = models.DateTimeField()
    ready_at = models.DateTimeField(null=True, blank=True)
    # The end of its grace period (state grace): wiped then unless its organisation pays first.
    wipe_at = models.DateTimeField(null=True, blank=True)
    wipe_requested_at = models.DateTimeField(null=True, blank=True)
    wiped_at = models.DateTimeField(null=True, blank=True)
    # Why a volume that was never made went to wiping (its agent could not make it, or did not in time): shown on
    # the API and the volumes page. Empty for every other volume.
    message = models.CharField(max_length=300, blank=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["creating", "ready", "in_use", "grace", "wiping", "wiped"]),
                name="volume_state_valid",
            ),
            models.CheckConstraint(condition=Q(size_gb__gte=1, size_gb__lte=100_000), name="volume_size_1_100000"),
            models.CheckConstraint(condition=Q(price_per_gb_month__gt=0), name="volume_price_positive"),
            models.CheckConstraint(condition=Q(state="wiped") | Q(wiped_at__isnull=True), name="volume_wiped_at"),
            models.CheckConstraint(condition=Q(state="grace") | Q(wipe_at__isnull=True), name="volume_wipe_at"),
            # One live volume of a name per organisation (a wiped one frees its name).
            models.UniqueConstraint(
                fields=["organization", "name"], condition=~Q(state="wiped"), name="volume_name_unique_live"
            ),
        ]
        indexes = [models.Index(fields=["server", "state"], name="volume_server_state")]

    def __str__(self) -> str:
        return f"volume {self.name} ({self.size_gb} GB) on {self.server_id}"


class VolumeMount(models.Model):
    """A workload spec mounts one of its organisation's volumes (on the lease's server) at `path`."""

    spec = models.ForeignKey(WorkloadSpec, on_delete=models.CASCADE, related_name="mounts")
    volume = models.ForeignKey(Volume, on_delete=models.PROTECT, related_name="mounts")
    path = models.CharField(max_length=255)

    TENANT_FIELD = "volume__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["spec", "volume"], name="mount_volume_once_per_spec"),
            models.UniqueConstraint(fields=["spec", "path"], name="mount_path_once_per_spec"),
        ]

    def __str__(self) -> str:
        return f"{self.volume_id} at {self.path}"


# --- data access: reaching volumes without cards ----------------------------------------------------------------


class DataAccess(models.Model):
    """A no-GPU data-access session (issue 16): a small container with SSH and some of an organisation's volumes,
    on their server, beside any lease and taking no card. Priced per hour (fixed when opened, in the organisation's
    currency), billed per second from its container's first `running` report until it ends; it ends when asked
    (DELETE), at `ends_at` (SUANLI_DATA_ACCESS_MAX_HOURS after it was opened) or when a volume of it is wiped.
    Its container is a `Workload` row whose `data_access` is this session (workloads/data_access.py)."""

    class State(models.TextChoices):
        OPEN = "open", _("Open")
        ENDED = "ended", _("Ended")

    class EndReason(models.TextChoices):
        DELETED = "deleted", _("Ended by the customer")
        EXPIRED = "expired", _("Its maximum duration passed")
        WIPED = "wiped", _("A volume of it was wiped")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="data_access_sessions")
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="+")
    volumes = models.ManyToManyField(Volume, related_name="access_sessions")
    ssh_keys = models.JSONField(default=list, blank=True)  # [{"name", "fingerprint", "public_key"}], copies
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    price_per_hour = models.DecimalField(max_digits=14, decimal_places=4)
    currency = models.CharField(max_length=3, choices=Organization.Currency.choices)
    created_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=8, choices=EndReason.choices, blank=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name = "data access session"
        constraints = [
            models.CheckConstraint(condition=Q(state__in=["open", "ended"]), name="dataaccess_state_valid"),
            models.CheckConstraint(condition=Q(price_per_hour__gt=0), name="dataaccess_price_positive"),
            models.CheckConstraint(
                condition=Q(state="open", ended_at__isnull=True, end_reason="")
                | Q(state="ended", ended_at__isnull=False) & ~Q(end_reason=""),
                name="dataaccess_ended_fields",
            ),
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("created_at")), name="dataaccess_ends_after"),
        ]
        indexes = [models.Index(fields=["state", "ends_at"], name="dataaccess_state_ends")]

    def __str__(self) -> str:
        return f"data access {self.pk} on {self.server_id}"


from workloads.models_moves import MoveState, VolumeMove  # noqa: E402, F401 - registered with this app


class WorkloadLog(models.Model):
    """The latest tail of a lease workload's output (its container's stdout and stderr), as its server's agent last
    sent it; one row per workload, replaced by each newer tail (workloads/workload_logs.py)."""

    workload = models.OneToOneField(Workload, on_delete=models.CASCADE, primary_key=True, related_name="log")
    text = models.TextField(blank=True)
    truncated = models.BooleanField(default=False)  # the output was longer than the tail the agent keeps
    captured_at = models.DateTimeField()  # when the agent read it
    received_at = models.DateTimeField()

    TENANT_FIELD = "workload__lease__organization"
    objects = TenantQuerySet.as_manager()

    def __str__(self) -> str:
        return f"output of workload {self.workload_id}"
