"""The GPU catalogue, providers' servers and their GPUs."""

from __future__ import annotations

from datetime import datetime

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from accounts.tenancy import TenantQuerySet


class Interconnect(models.TextChoices):
    NVLINK = "nvlink", "NVLink / NVSwitch"
    PCIE = "pcie", "PCIe"
    INFINITY_FABRIC = "infinity_fabric", "AMD Infinity Fabric"
    HCCS = "hccs", "Huawei HCCS"


class GpuModelQuerySet(models.QuerySet):
    def get_by_natural_key(self, slug: str) -> GpuModel:
        return self.get(slug=slug)


class GpuModel(models.Model):
    """A catalogue entry: one GPU product with its rated figures (each with a public source).

    The catalogue ships as `inventory/fixtures/gpu_models.json`, loaded by a data migration; `slug` is its
    natural key, so `loaddata gpu_models` also updates rows in place instead of duplicating them.
    """

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100, unique=True)
    vendor = models.CharField(max_length=50)
    memory_gb = models.PositiveIntegerField()
    memory_type = models.CharField(max_length=20, blank=True)
    fp16_tflops = models.DecimalField(
        max_digits=9, decimal_places=2, help_text=_("Dense FP16/BF16 tensor TFLOPS (no sparsity).")
    )
    # Null where the vendor publishes no figure (we do not guess one); `sources["notes"]` says so.
    fp32_tflops = models.DecimalField(max_digits=9, decimal_places=2, null=True, blank=True)
    tdp_w = models.PositiveIntegerField(null=True, blank=True)
    interconnect = models.CharField(max_length=20, choices=Interconnect.choices)
    interconnect_gbps = models.PositiveIntegerField(null=True, blank=True, help_text=_("GB/s per GPU"))
    nvml_names = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    sources = models.JSONField(default=dict, help_text=_("Figure name -> public source URL"))
    active = models.BooleanField(default=True)

    objects = GpuModelQuerySet.as_manager()

    class Meta:
        verbose_name = "GPU model"
        ordering = ["vendor", "name"]
        constraints = [
            models.CheckConstraint(condition=Q(fp16_tflops__gt=0), name="gpumodel_fp16_positive"),
            models.CheckConstraint(condition=Q(memory_gb__gt=0), name="gpumodel_memory_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def natural_key(self) -> tuple[str]:
        return (self.slug,)

    def matches_nvml_name(self, name: str) -> bool:
        """Whether NVML's product name `name` is one of this model's (case and outer spaces ignored)."""
        wanted = " ".join(name.split()).casefold()
        return any(" ".join(known.split()).casefold() == wanted for known in self.nvml_names)


class Runtime(models.TextChoices):
    """How a server's agent gives customers their cards: containers (Docker Engine), or the bare host itself
    (a lease-only user with the customer's SSH keys, for whole-server rentals)."""

    DOCKER = "docker", _("Containers (Docker)")
    HOST = "host", _("Bare server (host access)")


class Server(models.Model):
    """A provider's GPU host. Enrolled by its agent with a one-time token.

    Only a SHA-256 hash of the enrolment token is stored (the token itself is shown once); an empty hash
    means no token is outstanding.
    """

    class Status(models.TextChoices):
        PENDING_ENROLLMENT = "pending_enrollment", _("Waiting for the agent")
        ONLINE = "online", _("Online")
        UNREACHABLE = "unreachable", _("Unreachable")
        RETIRED = "retired", _("Retired")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="servers")
    name = models.CharField(max_length=100)
    region = models.CharField(max_length=50)
    site = models.CharField(max_length=100, blank=True)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="servers")
    gpu_count = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(16)])
    cpu_cores = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(4096)])
    ram_gb = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65536)])
    disk_gb = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(10_000_000)])
    network_gbps = models.PositiveIntegerField(default=25, validators=[MaxValueValidator(100_000)])
    interconnect = models.CharField(max_length=20, choices=Interconnect.choices, blank=True)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING_ENROLLMENT)
    drained = models.BooleanField(default=False)
    drained_reason = models.CharField(max_length=200, blank=True)
    drained_at = models.DateTimeField(null=True, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    enrollment_token_hash = models.CharField(max_length=64, blank=True)
    enrollment_expires_at = models.DateTimeField(null=True, blank=True)
    enrolled_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Agent credentials: the secret is kept encrypted (inventory/secretbox.py) because signatures are checked
    # with it; `last_seq` is the highest report sequence accepted, so a replay or retry is a no-op.
    agent_id = models.UUIDField(null=True, blank=True, unique=True)
    agent_secret_sealed = models.TextField(blank=True)
    last_seq = models.BigIntegerField(default=0)
    hardware_flag = models.CharField(
        max_length=200, blank=True, help_text=_("What the agent reported that does not match the registration")
    )
    # Workloads (workloads/): how the agent runs customers' work here, the host name customers connect to, and the
    # host ports the agent may publish containers' ports on.
    runtime = models.CharField(max_length=16, choices=Runtime.choices, default=Runtime.DOCKER)
    public_host = models.CharField(
        max_length=255, blank=True, help_text=_("Host name or address customers connect to (default: the hostname)")
    )
    port_range_start = models.PositiveIntegerField(default=40000)
    port_range_end = models.PositiveIntegerField(default=40999)
    # Storage (workloads.Volume): how much of its disk the provider lends for customers' volumes (0: none); their
    # price per GB-month is the offer's.
    volume_disk_gb = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(10_000_000)])

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="server_name_unique_per_org"),
            models.CheckConstraint(condition=Q(runtime__in=["docker", "host"]), name="server_runtime_valid"),
            models.CheckConstraint(
                condition=Q(port_range_start__gte=1024, port_range_end__lte=65535)
                & Q(port_range_end__gte=models.F("port_range_start")),
                name="server_port_range_valid",
            ),
            # Enrolment looks a server up by its token hash; unique, so a token can never name two servers.
            models.UniqueConstraint(
                fields=["enrollment_token_hash"],
                condition=~Q(enrollment_token_hash=""),
                name="server_enrollment_token_unique",
            ),
            models.CheckConstraint(condition=Q(gpu_count__gte=1, gpu_count__lte=16), name="server_gpu_count_1_16"),
            models.CheckConstraint(
                condition=Q(status__in=["pending_enrollment", "online", "unreachable", "retired"]),
                name="server_status_valid",
            ),
        ]
        # No index on last_seen_at or last_seq: every agent report updates them, and an indexed column that changes
        # makes each report's UPDATE a non-HOT one, a new entry in every index of the table (bench/ingest.py).
        # check_agents reads the silent servers once a minute with a scan of this small table instead.

    def __str__(self) -> str:
        return self.name


