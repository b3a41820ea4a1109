"""Helpers for tests that drive a sandbox: a hand-moved clock and an HTTP caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from job.sandbox.server import SandboxServer


class FakeMonotonic:
    """A monotonic clock for `SandboxServer(monotonic=...)` that moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


@dataclass
class SandboxCaller:
    """Plain, correct HTTP calls to one running sandbox, as the default client."""

    server: SandboxServer
    session: requests.Session = field(default_factory=requests.Session)
    timeout_s: float = 5.0

    def token_response(
        self,
        *,
        client_id: str | None = None,
        secret: str | None = None,
        **form: str,
    ) -> requests.Response:
        """POST a client-credentials request with Basic auth encoded per RFC 6749."""
        settings = self.server.settings
        client_id = settings.client_id if client_id is None else client_id
        secret = settings.client_secret if secret is None else secret
        auth = (quote(client_id, safe=""), quote(secret, safe=""))
        data = {"grant_type": "client_credentials", **form}

        return self.session.post(
            self.server.token_url, data=data, auth=auth, timeout=self.timeout_s
        )

    def token(self, **kwargs: str) -> str:
        """Get an access token; raise `requests.HTTPError` if refused."""
        response = self.token_response(**kwargs)
        response.raise_for_status()

        return str(response.json()["access_token"])

    def get(
        self,
        path: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> requests.Response:
        """GET the resource endpoint, or a relative ``next`` link."""
        url = self.server.resource_url if path is None else self.server.url + path
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        timeout = self.timeout_s if timeout is None else timeout

        return self.session.get(url, params=params, headers=headers, timeout=timeout)

    def pull(self, token: str, **params: Any) -> list[dict[str, Any]]:
        """Follow ``next`` links from the first page and return every item."""
        body = self.get(token=token, **params).json()
        items: list[dict[str, Any]] = list(body["items"])
        while body["next"] is not None:
            body = self.get(body["next"], token=token).json()
            items.extend(body["items"])

        return items
