"""django-allauth's adapter: where a login lands, and the client address its rate limits count by."""

from allauth.account.adapter import DefaultAccountAdapter
from django.http import HttpRequest

from accounts.clientip import client_ip


class AccountAdapter(DefaultAccountAdapter):
    def get_login_redirect_url(self, request: HttpRequest) -> str:
        return "/dashboard/"

    def get_client_ip(self, request: HttpRequest) -> str:
        # allauth's rate limits (login, sign-up, password reset) count by the same client address as ours; its
        # own reading of X-Forwarded-For (ALLAUTH_TRUSTED_PROXY_COUNT) is not used.
        ip = client_ip(request)
        return ip or super().get_client_ip(request)
