"""API authentication by `Authorization: Bearer <API key>` (keys in accounts/keys.py)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts import keys
from accounts.models import ApiKey, User


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer sl_<prefix>_<secret>`; revoked keys and inactive users are refused (401), and the keys
    of an account that has not verified its e-mail answer 403 `email_unverified`."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        parts = keys.split_token(token.strip())
        if parts is None:
            raise exceptions.AuthenticationFailed("Invalid API token.")
        prefix, secret = parts
        key = ApiKey.objects.select_related("user").filter(prefix=prefix, revoked_at__isnull=True).first()
        if key is None or not keys.matches(secret, key.key_hash) or not key.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid API token.")
        # The one e-mail verification rule: 403 email_unverified until it is verified. Imported here: DRF imports
        # this module while accounts.errors (which verification needs) is still loading.
        from accounts.verification import require_verified

        require_verified(key.user)
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return key.user, key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