class Gpu(models.Model):
    """One card in a server, registered from the agent's first enrolment."""

    class Health(models.TextChoices):
        HEALTHY = "healthy", _("Healthy")
        DEGRADED = "degraded", _("Degraded")
        FAILED = "failed", _("Failed")

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=80, unique=True)
    serial = models.CharField(max_length=80, blank=True)
    name = models.CharField(max_length=100, blank=True, help_text=_("Product name as NVML reports it"))
    memory_total_mb = models.PositiveIntegerField(null=True, blank=True)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.HEALTHY)
    health_reason = models.CharField(max_length=300, blank=True)
    health_changed_at = models.DateTimeField(null=True, blank=True)
    drained = models.BooleanField(default=False)
    drained_reason = models.CharField(max_length=200, blank=True)
    # What the health rules (inventory/health.py) remember between reports.
    fault_latched_reason = models.CharField(max_length=300, blank=True)
    pcie_replay_count = models.BigIntegerField(null=True, blank=True)
    pcie_seen_at = models.DateTimeField(null=True, blank=True)
    thermal_since = models.DateTimeField(null=True, blank=True)
    # The latest sample, for the live views and /metrics; history lives in the telemetry tables.
    last_sample = models.JSONField(null=True, blank=True)
    last_sample_at = models.DateTimeField(null=True, blank=True)
    # Nothing of one tenant reaches the next: a card that was handed to an agent inside a workload is not
    # allocatable again until the agent reports that it applied a desired state (`clean_after_version`, stamped
    # when the card left every workload of the server) in which nothing of that workload remains.
    needs_cleaning = models.BooleanField(default=False)
    clean_after_version = models.BigIntegerField(null=True, blank=True)
    clean_requested_at = models.DateTimeField(null=True, blank=True)
    # The lease whose workload the card was last handed to (a scheduler lease id; the inventory does not know
    # leases). A card held by two leases at once (a contract and its resale, scheduler.models.Resale) goes from one's
    # workload to the other's only after it was cleaned (workloads.agent_channel).
    served_lease_id = models.BigIntegerField(null=True, blank=True)

    TENANT_FIELD = "server__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        verbose_name = "GPU"
        ordering = ["server_id", "index"]
        constraints = [
            models.UniqueConstraint(fields=["server", "index"], name="gpu_index_unique_per_server"),
            models.CheckConstraint(condition=Q(health__in=["healthy", "degraded", "failed"]), name="gpu_health_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.server.name}/gpu{self.index}"


class GpuHealthEvent(models.Model):
    """A change of a card's health, append-only. Also the outbox the scheduler reads (unhandled rows,
    oldest first) to move leases off failed cards: written in the report's transaction, never lost."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="health_events")
    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField()
    from_health = models.CharField(max_length=16, choices=Gpu.Health.choices)
    to_health = models.CharField(max_length=16, choices=Gpu.Health.choices)
    reason = models.CharField(max_length=300, blank=True)
    handled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "server__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["gpu", "at"]),
            models.Index(fields=["id"], condition=Q(handled_at__isnull=True), name="gpuhealthevent_unhandled"),
        ]

    def __str__(self) -> str:
        return f"{self.gpu}: {self.from_health} -> {self.to_health}"


class ServerOutage(models.Model):
    """A time the server's agent was silent long enough to count as unreachable: from its last report until it
    reported again (`ended_at` NULL while it lasts). Written by `servers_mark_unreachable` and closed by the next
    accepted report; billing does not charge leased cards for these seconds."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="outages")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    TENANT_FIELD = "server__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            # At most one open outage per server, so marking it unreachable twice changes nothing.
            models.UniqueConstraint(fields=["server"], condition=Q(ended_at__isnull=True), name="outage_one_open"),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=models.F("started_at")), name="outage_ordered"
            ),
        ]
        indexes = [models.Index(fields=["server", "started_at"], name="outage_server_start")]

    def __str__(self) -> str:
        return f"{self.server} unreachable from {self.started_at}"


