"""Having a valid bearer token: obtain, reuse, renew early, renew once on a 401.

`TokenManager` is a `requests.auth.AuthBase`, so every request, a retried one
included, asks it for the current token at the moment it is sent. Tokens live
in memory only. Neither a token nor a secret is ever logged: events carry a
short fingerprint (a hash, never a prefix), the lifetime and the scope.
How the client authenticates (secret, signed assertion, certificate) is in
`job.client_auth`.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import requests
import structlog
from requests.auth import AuthBase

from job.client_auth import (
    ASSERTION_TYPE,
    AssertionSigner,
    basic_credentials,
    tls_options,
)
from job.clock import Clock
from job.config import ProviderSettings
from job.errors import AuthError, PermanentAuthError, TransientAuthError
from job.logs import SECRETS
from job.retry import RetryPolicy
from job.stats import current_stats

__all__ = [
    "Token",
    "TokenManager",
    "TokenManagers",
    "basic_credentials",
    "fingerprint",
    "parse_token_response",
]

log = structlog.get_logger("job.auth")

# RFC 6749 section 5.2 codes that no retry can cure.
PERMANENT_ERRORS = frozenset(
    {
        "invalid_client",
        "unauthorized_client",
        "invalid_scope",
        "unsupported_grant_type",
        "invalid_request",
        "invalid_grant",
        "access_denied",
    }
)
# Codes that say "not now" rather than "not you"; some providers send them
# with a 400 or even a 200.
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
_INVALID_CLIENT_HINTS = {
    "client_secret_basic": "check client_id and client_secret, or try "
    "auth_method client_secret_post",
    "client_secret_post": "check client_id and client_secret, or try "
    "auth_method client_secret_basic",
    "private_key_jwt": "check client_id, that the provider holds the public key "
    "of private_key_file under key_id, and assertion_audience",
    "tls_client_auth": "check client_id and that the provider registered the "
    "certificate in client_cert_file",
}
_HINTS = {
    "unauthorized_client": "the client may not use the client_credentials grant",
    "invalid_scope": "check the scope spelling (Entra ID wants api://<app>/.default)",
    "unsupported_grant_type": "the provider does not offer client_credentials",
    "invalid_request": "check audience, resource and extra_params",
}


def fingerprint(token: str) -> str:
    """A short, stable name for a token that reveals nothing of it."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Token:
    """An access token and what we know of its life. Its repr hides the value."""

    value: str
    token_type: str
    scope: str | None
    lifetime_s: float
    obtained_at: datetime
    expires_at: datetime
    expires_mono: float

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def remaining_s(self, monotonic: float) -> float:
        return self.expires_mono - monotonic

    def __repr__(self) -> str:
        return f"Token(fingerprint={self.fingerprint!r}, expires_at={self.expires_at})"


def cache_key(provider: ProviderSettings) -> tuple[str | None, ...]:
    """Sources whose token requests would be identical share one token."""
    return (
        provider.token_url,
        provider.client_id,
        provider.scope,
        provider.audience,
        provider.resource,
        provider.auth_method,
        *(f"{name}={value}" for name, value in sorted(provider.extra_params.items())),
    )


