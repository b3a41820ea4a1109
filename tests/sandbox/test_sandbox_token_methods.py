"""The sandbox's token endpoint: private_key_jwt, mutual TLS and response shapes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from joserfc import jwk, jwt

from job.client_auth import ASSERTION_TYPE
from job.sandbox import SandboxServer, SandboxSettings
from job.sandbox.testing import SandboxCaller
from job.sandbox.tls import TestAuthority

CLIENT = "signer"


@pytest.fixture
def key(server: SandboxServer) -> jwk.ECKey:
    """A key pair whose public half the sandbox has for `signer`."""
    private = jwk.ECKey.generate_key("P-256", {"kid": "k1"})
    server.state.add_client(
        CLIENT,
        "",
        auth_methods=("private_key_jwt",),
        jwks={"keys": [private.as_dict(private=False)]},
    )
    return private


def assertion(server: SandboxServer, key: jwk.Key, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": server.token_url,
        "jti": f"jti-{time.monotonic_ns()}",
        "iat": now,
        "exp": now + 60,
        **claims,
    }
    return jwt.encode({"alg": "ES256", "kid": "k1"}, body, key)


def post_assertion(server: SandboxServer, signed: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }
    return requests.post(server.token_url, data=form, timeout=5)


class TestPrivateKeyJwt:
    def test_a_valid_assertion_gets_a_token(
        self, server: SandboxServer, key: jwk.Key
    ) -> None:
        """Signed by the registered key, right aud, fresh jti: 200."""
        response = post_assertion(server, assertion(server, key))

        assert response.status_code == 200
        assert response.json()["access_token"] in server.state.issued_tokens

    def test_a_replayed_jti_is_refused(
        self, server: SandboxServer, key: jwk.Key
    ) -> None:
        """The same assertion twice: the second is invalid_client."""
        signed = assertion(server, key)

        first = post_assertion(server, signed)
        second = post_assertion(server, signed)

        assert first.status_code == 200
        # RFC 6749 5.2: 401 only when the client tried an Authorization header.
        assert second.status_code == 400
        assert second.json()["error"] == "invalid_client"

    @pytest.mark.parametrize(
        "claims",
        [
            {"aud": "https://elsewhere.example/token"},
            {"exp": int(time.time()) - 600},
            {"sub": "someone-else"},
        ],
    )
    def test_wrong_claims_are_refused(
        self, server: SandboxServer, key: jwk.Key, claims: dict[str, Any]
    ) -> None:
        """Another audience, an expired assertion, iss != sub: invalid_client."""
        response = post_assertion(server, assertion(server, key, **claims))

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client"

    def test_a_secret_client_cannot_use_an_assertion(
        self, server: SandboxServer, key: jwk.Key
    ) -> None:
        """A client registered for secrets only is refused an assertion."""
        server.state.add_client(
            CLIENT, "a-secret", jwks={"keys": [key.as_dict(private=False)]}
        )

        response = post_assertion(server, assertion(server, key))

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client"


class TestResponseShapes:
    def test_overrides_set_and_remove_fields(
        self, server: SandboxServer, api: SandboxCaller
    ) -> None:
        """token_body_overrides: None removes a field, anything else sets it."""
        server.state.token_body_overrides = {"expires_in": None, "expires_on": "1"}

        body = api.token_response().json()

        assert "expires_in" not in body
        assert body["expires_on"] == "1"

    def test_jwt_access_tokens_carry_exp(
        self, server: SandboxServer, api: SandboxCaller
    ) -> None:
        """jwt_access_tokens: a JWT whose exp is the wall-clock expiry; still valid."""
        server.state.jwt_access_tokens = True

        token = api.token()
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * 3))

        assert abs(claims["exp"] - (time.time() + 300)) < 5
        assert api.get(token=token).status_code == 200


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    return TestAuthority(tmp_path)


@pytest.fixture
def optional_tls(authority: TestAuthority) -> Iterator[SandboxServer]:
    """HTTPS where a client certificate is optional but verified if sent."""
    settings = SandboxSettings(client_secret="test-secret", port=0, records=10)
    context = authority.server_context(require_client_cert=False)
    with SandboxServer(settings, ssl_context=context) as running:
        yield running


class TestMutualTls:
    def test_the_url_is_https(self, optional_tls: SandboxServer) -> None:
        """A sandbox given an SSL context says https in its URLs."""
        assert optional_tls.token_url.startswith("https://127.0.0.1:")

    def test_tls_client_auth_without_a_certificate_is_invalid_client(
        self, optional_tls: SandboxServer, authority: TestAuthority
    ) -> None:
        """No certificate: the client_id alone proves nothing."""
        optional_tls.state.add_client(
            "mtls", "", auth_methods=("tls_client_auth",), tls_subject="CN=mtls"
        )
        form = {"grant_type": "client_credentials", "client_id": "mtls"}

        response = requests.post(
            optional_tls.token_url, data=form, verify=str(authority.ca_file), timeout=5
        )

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    def test_secret_clients_still_work_over_https(
        self, optional_tls: SandboxServer, authority: TestAuthority
    ) -> None:
        """The default client keeps client_secret_basic over TLS."""
        form = {"grant_type": "client_credentials"}

        response = requests.post(
            optional_tls.token_url,
            data=form,
            auth=("job-demo", "test-secret"),
            verify=str(authority.ca_file),
            timeout=5,
        )

        assert response.json()["access_token"] in optional_tls.state.issued_tokens