PLAN_PRICE_FIELDS = {
    # plan -> (on-demand price field, interruptible price field)
    "card_hour": ("card_hour_price", "card_hour_interruptible_price"),
    "server_month": ("server_month_price", "server_month_interruptible_price"),
    "pflops_year": ("pflops_year_price", "pflops_year_interruptible_price"),
}


def _price_field(help_text: str) -> models.DecimalField:
    return models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True, help_text=help_text)


# An offer is live until it is delisted; a server has at most one live offer (the constraint offer_one_live).
LIVE_OFFER = Q(delisted_at__isnull=True)


class OfferQuerySet(TenantQuerySet):
    """Offers, scoped as every tenant-owned queryset is, with the one spelling of which are live and open."""

    def live(self) -> OfferQuerySet:
        """Offers not delisted."""
        return self.filter(LIVE_OFFER)

    def direct(self) -> OfferQuerySet:
        """The providers' own offers of their servers, not resale offers (one live one per server)."""
        return self.filter(is_resale=False)

    def open_at(self, at: datetime) -> OfferQuerySet:
        """Live offers still available at `at` (no end, or an end after it): what the storefront shows."""
        return self.live().filter(Q(available_until__isnull=True) | Q(available_until__gt=at))

    def open_through(self, until: datetime | None) -> OfferQuerySet:
        """Live offers available until at least `until`; an open-ended lease (`until` None) needs one with no end."""
        if until is None:
            return self.live().filter(available_until__isnull=True)
        return self.live().filter(Q(available_until__isnull=True) | Q(available_until__gte=until))


