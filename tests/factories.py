"""Factories for every model the tests build. Personas: alice (customer), bob (provider), charlie (foreign)."""

from __future__ import annotations

import factory
from django.contrib.auth.hashers import make_password

from accounts.models import Membership, Organization, Role, User

PASSWORD = "correct horse battery staple"
# Hashing once keeps the suite fast: every factory user shares this pre-computed password hash.
_PASSWORD_HASH: str | None = None


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.LazyFunction(lambda: _hashed())
    is_active = True


def _hashed() -> str:
    global _PASSWORD_HASH
    if _PASSWORD_HASH is None:
        _PASSWORD_HASH = make_password(PASSWORD)
    return _PASSWORD_HASH


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    kind = Organization.Kind.CUSTOMER
    status = Organization.Status.ACTIVE
    currency = "USD"


class ProviderFactory(OrganizationFactory):
    kind = Organization.Kind.PROVIDER


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.OWNER
