"""One robust HTTP round trip: timeouts on every request, bounded retries.

The loop is plain: send, ask the `RetryPolicy` whether and how long to wait,
sleep through the injected clock, send again. Each retried request asks its
auth for the token afresh, so it never carries a token that was renewed since.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import orjson
import requests
import structlog
from requests.exceptions import ChunkedEncodingError

from job.clock import Clock
from job.errors import PermanentFetchError, TransientFetchError
from job.logs import redact_value
from job.retry import RetryPolicy
from job.stats import current_stats

log = structlog.get_logger("job.http")

_MAX_REDIRECTS = 10

_SENSITIVE_PARAMS = frozenset(
    {
        "access_token",
        "token",
        "id_token",
        "refresh_token",
        "client_secret",
        "secret",
        "password",
        "api_key",
        "apikey",
        "key",
        "code",
        "signature",
        "sig",
    }
)


def mask_url(url: str) -> str:
    """`url` with user info and credential-like query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SENSITIVE_PARAMS else v) for k, v in pairs],
            safe="*:/",
        )

    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def origin(url: str) -> tuple[str, str]:
    """Scheme and host:port of `url` (RFC 6454), without any user info."""
    parts = urlsplit(url)

    return parts.scheme.lower(), (parts.netloc.rsplit("@", 1)[-1]).lower()


