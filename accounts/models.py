"""Users, organisations (the tenants), memberships with roles, API keys, idempotency records."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils.translation import gettext_lazy as _

from accounts.tenancy import TenantQuerySet


class EmailUserManager(UserManager):
    def _create_user(self, username, email, password, **extra):
        email = self.normalize_email(email).lower()
        user = self.model(email=email, **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email=None, password=None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(None, email, password, **extra)

    def create_superuser(self, email=None, password=None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(None, email, password, **extra)


class User(AbstractUser):
    """A person. Logs in by email; belongs to organisations through memberships."""

    username = None
    email = models.EmailField(_("email address"), unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []
    objects = EmailUserManager()

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self) -> str:
        return self.email


class Organization(models.Model):
    """The tenant: a customer, a provider, or both. Every tenant-owned row points at one."""

    class Kind(models.TextChoices):
        CUSTOMER = "customer", _("Customer")
        PROVIDER = "provider", _("Provider")
        BOTH = "both", _("Customer and provider")

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending approval")
        ACTIVE = "active", _("Active")
        SUSPENDED = "suspended", _("Suspended")

    class Currency(models.TextChoices):
        CNY = "CNY", "CNY"
        USD = "USD", "USD"

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    approved_at = models.DateTimeField(null=True, blank=True)
    # Set by billing when an invoice is overdue and SUANLI_OVERDUE_BLOCKS_LEASES is on: no new leases.
    billing_hold = models.BooleanField(default=False)
    approved_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "pk"
    USER_FIELD = "memberships__user"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=["customer", "provider", "both"]), name="org_kind_valid"),
            models.CheckConstraint(condition=Q(status__in=["pending", "active", "suspended"]), name="org_status_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_provider(self) -> bool:
        return self.kind in (self.Kind.PROVIDER, self.Kind.BOTH)

    @property
    def is_customer(self) -> bool:
        return self.kind in (self.Kind.CUSTOMER, self.Kind.BOTH)


class Role(models.TextChoices):
    OWNER = "owner", _("Owner")
    ADMIN = "admin", _("Admin")
    MEMBER = "member", _("Member")
    BILLING = "billing", _("Billing")


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    USER_FIELD = "user"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="membership_unique"),
            models.CheckConstraint(
                condition=Q(role__in=["owner", "admin", "member", "billing"]), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class ApiKey(models.Model):
    """A bearer token for the API. Only a SHA-256 hash of the secret is stored; `prefix` finds the row."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class IdempotencyRecord(models.Model):
    """The first answer to a request made with an `Idempotency-Key`, replayed for retries."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    scope = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "scope", "key"], name="idempotency_key_unique")]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"


class OrgEvent(models.Model):
    """One line of an organisation's log (issue 16: "the event is in the organisation's log"): what happened to
    its volumes, leases and money, by whom (a member, or None: the platform itself) and when. Append-only: a
    PostgreSQL trigger refuses UPDATE and DELETE (migration 0004), save for the one change a user's deletion makes
    (`actor` to NULL; `actor_email` keeps who it was). Written by services through `accounts.org_log.record`; the
    words each kind is shown with live in `accounts.org_log`."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="events")
    kind = models.CharField(max_length=40)
    # The message's parameters (names, sizes, servers, times as ISO strings): the page words them in its language.
    params = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_email = models.CharField(max_length=254, blank=True)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.BigIntegerField(null=True, blank=True)
    at = models.DateTimeField()

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        verbose_name = "organisation event"
        ordering = ["-id"]
        indexes = [models.Index(fields=["organization", "-id"], name="orgevent_org_newest")]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at}"
