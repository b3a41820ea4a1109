"""The sandbox's OAuth 2.0 side, built on Authlib's real server classes.

The token endpoint runs Authlib's `AuthorizationServer` with the
client-credentials grant; the resource endpoint checks bearer tokens with
Authlib's `ResourceProtector` and an RFC 6750 validator. Clients and tokens
live in `SandboxState`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Collection, Mapping
from typing import Any, cast
from urllib.parse import unquote_plus

import orjson
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    InvalidScopeError,
    MissingAuthorizationError,
    OAuth2Request,
    TokenMixin,
    UnsupportedTokenTypeError,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6750 import (
    BearerTokenGenerator,
    BearerTokenValidator,
    InsufficientScopeError,
    InvalidTokenError,
)
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from cryptography import x509
from flask import Response
from flask import request as flask_request
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey

from job.sandbox.state import IssuedToken, SandboxClient, SandboxState

REALM = "job-sandbox"
REQUIRED_SCOPE = "read:data"
GRANT_TYPE = "client_credentials"

# What an application/x-www-form-urlencoded value may hold: the characters
# encoders leave alone (RFC 3986 unreserved, plus the few JavaScript's
# encodeURIComponent keeps), "+" for a space, and %XX escapes. Anything else
# in Basic credentials means the client skipped the encoding.
_FORM_ENCODED = re.compile(r"(?:[A-Za-z0-9\-._~!'()*+]|%[0-9A-Fa-f]{2})*")


class OAuthClient(ClientMixin):
    """Authlib's view of a `SandboxClient`."""

    def __init__(self, client: SandboxClient) -> None:
        self.client = client

    def get_client_id(self) -> str:
        return self.client.client_id

    def grantable_scope(self, scope: str | None) -> str | None:
        """The scope to grant (all the client has if none is asked), or None."""
        requested = (scope or "").split()
        if not requested:
            return self.client.scope
        if not set(requested) <= set(self.client.scope.split()):
            return None

        return " ".join(dict.fromkeys(requested))

    def get_allowed_scope(self, scope: Collection[str] | str | None) -> str:
        # Authlib asks this when it builds the token, after the grant has
        # already refused any scope beyond the client's.
        if scope is None or isinstance(scope, str):
            return self.grantable_scope(scope) or ""

        return self.grantable_scope(" ".join(scope)) or ""

    def check_client_secret(self, client_secret: str) -> bool:
        if not self.client.secret:
            return False  # a key- or certificate-only client has no secret
        expected = self.client.secret.encode()

        return secrets.compare_digest(expected, client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in self.client.auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE


class OAuthToken(TokenMixin):
    """Authlib's view of an `IssuedToken`, judged on the sandbox's clock."""

    def __init__(self, token: IssuedToken, state: SandboxState) -> None:
        self.token = token
        self._state = state

    def check_client(self, client: OAuthClient) -> bool:
        return client.get_client_id() == self.token.client_id

    def get_scope(self) -> str:
        return self.token.scope

    def get_expires_in(self) -> int:
        return self.token.lifetime_s

    def is_expired(self) -> bool:
        return self._state.is_expired(self.token)

    def is_revoked(self) -> bool:
        return self.token.revoked


def read_basic_credentials(header: str | None) -> tuple[str, str] | None:
    """Decode ``Authorization: Basic`` credentials strictly, per RFC 6749 §2.3.1.

    The id and the secret are each form-urlencoded before Base64, so they
    are decoded with ``unquote_plus`` ("+" is a space). Values that could not
    come out of that encoding are refused rather than guessed at.
    """
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not _is_form_encoded(client_id, secret):
        return None
    try:
        return _form_decode(client_id), _form_decode(secret)
    except UnicodeDecodeError:
        return None


def _form_decode(value: str) -> str:
    # Strict: %-escapes that are not UTF-8 are an encoding mistake too.
    return unquote_plus(value, encoding="utf-8", errors="strict")


def _is_form_encoded(*values: str) -> bool:
    return all(value and _FORM_ENCODED.fullmatch(value) for value in values)


def authenticate_basic_strictly(query_client: Any, request: Any) -> OAuthClient | None:
    """Authlib client-auth method replacing its lenient ``client_secret_basic``."""
    credentials = read_basic_credentials(request.headers.get("Authorization"))
    if credentials is None:
        return None
    client_id, secret = credentials
    client: OAuthClient | None = query_client(client_id)
    if client is None or not client.check_client_secret(secret):
        return None

    return client


class SandboxClientAssertion(JWTBearerClientAssertion):
    """RFC 7523 section 2.2 ``private_key_jwt``, verified by Authlib and joserfc.

    The assertion must be signed by a key in the client's registered JWK Set
    (matched by ``kid``), name the token URL (or `state.assertion_audience`)
    as ``aud``, carry ``exp`` and a ``jti`` never seen before.
    """

    # Authlib's stub marks it Final; its docs say to override it.
    CLIENT_AUTH_METHOD = "private_key_jwt"  # type: ignore[misc]

    def __init__(self, state: SandboxState) -> None:
        super().__init__(validate_jti=True, leeway=5)
        self._state = state

    def get_audiences(self) -> list[str]:
        configured = self._state.assertion_audience

        return [configured] if configured else [flask_request.base_url]

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        return self._state.use_jti(str(claims["sub"]), jti)

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        jwks = client.client.jwks
        if not jwks or not jwks.get("keys"):
            # A client registered without a key cannot sign: refuse it as a
            # provider would (401 invalid_client), not with a server error.
            raise InvalidClientError(description="no public key is registered")

        return KeySet.import_key_set(cast(Any, dict(jwks)))


def authenticate_tls_client(query_client: Any, request: Any) -> OAuthClient | None:
    """RFC 8705 ``tls_client_auth``: the verified peer certificate's subject.

    The TLS layer has already checked the certificate against the sandbox's
    CA; werkzeug hands it over as ``SSL_CLIENT_CERT`` (PEM) in the environ.
    """
    pem = flask_request.environ.get("SSL_CLIENT_CERT")
    client_id = request.form.get("client_id")
    if not pem or not client_id:
        return None
    client: OAuthClient | None = query_client(client_id)
    if client is None or client.client.tls_subject is None:
        return None
    subject = x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()

    return client if subject == client.client.tls_subject else None


class SandboxClientCredentialsGrant(ClientCredentialsGrant):
    """The client-credentials grant, with every client auth method and scopes."""

    TOKEN_ENDPOINT_AUTH_METHODS = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "tls_client_auth",
    ]

    def validate_requested_scope(self) -> None:
        # RFC 6749 §3.3: a scope beyond what the client was granted is an
        # error, not something to trim silently.
        payload = self.request.payload
        client = self.request.client
        scope = None if payload is None else payload.scope
        if isinstance(client, OAuthClient) and client.grantable_scope(scope) is None:
            raise InvalidScopeError(
                description="The requested scope is not within the client's scope."
            )