class Offer(models.Model):
    """A provider's listing of one server: a price per plan (none = not offered), in one currency.

    It lives in the inventory, not the storefront, because the scheduler (which may only place leases on cards
    with a live offer for the plan) and billing (which fixes a lease's prices from it) sit below the marketplace;
    the storefront's search, pages and API over offers are in `marketplace/`. A delisted offer keeps its row
    (`delisted_at`); running leases keep the prices they started with.
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="offers")
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="offers")
    currency = models.CharField(max_length=3, choices=Organization.Currency.choices)
    card_hour_price = _price_field(_("Per card per hour"))
    server_month_price = _price_field(_("Per whole server per calendar month"))
    pflops_year_price = _price_field(_("Per rated PFLOPS per year"))
    card_hour_interruptible_price = _price_field(_("Interruptible, per card per hour"))
    server_month_interruptible_price = _price_field(_("Interruptible, per server per month"))
    pflops_year_interruptible_price = _price_field(_("Interruptible, per PFLOPS per year"))
    # Volumes on this server (Server.volume_disk_gb of them), per GB per calendar month; none: no volumes here.
    storage_gb_month_price = _price_field(_("Volumes, per GB per month"))
    # A no-GPU data-access session on this server (a small SSH container with volumes), per hour; none: the
    # platform's default (SUANLI_DATA_ACCESS_HOUR_PRICE in the offer's currency).
    data_access_hour_price = _price_field(_("Data access without cards, per hour"))
    min_gpus = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(16)])
    available_until = models.DateTimeField(null=True, blank=True)
    # server_month renters may ask for SSH onto the bare server (a lease-only user) instead of a container.
    host_access = models.BooleanField(default=False)
    # A resale offer: `organization` (a broker, or a customer lending idle cards back) resells cards it holds on
    # `server` through one of its own contracts (scheduler.models.Resale says which); it is not the provider's
    # offer of the server, so it does not count against the server's one live offer. (Named `is_resale`: the reverse
    # accessor `resale` is that Resale row.)
    is_resale = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delisted_at = models.DateTimeField(null=True, blank=True)

    TENANT_FIELD = "organization"
    objects = OfferQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["server"], condition=LIVE_OFFER & Q(is_resale=False), name="offer_one_live"
            ),
            models.CheckConstraint(condition=Q(currency__in=["CNY", "USD"]), name="offer_currency_valid"),
            models.CheckConstraint(condition=Q(min_gpus__gte=1, min_gpus__lte=16), name="offer_min_gpus_1_16"),
            models.CheckConstraint(
                condition=Q(storage_gb_month_price__isnull=True) | Q(storage_gb_month_price__gt=0),
                name="offer_storage_price_positive",
            ),
            models.CheckConstraint(
                condition=Q(data_access_hour_price__isnull=True) | Q(data_access_hour_price__gt=0),
                name="offer_data_access_price_positive",
            ),
            *(
                models.CheckConstraint(
                    condition=Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__gt": 0}), name=f"offer_{field}_positive"
                )
                for pair in PLAN_PRICE_FIELDS.values()
                for field in pair
            ),
            # Interruptible is a discount on an offered plan: only beside an on-demand price, and below it; a resale
            # offer lending idle contract cards back (scheduler.models.Resale.interruptible_only) has it alone.
            *(
                models.CheckConstraint(
                    condition=Q(**{f"{spot}__isnull": True})
                    | Q(**{f"{firm}__isnull": False, f"{spot}__lt": models.F(firm)})
                    | Q(**{f"{firm}__isnull": True, "is_resale": True}),
                    name=f"offer_{plan}_interruptible_cheaper",
                )
                for plan, (firm, spot) in PLAN_PRICE_FIELDS.items()
            ),
        ]
        indexes = [models.Index(fields=["server"], condition=LIVE_OFFER, name="offer_live_server")]

    def __str__(self) -> str:
        return f"offer {self.pk} for {self.server}"

    def price(self, plan: str, *, interruptible: bool = False):
        """The price of `plan` (None when the plan is not offered that way)."""
        return getattr(self, PLAN_PRICE_FIELDS[plan][1 if interruptible else 0])

    @property
    def prices(self) -> dict:
        return {plan: getattr(self, firm) for plan, (firm, _spot) in PLAN_PRICE_FIELDS.items()}

    @property
    def interruptible_prices(self) -> dict:
        return {plan: getattr(self, spot) for plan, (_firm, spot) in PLAN_PRICE_FIELDS.items()}
