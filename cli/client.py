"""The HTTP side: one requests session per invocation, the API's errors as `ApiError`, and the exit codes a
script can test (0 ok, 1 API error, 2 usage, 3 not found, 4 conflict or no capacity, 5 insufficient funds)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import requests

from cli import __version__

EXIT_OK = 0
EXIT_API = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_FUNDS = 5
TIMEOUT = (10, 60)  # connect, read


class ApiError(Exception):
    """An error answer of the API (`{"error": {"code", "message", "fields"}}`) or no answer at all."""

    def __init__(self, status: int | None, code: str, message: str, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}

    @property
    def exit_code(self) -> int:
        if self.status == 404:
            return EXIT_NOT_FOUND
        if self.status == 409:
            return EXIT_CONFLICT
        if self.status == 402:
            return EXIT_FUNDS
        return EXIT_API

    @property
    def fields(self) -> dict:
        fields = self.body.get("error", {}).get("fields") if isinstance(self.body.get("error"), dict) else None
        return fields if isinstance(fields, dict) else {}


class Client:
    """The public API at `api_url`, as the holder of `token`, in organisation `org` (X-Organization)."""

    def __init__(self, api_url: str, token: str | None = None, org: str | None = None, language: str = "en"):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.org = org
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"suanli-cli/{__version__}"
        self.session.headers["Accept"] = "application/json"
        self.session.headers["Accept-Language"] = "zh-hans" if language == "zh_Hans" else "en"

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.api_url}/api/v1/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: Any = None,
        headers: dict | None = None,
        auth: bool = True,
        raw: bool = False,
    ) -> Any:
        """The decoded JSON answer (None for 204), or the response itself with `raw`; ApiError otherwise."""
        sent = dict(headers or {})
        if auth and self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if auth and self.org:
            sent["X-Organization"] = str(self.org)
        try:
            response = self.session.request(
                method, self.url(path), params=params, json=body, headers=sent, timeout=TIMEOUT, stream=raw
            )
        except requests.RequestException as exc:
            raise ApiError(None, "unreachable", f"cannot reach {self.api_url}: {exc}") from None
        if response.status_code >= 400:
            raise _error(response)
        if raw:
            return response
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "bad_response", "the site did not answer JSON") from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body=body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PATCH", path, body=body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def pages(self, path: str, params: dict | None = None, *, limit: int | None = None, **kw: Any) -> Iterator[dict]:
        """Every item of a list endpoint, following `next` (or the whole answer of an unpaginated one), at most
        `limit`."""
        given = 0
        url: str | None = path
        query = dict(params or {})
        while url:
            page = self.get(url, params=query, **kw)
            query = {}  # `next` carries the query on
            items = page.get("results", []) if isinstance(page, dict) else page
            for item in items:
                if limit is not None and given >= limit:
                    return
                given += 1
                yield item
            url = page.get("next") if isinstance(page, dict) else None


def new_idempotency_key() -> str:
    return f"cli-{uuid.uuid4()}"


def _error(response: requests.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"http_{response.status_code}")
        message = str(error.get("message") or response.reason)
    else:
        code, message = f"http_{response.status_code}", (response.text[:200] or response.reason or "error")
    return ApiError(response.status_code, code, message, body if isinstance(body, dict) else {})


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False)