class SandboxAuthorizationServer(AuthorizationServer):
    """Authlib's Flask authorization server over the sandbox's state."""

    def __init__(self, state: SandboxState) -> None:
        super().__init__()
        self._state = state
        generator = BearerTokenGenerator(self._new_access_token, None, self._expires_in)
        self.register_token_generator("default", generator)
        self.register_grant(SandboxClientCredentialsGrant)
        self.register_client_auth_method(
            "client_secret_basic", authenticate_basic_strictly
        )
        self.register_client_auth_method(
            "private_key_jwt", SandboxClientAssertion(state)
        )
        self.register_client_auth_method("tls_client_auth", authenticate_tls_client)

    # Authlib treats None as "no such client"; its stub says it never is.
    def query_client(self, client_id: str) -> OAuthClient | None:  # type: ignore[override]
        client = self._state.client(client_id)

        return None if client is None else OAuthClient(client)

    def save_token(self, token: dict[str, str | int], request: OAuth2Request) -> None:
        assert request.client is not None, "Authlib saves tokens of known clients"
        self._state.remember_token(
            str(token["access_token"]),
            client_id=request.client.get_client_id(),
            scope=str(token.get("scope", "")),
            lifetime_s=int(token["expires_in"]),
        )

    def token_response(self) -> Response:
        """Answer the current Flask request at the token endpoint."""
        # The Flask integration returns what handle_response built.
        return cast(Response, self.create_token_response())

    def handle_response(
        self,
        status_code: int,
        payload: Mapping[str, object] | str,
        headers: Mapping[str, str] | list[tuple[str, str]],
    ) -> Response:
        if isinstance(payload, str):
            return Response(payload, status=status_code, headers=headers)
        body = dict(payload)
        if status_code == 200 and "access_token" in body:
            body = shape_token_body(body, self._state)

        return Response(orjson.dumps(body), status=status_code, headers=headers)

    def _expires_in(self, client: ClientMixin, grant_type: str) -> int:
        return self._state.token_lifetime_s

    def _new_access_token(self, *, client: ClientMixin, **_: Any) -> str:
        if not self._state.jwt_access_tokens:
            return secrets.token_urlsafe(32)
        claims = {
            "sub": client.get_client_id(),
            "exp": int(time.time()) + self._state.token_lifetime_s,
            "jti": secrets.token_urlsafe(16),
        }
        # Clients must not verify it (that is the resource's job), so a
        # throwaway HMAC key is as good as any.
        key = OctKey.generate_key(256)

        return jwt.encode({"alg": "HS256"}, claims, key)