class TokenManager(AuthBase):
    """Attaches a valid bearer token to each request and keeps it valid."""

    def __init__(
        self,
        provider: ProviderSettings,
        *,
        session: requests.Session,
        clock: Clock,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.provider = provider
        self._session = session
        self._clock = clock
        self._policy = policy or RetryPolicy.from_settings(provider.retry)
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._warned_no_lifetime = False
        self._signer = AssertionSigner(provider, clock)
        # The last permanent refusal, until a token is obtained again; the
        # daemon reads it to back off between runs instead of hammering.
        self.permanent_failure: PermanentAuthError | None = None
        if provider.client_secret is not None:
            SECRETS.add(provider.client_secret.get_secret_value())

    # requests.auth.AuthBase

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        request.register_hook("response", self._renew_on_401)  # type: ignore[no-untyped-call]

        return request

    # The token itself

    def token(self) -> Token:
        """A token valid for at least the leeway; at most one request in flight."""
        with self._lock:
            current = self._token
            now = self._clock.monotonic()
            if current is not None:
                remaining = current.remaining_s(now)
                leeway = self._leeway_s(current)
                if remaining > leeway:
                    log.debug(
                        "token.reused",
                        provider=self.provider.name,
                        fingerprint=current.fingerprint,
                        remaining_s=round(remaining, 1),
                    )
                    return current
                log.info(
                    "token.expiring",
                    provider=self.provider.name,
                    fingerprint=current.fingerprint,
                    remaining_s=round(remaining, 1),
                    leeway_s=round(leeway, 1),
                )
            self._token = self._obtain(
                reason="expiring" if current else "initial", previous=current
            )
            return self._token

    def invalidate(self, value: str | None = None) -> None:
        """Forget the token (only if it is still `value`, when given)."""
        with self._lock:
            if self._token is not None and value in (None, self._token.value):
                self._token = None

    def renew_after_rejection(self, rejected: str) -> Token:
        """A new token after `rejected` was refused, unless one came already."""
        with self._lock:
            current = self._token
            if current is not None and current.value != rejected:
                return current
            self._token = self._obtain(reason="rejected", previous=current)
            return self._token

    def _leeway_s(self, token: Token) -> float:
        if self.provider.leeway_s is None:
            return min(60.0, token.lifetime_s / 10)
        # A leeway as long as the lifetime would renew before every request.
        return min(self.provider.leeway_s, token.lifetime_s / 2)

    # One 401 means the token may have been revoked or rotated: renew and resend
    # once. A second 401 with a fresh token means the grant itself is wrong.

    def _renew_on_401(
        self, response: requests.Response, **kwargs: Any
    ) -> requests.Response:
        if response.status_code != 401:
            return response
        sent = _bearer_of(response.request)
        log.warning(
            "token.rejected",
            provider=self.provider.name,
            fingerprint=fingerprint(sent) if sent else None,
            status=401,
            attempt=1,
            www_authenticate=response.headers.get("WWW-Authenticate"),
        )
        # Give the connection back first: the token endpoint is often on the
        # same host, and a bounded pool (a backfill's) would otherwise wait
        # for it forever.
        _ = response.content
        response.close()
        fresh = self.renew_after_rejection(sent or "")
        retry = response.request.copy()
        retry.headers["Authorization"] = f"Bearer {fresh.value}"
        connection = response.connection
        second: requests.Response = connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        if second.status_code == 401:
            log.warning(
                "token.rejected",
                provider=self.provider.name,
                fingerprint=fresh.fingerprint,
                status=401,
                attempt=2,
                www_authenticate=second.headers.get("WWW-Authenticate"),
            )
            self.invalidate(fresh.value)

        return second

    # The client-credentials grant, RFC 6749 section 4.4

    def _obtain(self, *, reason: str, previous: Token | None) -> Token:
        started = self._clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                token = self._request_once(reason=reason, attempt=attempt)
            except TransientAuthError as exc:
                self._wait_or_give_up(exc, attempt, started)
                continue
            except PermanentAuthError as exc:
                self._log_failure(exc, attempt)
                self.permanent_failure = exc
                raise
            self.permanent_failure = None
            event = "token.renewed" if previous is not None else "token.acquired"
            log.info(
                event,
                provider=self.provider.name,
                fingerprint=token.fingerprint,
                expires_in=round(token.lifetime_s),
                expires_at=token.expires_at.isoformat(),
                scope=token.scope,
                reason=reason,
            )
            return token

    def _wait_or_give_up(
        self, exc: TransientAuthError, attempt: int, started: float
    ) -> None:
        retry_after = getattr(exc, "retry_after", None)
        wait = self._policy.wait(attempt, retry_after, self._clock.now())
        elapsed = self._clock.monotonic() - started
        if not self._policy.has_attempts_left(
            attempt
        ) or not self._policy.fits_deadline(elapsed, wait.seconds):
            self._log_failure(exc, attempt)
            raise exc
        log.warning(
            "request.retry_scheduled",
            target="token",
            provider=self.provider.name,
            attempt=attempt,
            reason=exc.message,
            status=exc.status,
            wait_s=round(wait.seconds, 3),
            wait_source=wait.source,
            note=wait.note,
        )
        stats = current_stats()
        stats.retries += 1
        if exc.status == 429:
            stats.rate_limit_waits += 1
        self._clock.sleep(wait.seconds)

    def _log_failure(self, exc: AuthError, attempt: int) -> None:
        log.error(
            "token.failed",
            provider=self.provider.name,
            error=exc.error,
            error_description=exc.error_description,
            status=exc.status,
            permanent=exc.permanent,
            attempt=attempt,
            message=exc.message,
        )

    def _request_once(self, *, reason: str, attempt: int) -> Token:
        provider = self.provider
        headers, data = self._credentials()
        log.info(
            "token.requested",
            provider=provider.name,
            token_url=provider.token_url,
            auth_method=provider.auth_method,
            scope=provider.scope,
            reason=reason,
            attempt=attempt,
        )
        current_stats().token_requests += 1
        response = self._post(headers, data)
        requested_at = self._clock.now()

        return parse_token_response(
            response,
            provider=provider,
            obtained_at=requested_at,
            monotonic=self._clock.monotonic(),
            on_missing_lifetime=self._warn_missing_lifetime,
        )

    def _post(self, headers: dict[str, str], data: dict[str, str]) -> requests.Response:
        """One POST to the token endpoint; transport failures become AuthErrors."""
        provider = self.provider
        try:
            return self._session.post(
                provider.token_url,
                data=data,
                headers=headers,
                timeout=(provider.connect_timeout_s, provider.read_timeout_s),
                allow_redirects=False,
                **self._tls_options(),
            )
        except requests.Timeout as exc:
            raise self._transient(
                f"no answer within the timeout ({exc.__class__.__name__})"
            ) from None
        except requests.exceptions.SSLError as exc:
            raise self._tls_failure(exc) from None
        except requests.ConnectionError:
            raise self._transient(
                f"cannot connect to {provider.token_url}; is the provider up "
                "and the token_url right?"
            ) from None

    def _credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        # The same form on the first request and on every renewal: the
        # grant's parameters come from the frozen settings only.
        provider = self.provider
        data = {"grant_type": "client_credentials"}
        if provider.scope:
            data["scope"] = provider.scope
        if provider.audience:
            data["audience"] = provider.audience
        if provider.resource:
            data["resource"] = provider.resource
        data.update(provider.extra_params)
        headers = {"Accept": "application/json"}
        method = provider.auth_method
        if method == "client_secret_basic":
            headers["Authorization"] = basic_credentials(
                provider.client_id, self._secret()
            )
        elif method == "client_secret_post":
            data["client_id"] = provider.client_id
            data["client_secret"] = self._secret()
        elif method == "private_key_jwt":
            # client_id is optional in RFC 7523, but Entra ID requires it.
            data["client_id"] = provider.client_id
            data["client_assertion_type"] = ASSERTION_TYPE
            data["client_assertion"] = self._signer.assertion()
        else:
            # tls_client_auth: the certificate authenticates; RFC 8705
            # section 2 still wants client_id in the form.
            data["client_id"] = provider.client_id

        return headers, data

    def describe_request(self) -> tuple[dict[str, str], dict[str, str]]:
        """The headers and form a token request sends, with credentials masked."""
        headers, data = self._credentials()
        if "Authorization" in headers:
            headers["Authorization"] = "Basic ***"
        for name in ("client_secret", "client_assertion"):
            if name in data:
                data[name] = "***"

        return headers, data

    def describe_credentials(self) -> dict[str, str]:
        """What identifies the client besides the form: key, certificate, CA."""
        provider = self.provider
        facts: dict[str, str] = {}
        if provider.auth_method == "private_key_jwt":
            facts["private key"] = str(provider.private_key_file)
            facts["assertion"] = (
                f"{self._signer.algorithm}, kid {self._signer.key_id()}, "
                f"aud {provider.assertion_audience or provider.token_url}"
            )
        if provider.client_cert_file is not None:
            facts["client certificate"] = str(provider.client_cert_file)
            facts["client key"] = str(provider.client_key_file or "(in the cert file)")
        if provider.ca_bundle is not None:
            facts["ca bundle"] = str(provider.ca_bundle)

        return facts

    def _secret(self) -> str:
        secret = self.provider.secret()
        SECRETS.add(secret)
        return secret

    def _tls_options(self) -> dict[str, Any]:
        return tls_options(self.provider)

    def _transient(
        self, message: str, *, status: int | None = None
    ) -> TransientAuthError:
        return TransientAuthError(
            f"token request to {self.provider.token_url} failed: {message}",
            provider=self.provider.name,
            status=status,
        )

    def _tls_failure(self, exc: requests.exceptions.SSLError) -> AuthError:
        root = _root_cause(exc)
        url = self.provider.token_url
        if isinstance(root, ssl.SSLCertVerificationError):
            return PermanentAuthError(
                f"the TLS certificate of {url} is not trusted "
                f"({getattr(root, 'verify_message', None) or 'verification failed'})"
                "; set ca_bundle to the CA file of a private issuer",
                provider=self.provider.name,
            )
        # A server refusing our client certificate mostly just hangs up
        # mid-handshake, which looks like any dropped connection: transient.
        return self._transient(
            f"the TLS handshake failed ({type(root).__name__}); for mutual TLS "
            "check client_cert_file, client_key_file and that the provider "
            "trusts the certificate"
        )

    def _warn_missing_lifetime(self) -> None:
        if not self._warned_no_lifetime:
            self._warned_no_lifetime = True
            log.warning(
                "token.lifetime_missing",
                provider=self.provider.name,
                assumed_lifetime_s=self.provider.default_lifetime_s,
            )


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error under requests' and urllib3's wrappers."""
    current = exc
    for _ in range(10):  # the chain is short; the bound guards against cycles
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            wrapped = (a for a in current.args if isinstance(a, BaseException))
            inner = next(wrapped, None)
        if inner is None:
            inner = current.__cause__ or current.__context__
        if inner is None:
            break
        current = inner

    return current


def _bearer_of(request: requests.PreparedRequest | None) -> str | None:
    header = (request.headers.get("Authorization") if request else None) or ""
    scheme, _, value = header.partition(" ")
    return value if scheme.lower() == "bearer" and value else None


def parse_token_response(
    response: requests.Response,
    *,
    provider: ProviderSettings,
    obtained_at: datetime,
    monotonic: float,
    on_missing_lifetime: Any = None,
) -> Token:
    """A `Token` from a token endpoint's answer, or the right kind of AuthError."""
    body = _successful_body(response, provider)
    value = _bearer_token(body, provider, response.status_code)
    lifetime = _lifetime_s(body, value, obtained_at)
    if lifetime is None:
        if on_missing_lifetime is not None:
            on_missing_lifetime()
        lifetime = provider.default_lifetime_s
    granted = body.get("scope")
    scope = (
        " ".join(granted) if isinstance(granted, list) else granted or provider.scope
    )

    return Token(
        value=value,
        token_type="Bearer",  # noqa: S106 - the scheme name, not a secret
        scope=scope,
        lifetime_s=lifetime,
        obtained_at=obtained_at,
        expires_at=obtained_at + timedelta(seconds=lifetime),
        expires_mono=monotonic + lifetime,
    )


def _successful_body(
    response: requests.Response, provider: ProviderSettings
) -> dict[str, Any]:
    """The JSON object of a success, else a transient or permanent AuthError."""
    status = response.status_code
    body = _json_body(response)
    if status == 429 or status >= 500 or _field(body, "error") in TRANSIENT_ERRORS:
        error = TransientAuthError(
            f"token request to {provider.token_url} answered {status}"
            + _describe_error(body),
            provider=provider.name,
            status=status,
            error=_field(body, "error"),
            error_description=_field(body, "error_description"),
        )
        error.retry_after = response.headers.get("Retry-After")  # type: ignore[attr-defined]
        raise error
    if not isinstance(body, dict):
        # Never the body itself: a login page may echo what we sent.
        kind = response.headers.get("Content-Type", "no content type")
        raise PermanentAuthError(
            f"token request to {provider.token_url} answered {status} with a body "
            f"that is not JSON ({kind}); check token_url",
            provider=provider.name,
            status=status,
        )
    if "error" in body or status >= 400:
        raise _refusal(body, provider, status)

    return body


def _refusal(
    body: dict[str, Any], provider: ProviderSettings, status: int
) -> PermanentAuthError:
    code = _field(body, "error")
    hint = (
        _INVALID_CLIENT_HINTS[provider.auth_method]
        if code == "invalid_client"
        else _HINTS.get(code or "", "check the provider settings")
    )

    return PermanentAuthError(
        f"provider {provider.name!r} refused the token request ({status})"
        f"{_describe_error(body)}; {hint}",
        provider=provider.name,
        status=status,
        error=code,
        error_description=_field(body, "error_description"),
    )


def _bearer_token(body: dict[str, Any], provider: ProviderSettings, status: int) -> str:
    """The access token, registered with the redactor, if it is a Bearer token."""
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise PermanentAuthError(
            f"token response from {provider.token_url} has no access_token; "
            "check token_url and the grant",
            provider=provider.name,
            status=status,
        )
    SECRETS.add(value)
    token_type = str(body.get("token_type") or "Bearer")
    if token_type.lower() != "bearer":
        raise PermanentAuthError(
            f"provider {provider.name!r} issued a {token_type!r} token; only Bearer "
            "tokens are supported: configure the client at the provider for "
            "Bearer tokens (no DPoP or other sender binding)",
            provider=provider.name,
            status=status,
        )

    return value


def _json_body(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _field(body: Any, name: str) -> str | None:
    if isinstance(body, dict) and isinstance(body.get(name), str):
        return str(body[name])[:300]
    return None


def _describe_error(body: Any) -> str:
    code = _field(body, "error")
    if code is None:
        return ""
    description = _field(body, "error_description")
    return f": {code}" + (f" ({description})" if description else "")


def _lifetime_s(body: dict[str, Any], token: str, now: datetime) -> float | None:
    """Seconds the token lives: expires_in, then expires_on/at, then a JWT's exp."""
    expires_in = _number(body.get("expires_in"))
    if expires_in is not None:
        return max(0.0, expires_in)
    for name in ("expires_on", "expires_at"):
        when = _instant(body.get(name))
        if when is not None:
            return max(0.0, (when - now).total_seconds())
    exp = _jwt_exp(token)
    if exp is not None:
        return max(0.0, (exp - now).total_seconds())

    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _instant(value: Any) -> datetime | None:
    seconds = _number(value)
    if seconds is not None:
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _jwt_exp(token: str) -> datetime | None:
    # Only to learn the expiry: verifying the signature is the resource's job.
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = orjson.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = _number(claims.get("exp")) if isinstance(claims, dict) else None

    return datetime.fromtimestamp(exp, UTC) if exp is not None else None


class TokenManagers:
    """One manager per distinct token request, shared by the sources that use it."""

    def __init__(self, *, session: requests.Session, clock: Clock) -> None:
        self._session = session
        self._clock = clock
        self._managers: dict[tuple[str | None, ...], TokenManager] = {}
        self._lock = threading.Lock()

    def for_provider(self, provider: ProviderSettings) -> TokenManager:
        key = cache_key(provider)
        with self._lock:
            manager = self._managers.get(key)
            if manager is None:
                manager = TokenManager(
                    provider, session=self._session, clock=self._clock
                )
                self._managers[key] = manager
            return manager
