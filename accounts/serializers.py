from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.inputs import harden
from accounts.models import ApiKey, Membership, Organization, Role


class StrictMixin:
    """Refuse fields the serializer does not know, instead of silently ignoring them; and give every field the
    platform's input bounds (accounts/inputs.py: ASCII digits, integers PostgreSQL holds, times within the
    platform's calendar, text PostgreSQL can store)."""

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()  # type: ignore[misc]
        for field in fields.values():
            harden(field)
        return fields

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}  # type: ignore[attr-defined]
            unknown = sorted(set(data) - writable)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown or read-only field."] for name in unknown})
        elif data is not None:
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictSerializer(StrictMixin, serializers.Serializer):
    pass


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
    token = serializers.CharField()


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