def shape_token_body(body: dict[str, object], state: SandboxState) -> dict[str, object]:
    """Apply the token-response quirks that real providers are known for."""
    shaped = dict(body)
    if state.token_type_lowercase:
        shaped["token_type"] = str(shaped["token_type"]).lower()
    if state.omit_expires_in:
        shaped.pop("expires_in", None)
    elif state.expires_in_as_string:
        shaped["expires_in"] = str(shaped["expires_in"])
    for name, value in state.token_body_overrides.items():
        if value is None:
            shaped.pop(name, None)
        else:
            shaped[name] = value

    return shaped


class SandboxBearerValidator(BearerTokenValidator):
    """RFC 6750 bearer checks against the tokens the sandbox issued."""

    def __init__(self, state: SandboxState) -> None:
        super().__init__(realm=REALM)
        self._state = state

    def authenticate_token(self, token_string: str) -> OAuthToken | None:
        token = self._state.find_token(token_string)

        return None if token is None else OAuthToken(token, self._state)

    def validate_token(
        self, token: OAuthToken | None, scopes: list[str] | None, request: Any
    ) -> None:
        if token is None:
            raise self._invalid("The access token is not one this server issued.")
        if token.is_revoked():
            raise self._invalid("The access token was revoked.")
        if token.is_expired():
            raise self._invalid("The access token expired.")
        if not set(scopes or ()) <= set(token.get_scope().split()):
            raise InsufficientScopeError()

    def _invalid(self, description: str) -> InvalidTokenError:
        return InvalidTokenError(description=description, realm=self.realm)


class SandboxProtector(ResourceProtector):
    """Authlib's Flask resource protector with the sandbox's bearer validator."""

    def __init__(self, state: SandboxState) -> None:
        super().__init__()
        self.register_token_validator(SandboxBearerValidator(state))

    def check(self) -> None:
        """Check the current Flask request's bearer token; raise OAuth2Error."""
        self.acquire_token([REQUIRED_SCOPE])  # type: ignore[no-untyped-call]


def bearer_error_response(error: OAuth2Error) -> Response:
    """Turn a failed bearer check into an RFC 6750 §3 response."""
    status, body, headers = error()
    # Authlib names these with its own error codes; RFC 6750 §3.1 wants a
    # bare challenge when the request carried no bearer token at all.
    if isinstance(error, MissingAuthorizationError | UnsupportedTokenTypeError):
        headers = _with_challenge(headers, f'Bearer realm="{REALM}"')
    elif isinstance(error, InsufficientScopeError):
        challenge = (
            f'Bearer realm="{REALM}", error="insufficient_scope", '
            f'scope="{REQUIRED_SCOPE}"'
        )
        headers = _with_challenge(headers, challenge)

    return Response(orjson.dumps(body), status=status, headers=headers)


def _with_challenge(
    headers: list[tuple[str, str]], challenge: str
) -> list[tuple[str, str]]:
    kept = [(name, value) for name, value in headers if name != "WWW-Authenticate"]

    return [*kept, ("WWW-Authenticate", challenge)]
