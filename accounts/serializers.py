"""Input and output shapes of the account API, and the strict bases every API input builds on (unknown fields
refused, the platform's input bounds, related ids resolved through the access layer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts import org_log
from accounts.access import Actor, access_one
from accounts.errors import NotFound
from accounts.inputs import harden
from accounts.models import ApiKey, Membership, Organization, OrgEvent, Role


class StrictMixin:
    """Refuse fields the serializer does not know, instead of silently ignoring them; and give every field the
    platform's input bounds (accounts/inputs.py: ASCII digits, integers PostgreSQL holds, times within the
    platform's calendar, text PostgreSQL can store)."""

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        for field in fields.values():
            harden(field)
        return fields

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(set(data) - writable)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown or read-only field."] for name in unknown})
        elif data is not None:
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        return super().to_internal_value(data)


class StrictSerializer(StrictMixin, serializers.Serializer):
    pass


@extend_schema_field(OpenApiTypes.INT)
class AccessibleField(serializers.RelatedField):
    """A related object named by id, among only those the request's actor may use.

    `scope(actor)` gives the queryset of what the actor may name (their own servers, the storefront's live
    offers, ...); it is built per request from the serializer's `context["request"]`, so a field can never reach
    every tenant's rows. Another tenant's id, a malformed one and one that does not exist all get the same
    "Unknown <what>." (accounts/access.py parses the id).
    """

    def __init__(self, scope: Callable[[Actor], QuerySet], what: str, **kwargs: Any) -> None:
        self.scope, self.what = scope, what
        kwargs.setdefault("help_text", f"The id of a {what} you may use.")
        super().__init__(**kwargs)

    def get_queryset(self) -> QuerySet:
        request = self.context.get("request")
        return self.scope(Actor.of(request) if request is not None else Actor(user=None, org=None))

    def to_internal_value(self, data: Any) -> Any:
        try:
            return access_one(self.get_queryset(), data, self.what)
        except NotFound as exc:
            raise serializers.ValidationError(exc.message, code="does_not_exist") from None

    def to_representation(self, value: Any) -> int:
        return value.pk


class StrictModelSerializer(StrictMixin, serializers.ModelSerializer):
    pass


class OrganizationInput(StrictSerializer):
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=[Organization.Kind.CUSTOMER, Organization.Kind.PROVIDER, "both"])
    currency = serializers.ChoiceField(choices=Organization.Currency.choices, default="USD")


class RegisterInput(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)
    organization = OrganizationInput()


class TokenInput(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    code = serializers.CharField(
        max_length=64,
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="For an account with two-factor authentication: a code of its authenticator app, or a recovery "
        "code (each good once). Without it such an account answers 401 mfa_required.",
    )


class TokenOutput(serializers.Serializer):
    token = serializers.CharField()


class OrganizationOutput(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = ["id", "name", "kind", "status", "currency", "created_at", "approved_at", "role"]

    def get_role(self, org: Organization) -> str | None:
        roles = self.context.get("roles", {})
        return roles.get(org.pk)


class UserOutput(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()


class RegisterOutput(serializers.Serializer):
    user = UserOutput()
    organization = OrganizationOutput()
    token = serializers.CharField(help_text="Answers 403 email_unverified until the e-mail address is verified.")
    email_verified = serializers.BooleanField()
    verification = serializers.CharField(help_text="What to do before the token works.")


class VerificationInput(StrictSerializer):
    email = serializers.EmailField(max_length=254)


class VerificationConfirmInput(StrictSerializer):
    key = serializers.CharField(max_length=200)


class MembershipOutput(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email")
    user = serializers.IntegerField(source="user_id")

    class Meta:
        model = Membership
        fields = ["id", "user", "email", "role", "created_at"]


class MembershipInput(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class MembershipUpdate(StrictSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class ApiKeyOutput(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]


class ApiKeyInput(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")


class ApiKeyCreated(ApiKeyOutput):
    token = serializers.CharField()

    class Meta(ApiKeyOutput.Meta):
        fields = [*ApiKeyOutput.Meta.fields, "token"]


class OrgEventOutput(serializers.ModelSerializer):
    """One line of the organisation's log: `message` in the request's language, `params` as recorded, `actor` the
    member's e-mail (null: the platform did it)."""

    message = serializers.SerializerMethodField()
    actor = serializers.SerializerMethodField()

    class Meta:
        model = OrgEvent
        fields = ["id", "kind", "message", "params", "actor", "object_type", "object_id", "at"]

    def get_message(self, event: OrgEvent) -> str:
        return org_log.message(event)

    def get_actor(self, event: OrgEvent) -> str | None:
        return event.actor_email or None
