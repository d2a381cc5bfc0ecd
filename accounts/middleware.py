"""Request middleware: the page's organisation on `request.org`, the API body size limit, and a lost database
answered 503 instead of 500."""

from collections.abc import Callable

from django import db
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


def is_database_unavailable(exc: BaseException | None) -> bool:
    """The database cannot be reached or its connection broke (restart, failover, pool timeout)."""
    return isinstance(exc, (db.OperationalError, db.InterfaceError))


def database_unavailable(request: HttpRequest) -> HttpResponse:
    message = "The database is unavailable for a moment; try again shortly."
    if is_api_path(request.path):
        response: HttpResponse = json_error(request, "database_unavailable", message, 503)
    else:
        from django.template import loader

        # The request alone, not a RequestContext: context processors may need the database. Its CSP nonce
        # lets the page's <style> through.
        body = loader.get_template("503.html").render({"message": message, "request": request})
        response = HttpResponse(body, status=503)
    response["Retry-After"] = "5"
    return response


class DatabaseUnavailableMiddleware:
    """A view that lost the database answers 503 (JSON for the API) instead of a 500; errors raised outside
    views reach `config.urls.handler500`, which does the same."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return database_unavailable(request) if is_database_unavailable(exception) else None