def decode_json(response: requests.Response) -> Any:
    """The body as JSON, or a permanent error that says what came instead."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        kind = response.headers.get("Content-Type", "no content type")
        raise PermanentFetchError(
            f"{mask_url(response.url)} answered {response.status_code} with a body "
            f"that is not valid JSON ({kind}, {len(response.content)} bytes: "
            f"{exc.msg} at byte {exc.pos}); check the url, or whether the API is "
            "down behind a proxy",
            url=mask_url(response.url),
            status=response.status_code,
        ) from None


class HttpClient:
    """Sends GET requests with timeouts, retrying what may succeed later."""

    def __init__(
        self,
        session: requests.Session,
        *,
        clock: Clock,
        policy: RetryPolicy,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        allow_cross_origin: bool = False,
        ca_bundle: str | None = None,
    ) -> None:
        self.session = session
        self._clock = clock
        self._policy = policy
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._cross_origin = allow_cross_origin
        # None: requests' default trust (certifi, or REQUESTS_CA_BUNDLE).
        self._verify: str | bool = ca_bundle or True
        self._environments: dict[tuple[str, str], dict[str, Any]] = {}

    def get(
        self,
        url: str,
        *,
        params: dict[str, str] | None = None,
        auth: requests.auth.AuthBase | None = None,
    ) -> requests.Response:
        """The first successful response, or a FetchError once retries run out."""
        started = self._clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            response, reason = self._send(url, params, auth)
            if response is not None and response.status_code < 400:
                return response
            if response is not None:
                self._raise_unless_retryable(response, attempt)
            # Not `if response`: a Response is falsy for every 4xx and 5xx.
            retry_after = (
                response.headers.get("Retry-After") if response is not None else None
            )
            wait = self._policy.wait(attempt, retry_after, self._clock.now())
            elapsed = self._clock.monotonic() - started
            if not (
                self._policy.has_attempts_left(attempt)
                and self._policy.fits_deadline(elapsed, wait.seconds)
            ):
                raise TransientFetchError(
                    f"GET {mask_url(url)} failed after {attempt} attempts "
                    f"({elapsed:.1f}s): {reason}; the API may be down or rate "
                    "limiting, raise retry.max_attempts or try later",
                    url=mask_url(url),
                    status=response.status_code if response is not None else None,
                    attempt=attempt,
                )
            self._schedule_retry(url, attempt, reason, wait, response)

    def _send(
        self,
        url: str,
        params: dict[str, str] | None,
        auth: requests.auth.AuthBase | None,
    ) -> tuple[requests.Response | None, str]:
        try:
            response = self._follow(url, params, auth)
        except requests.Timeout as exc:
            return None, f"timed out ({exc.__class__.__name__})"
        except requests.exceptions.SSLError as exc:
            # An untrusted or mismatched certificate will not heal by retrying.
            raise PermanentFetchError(
                f"TLS with {mask_url(url)} failed ({_root_cause(exc)}); if the API "
                "uses a private CA, set ca_bundle on the source",
                url=mask_url(url),
            ) from None
        except (requests.ConnectionError, ChunkedEncodingError) as exc:
            return None, f"connection failed ({_root_cause(exc)})"
        except requests.RequestException as exc:
            raise PermanentFetchError(
                f"GET {mask_url(url)} failed: {exc.__class__.__name__}; check the "
                "url and the pagination settings",
                url=mask_url(url),
            ) from None

        return response, f"status {response.status_code}"

    def _follow(
        self,
        url: str,
        params: dict[str, str] | None,
        auth: requests.auth.AuthBase | None,
    ) -> requests.Response:
        """GET, following redirects only where the bearer token may go."""
        response = self._get(url, params, auth)
        for _ in range(_MAX_REDIRECTS):
            if not response.is_redirect:
                return response
            target = urljoin(response.url, response.headers["Location"])
            if origin(target) != origin(response.url) and not self._cross_origin:
                response.close()
                raise PermanentFetchError(
                    f"{mask_url(response.url)} redirected to {mask_url(target)}, "
                    "another origin; the bearer token is not sent there unless "
                    "the source sets allow_cross_origin: true",
                    url=mask_url(response.url),
                    status=response.status_code,
                )
            response.close()
            response = self._get(target, None, auth)
        raise PermanentFetchError(
            f"GET {mask_url(url)} redirected more than {_MAX_REDIRECTS} times; "
            "check the url",
            url=mask_url(url),
        )

    def _get(
        self,
        url: str,
        params: dict[str, str] | None,
        auth: requests.auth.AuthBase | None,
    ) -> requests.Response:
        # What Session.get does, but the environment's settings (proxies,
        # NO_PROXY, REQUESTS_CA_BUNDLE) are read once per origin instead of on
        # every request: reading them scans os.environ twice, a third of a
        # small page's request overhead. Redirects are followed by hand, so
        # that the origin check sees them.
        request = requests.Request("GET", url, params=params, auth=auth)
        prepared = self.session.prepare_request(request)
        return self.session.send(
            prepared,
            timeout=self._timeout,
            allow_redirects=False,
            **self._environment(str(prepared.url)),
        )

    def _environment(self, url: str) -> dict[str, Any]:
        key = origin(url)
        if key not in self._environments:
            found = self.session.merge_environment_settings(
                url, {}, None, self._verify, None
            )
            self._environments[key] = dict(found)

        return self._environments[key]

    def _raise_unless_retryable(
        self, response: requests.Response, attempt: int
    ) -> None:
        status = response.status_code
        if self._policy.is_retryable_status(status):
            return
        url = mask_url(response.url)
        if status == 401:
            message = (
                f"{url} refused a freshly issued token too (401); check the "
                "provider's scope, audience and resource for this API"
            )
        elif status == 403:
            message = f"{url} answered 403 Forbidden; the token lacks a scope or role"
        else:
            message = f"GET {url} answered {status}; this is not retried"
        explanation = _explanation(response)
        if explanation:
            message += f". The API says: {explanation}"
        raise PermanentFetchError(message, url=url, status=status, attempt=attempt)

    def _schedule_retry(
        self,
        url: str,
        attempt: int,
        reason: str,
        wait: Any,
        response: requests.Response | None,
    ) -> None:
        status = response.status_code if response is not None else None
        log.warning(
            "request.retry_scheduled",
            target="resource",
            url=mask_url(url),
            attempt=attempt,
            reason=reason,
            status=status,
            wait_s=round(wait.seconds, 3),
            wait_source=wait.source,
            note=wait.note,
        )
        stats = current_stats()
        stats.retries += 1
        if status == 429:
            stats.rate_limit_waits += 1
        if response is not None:
            response.close()
        self._clock.sleep(wait.seconds)


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return exc.__class__.__name__


def _explanation(response: requests.Response) -> str | None:
    """The API's own words on an error, short and redacted; None if it gave none."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict):
        parts = [
            str(body[name])
            for name in ("error", "error_description", "message", "detail", "title")
            if isinstance(body.get(name), str | int)
        ]
        if parts:
            return str(redact_value(": ".join(parts)[:300]))

    return None
