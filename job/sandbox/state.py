"""The live, thread-safe knobs and counters of a running sandbox.

Tests poke at these in-process while the server answers requests from its
own threads. Plain knobs are single attribute writes; anything read and
written together (the "next N" fault counters, the token table) goes
through the state's lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from job.sandbox.records import RecordSet
from job.sandbox.settings import (
    CLIENT_AUTH_METHODS,
    DEFAULT_AUTH_METHODS,
    SandboxSettings,
    check_auth_methods,
)

Monotonic = Callable[[], float]


@dataclass(frozen=True)
class SandboxClient:
    """A registered OAuth client: its credentials and what it may ask for."""

    client_id: str
    secret: str = field(repr=False)
    scope: str
    auth_methods: tuple[str, ...]
    # private_key_jwt: the client's public keys, a JWK Set (RFC 7517 section 5).
    jwks: Mapping[str, Any] | None = None
    # tls_client_auth: the subject DN its certificate must carry (RFC 8705 2.1.2).
    tls_subject: str | None = None


@dataclass
class IssuedToken:
    """An access token the sandbox handed out, and whether it still counts."""

    access_token: str = field(repr=False)
    client_id: str
    scope: str
    lifetime_s: int
    expires_at: float
    revoked: bool = False


class SandboxState:
    """Clients, tokens, data epoch, counters and fault knobs of one sandbox.

    Slots make a misspelt knob an AttributeError instead of a silent no-op.
    """

    __slots__ = (
        "_clients",
        "_epoch_anchor",
        "_epoch_base",
        "_issued",
        "_jtis",
        "_lock",
        "_monotonic",
        "_mutate_every_s",
        "_records",
        "_rng",
        "_seed",
        "_tokens",
        "assertion_audience",
        "default_page_size",
        "drop_connection_count",
        "error_rate_5xx",
        "error_rate_429",
        "expires_in_as_string",
        "fail_429_count",
        "fail_503_count",
        "fail_after_pages",
        "html_200_count",
        "jwt_access_tokens",
        "last_token_form",
        "latency_s",
        "max_page_size",
        "omit_expires_in",
        "repeat_next_link",
        "resource_in_flight",
        "resource_in_flight_peak",
        "resource_requests",
        "retry_after_s",
        "revoke_tokens_on_use",
        "stall_count",
        "token_429_count",
        "token_503_count",
        "token_body_overrides",
        "token_error_code",
        "token_error_with_200",
        "token_html_error",
        "token_html_error_status",
        "token_lifetime_s",
        "token_requests",
        "token_type_lowercase",
        "truncated_body_count",
    )

    def __init__(
        self, settings: SandboxSettings, *, monotonic: Monotonic | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._monotonic: Monotonic = monotonic or time.monotonic
        self._clients: dict[str, SandboxClient] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._issued: list[str] = []
        self._jtis: set[tuple[str, str]] = set()
        self._records = RecordSet(settings.records)
        self._mutate_every_s = settings.mutate_every_s
        self._epoch_base = 0
        self._epoch_anchor = self._monotonic()
        self._seed = 0
        self._rng = random.Random(self._seed)

        self.token_lifetime_s = settings.token_lifetime_s
        self.default_page_size = settings.default_page_size
        self.max_page_size = settings.max_page_size
        self._init_counters()
        self._init_token_quirks()
        self._init_resource_faults()
        self.add_client(
            settings.client_id,
            settings.client_secret,
            scope=settings.scope,
            auth_methods=settings.auth_methods,
        )

    def _init_counters(self) -> None:
        self.token_requests = 0
        self.resource_requests = 0
        # Resource requests being answered right now, and the most at once.
        self.resource_in_flight = 0
        self.resource_in_flight_peak = 0
        self.last_token_form: dict[str, str] | None = None

    def _init_token_quirks(self) -> None:
        self.expires_in_as_string = False
        self.omit_expires_in = False
        self.token_type_lowercase = False
        self.token_error_with_200 = False
        self.token_error_code = "server_error"  # noqa: S105 - an error code
        self.token_html_error = False
        self.token_html_error_status = 500
        self.token_429_count = 0
        self.token_503_count = 0
        # The `aud` a client assertion must name; None: the token URL called.
        self.assertion_audience: str | None = None
        # Fields set in (or, when None, removed from) every successful token
        # response: expires_on, a float expires_in, token_type DPoP, ...
        self.token_body_overrides: dict[str, Any] = {}
        # Issue JWT-shaped access tokens whose `exp` claim is the expiry on
        # the wall clock, as Entra ID and Auth0 do.
        self.jwt_access_tokens = False

    def _init_resource_faults(self) -> None:
        self.latency_s = 0.0
        self.retry_after_s = 1
        self.fail_503_count = 0
        self.fail_429_count = 0
        self.error_rate_5xx = 0.0
        self.error_rate_429 = 0.0
        self.truncated_body_count = 0
        self.html_200_count = 0
        self.stall_count = 0
        self.drop_connection_count = 0
        self.repeat_next_link = False
        self.revoke_tokens_on_use = False
        self.fail_after_pages: int | None = None

    # -- clients ---------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        secret: str,
        *,
        scope: str = "read:data",
        auth_methods: Iterable[str] = DEFAULT_AUTH_METHODS,
        jwks: Mapping[str, Any] | None = None,
        tls_subject: str | None = None,
    ) -> None:
        """Register (or replace) a client that may use the token endpoint.

        A client that authenticates with a key or a certificate only may have
        an empty `secret`: an empty secret never matches.
        """
        methods = tuple(auth_methods)
        check_auth_methods(methods, CLIENT_AUTH_METHODS)
        client = SandboxClient(client_id, secret, scope, methods, jwks, tls_subject)
        with self._lock:
            self._clients[client_id] = client

    def use_jti(self, client_id: str, jti: str) -> bool:
        """Note a client assertion's `jti`; False if it was seen before (replay)."""
        with self._lock:
            if (client_id, jti) in self._jtis:
                return False
            self._jtis.add((client_id, jti))

        return True

    def client(self, client_id: str) -> SandboxClient | None:
        """Look a client up by id."""
        with self._lock:
            return self._clients.get(client_id)

    # -- tokens ----------------------------------------------------------

    def remember_token(
        self, access_token: str, *, client_id: str, scope: str, lifetime_s: int
    ) -> None:
        """Keep a freshly issued access token so the API can check it later."""
        expires_at = self._monotonic() + lifetime_s
        token = IssuedToken(access_token, client_id, scope, lifetime_s, expires_at)
        with self._lock:
            self._tokens[access_token] = token
            self._issued.append(access_token)

    def find_token(self, access_token: str) -> IssuedToken | None:
        """Return what the sandbox knows of a token string, if anything."""
        with self._lock:
            return self._tokens.get(access_token)

    def is_expired(self, token: IssuedToken) -> bool:
        """Whether the token's lifetime has run out on the sandbox's clock."""
        return self._monotonic() >= token.expires_at

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token ever issued, oldest first (a copy)."""
        with self._lock:
            return list(self._issued)

    def revoke_token(self, access_token: str) -> None:
        """Make one token fail with ``invalid_token`` from now on."""
        with self._lock:
            token = self._tokens.get(access_token)
            if token is not None:
                token.revoked = True

    def revoke_all_tokens(self) -> None:
        """Make every token issued so far fail with ``invalid_token``."""
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True

    def expire_all_tokens(self) -> None:
        """Make every token issued so far count as expired right now."""
        now = self._monotonic()
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = min(token.expires_at, now)

    # -- data ------------------------------------------------------------

    @property
    def records(self) -> RecordSet:
        """The record generator behind the resource endpoint."""
        return self._records

    @property
    def epoch(self) -> int:
        """How many mutation rounds have happened; moves with time if set to."""
        with self._lock:
            base, anchor = self._epoch_base, self._epoch_anchor
        if self._mutate_every_s is None:
            return base
        elapsed = self._monotonic() - anchor

        return base + int(elapsed // self._mutate_every_s)

    @epoch.setter
    def epoch(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"epoch={value} must be 0 or more.")
        with self._lock:
            self._epoch_base = value
            self._epoch_anchor = self._monotonic()

    def all_records(self) -> list[dict[str, Any]]:
        """The records as the API serves them now, in paging order."""
        return self._records.all_records(self.epoch)

    # -- counters and faults ----------------------------------------------

    def count_token_request(self, form: dict[str, str]) -> None:
        """Note one POST to the token endpoint and its form (no secret)."""
        with self._lock:
            self.token_requests += 1
            self.last_token_form = form

    @contextmanager
    def resource_request(self) -> Iterator[None]:
        """Count a request to the resource endpoint while it is being answered."""
        with self._lock:
            self.resource_requests += 1
            self.resource_in_flight += 1
            self.resource_in_flight_peak = max(
                self.resource_in_flight_peak, self.resource_in_flight
            )
        try:
            yield
        finally:
            with self._lock:
                self.resource_in_flight -= 1

    def take(self, knob: str) -> bool:
        """Spend one unit of a "next N requests" knob; False when it is 0."""
        with self._lock:
            left: int = getattr(self, knob)
            if left <= 0:
                return False
            setattr(self, knob, left - 1)

        return True

    def spend_page(self) -> bool:
        """Count a data page against ``fail_after_pages``; False once it is spent."""
        with self._lock:
            left = self.fail_after_pages
            if left is None:
                return True
            if left <= 0:
                return False
            self.fail_after_pages = left - 1

        return True

    @property
    def seed(self) -> int:
        """Seed of the random faults; setting it restarts their sequence."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        with self._lock:
            self._seed = value
            self._rng = random.Random(value)

    def draw_random_fault(self) -> int | None:
        """Pick the status of a random fault for this request, or None."""
        rate_5xx, rate_429 = self.error_rate_5xx, self.error_rate_429
        if rate_5xx <= 0 and rate_429 <= 0:
            return None
        # Every request makes the same draws, whichever rate is on, so one
        # seed gives one sequence of outcomes even while the rates are tuned.
        with self._lock:
            roll_5xx, roll_429 = self._rng.random(), self._rng.random()
            status = self._rng.choice((502, 503, 504))
        if roll_5xx < rate_5xx:
            return status
        if roll_429 < rate_429:
            return 429

        return None
