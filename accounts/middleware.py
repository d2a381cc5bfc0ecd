from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from accounts.context import SESSION_KEY, attach, membership_for
from accounts.errors import NotFound, is_api_path, json_error


class OrganizationMiddleware:
    """Pages: the organisation picked in the session (or the first) goes on `request.org`.

    API views resolve it themselves after token authentication, from `X-Organization` (accounts/apiviews.py).
    API bodies over DATA_UPLOAD_MAX_MEMORY_SIZE are refused here, before anything reads them.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_path(request.path):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
                return json_error(request, "body_too_large", "The request body is too large.", 400)
            attach(request, None)
        else:
            try:
                membership = membership_for(request.user, request.session.get(SESSION_KEY))
            except NotFound:
                request.session.pop(SESSION_KEY, None)
                membership = membership_for(request.user)
            attach(request, membership)
        return self.get_response(request)
