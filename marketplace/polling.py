"""The pages' htmx polls (live cost, card tiles, workload panel) share one sign-in rule."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import reverse


def poll_login_required(page: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Like login_required for a fragment that htmx polls on the page named `page` (its URL takes the view's
    arguments): a poll after the session ended sends the whole page to the login form (204 + HX-Redirect), rather
    than letting htmx follow the redirect and swap the login page into the fragment."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.user.is_authenticated:
                return view(request, *args, **kwargs)
            detail = reverse(page, args=args, kwargs=kwargs)
            if request.headers.get("HX-Request"):
                response = HttpResponse(status=204)
                response["HX-Redirect"] = redirect_to_login(detail)["Location"]
                return response
            return redirect_to_login(detail)

        return wrapped

    return decorate
