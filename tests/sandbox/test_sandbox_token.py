"""The sandbox's token endpoint: client authentication, scopes, errors, quirks."""

from __future__ import annotations

import base64

import pytest
import requests
from requests.auth import HTTPBasicAuth

from job.sandbox import SandboxServer
from job.sandbox.testing import SandboxCaller

ODD_SECRET = "a:b+c/d%e f é"
OTHER_SECRET = "other-secret"


def post_raw(server: SandboxServer, **kwargs: object) -> requests.Response:
    """POST to the token endpoint exactly as told, no helper encoding."""
    return requests.post(server.token_url, timeout=5, **kwargs)  # type: ignore[arg-type]


class TestClientSecretBasic:
    def test_issues_a_bearer_token(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """Correct Basic credentials get an RFC 6749 §5.1 token response."""
        response = api.token_response()
        body = response.json()

        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 300
        assert body["scope"] == "read:data"
        assert len(body["access_token"]) >= 40
        assert server.state.issued_tokens == [body["access_token"]]

    def test_wrong_secret_is_invalid_client(self, api: SandboxCaller) -> None:
        """A wrong secret gets 401 invalid_client with a Basic challenge."""
        response = api.token_response(secret="wrong")

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        assert response.headers["WWW-Authenticate"].startswith("Basic ")

    def test_unknown_client_is_invalid_client(self, api: SandboxCaller) -> None:
        """An unknown client id gets 401 invalid_client."""
        response = api.token_response(client_id="nobody")

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    def test_encoded_special_secret_is_accepted(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """Id and secret form-urlencoded before Base64 (RFC 6749 §2.3.1) work."""
        server.state.add_client("odd client", ODD_SECRET)

        response = api.token_response(client_id="odd client", secret=ODD_SECRET)

        assert response.status_code == 200

    def test_raw_special_secret_is_rejected(self, server: SandboxServer) -> None:
        """A client that forgets to encode the secret is refused."""
        server.state.add_client("odd", ODD_SECRET)
        data = {"grant_type": "client_credentials"}

        response = post_raw(server, data=data, auth=HTTPBasicAuth("odd", ODD_SECRET))

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    @pytest.mark.parametrize("secret", ["ab+cd", "ab%41", "ab:cd", "ab cd", "50%", "é"])
    def test_each_unencoded_character_is_rejected(
        self, server: SandboxServer, secret: str
    ) -> None:
        """Raw "+", "%", ":", space or non-ASCII in the secret fails."""
        server.state.add_client("raw", secret)
        data = {"grant_type": "client_credentials"}

        response = post_raw(server, data=data, auth=HTTPBasicAuth("raw", secret))

        assert response.status_code == 401

    def test_plus_decodes_to_a_space(self, server: SandboxServer) -> None:
        """A "+" in encoded credentials is a space, as form encoding says."""
        server.state.add_client("spacey", "two words")
        data = {"grant_type": "client_credentials"}

        response = post_raw(server, data=data, auth=("spacey", "two+words"))

        assert response.status_code == 200

    def test_garbled_header_is_invalid_client(self, server: SandboxServer) -> None:
        """A Basic header that is not Base64 of id:secret gets 401."""
        for value in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
            headers = {"Authorization": value}
            data = {"grant_type": "client_credentials"}

            response = post_raw(server, data=data, headers=headers)

            assert response.status_code == 401

    def test_client_without_basic_is_refused(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """A client registered for client_secret_post only cannot use Basic."""
        methods = ("client_secret_post",)
        server.state.add_client("poster", OTHER_SECRET, auth_methods=methods)

        response = api.token_response(client_id="poster", secret=OTHER_SECRET)

        assert response.status_code == 401


class TestClientSecretPost:
    def test_issues_a_token(self, server: SandboxServer) -> None:
        """Credentials in the form body get a token."""
        data = {
            "grant_type": "client_credentials",
            "client_id": server.settings.client_id,
            "client_secret": server.settings.client_secret,
        }

        response = post_raw(server, data=data)

        assert response.status_code == 200
        assert response.json()["token_type"] == "Bearer"

    def test_special_secret_works_in_the_form(self, server: SandboxServer) -> None:
        """The form body carries any secret; requests encodes it."""
        server.state.add_client("odd", ODD_SECRET)
        data = {
            "grant_type": "client_credentials",
            "client_id": "odd",
            "client_secret": ODD_SECRET,
        }

        response = post_raw(server, data=data)

        assert response.status_code == 200

    def test_wrong_secret_is_invalid_client(self, server: SandboxServer) -> None:
        """A wrong secret in the form gets invalid_client."""
        data = {
            "grant_type": "client_credentials",
            "client_id": server.settings.client_id,
            "client_secret": "wrong",
        }

        response = post_raw(server, data=data)

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    def test_client_without_post_is_refused(self, server: SandboxServer) -> None:
        """A client registered for Basic only cannot put its secret in the form."""
        methods = ("client_secret_basic",)
        server.state.add_client("basic", OTHER_SECRET, auth_methods=methods)
        data = {
            "grant_type": "client_credentials",
            "client_id": "basic",
            "client_secret": OTHER_SECRET,
        }

        response = post_raw(server, data=data)

        assert response.status_code == 401


class TestScope:
    def test_missing_scope_grants_everything_the_client_has(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """Without a scope parameter the token carries the client's full scope."""
        server.state.add_client("wide", OTHER_SECRET, scope="read:data write:data")

        body = api.token_response(client_id="wide", secret=OTHER_SECRET).json()

        assert body["scope"] == "read:data write:data"

    def test_a_subset_is_granted_as_asked(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """Asking for part of the client's scope grants just that part."""
        server.state.add_client("wide", OTHER_SECRET, scope="read:data write:data")
        wide = {"client_id": "wide", "secret": OTHER_SECRET}

        body = api.token_response(**wide, scope="write:data").json()

        assert body["scope"] == "write:data"

    def test_scope_beyond_the_client_is_invalid_scope(self, api: SandboxCaller) -> None:
        """Asking for more than the client has gets 400 invalid_scope."""
        response = api.token_response(scope="read:data admin")

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_scope"


class TestTokenErrors:
    def test_other_grant_type_is_unsupported(self, api: SandboxCaller) -> None:
        """A grant other than client_credentials gets unsupported_grant_type."""
        response = api.token_response(grant_type="password")

        assert response.status_code == 400
        assert response.json()["error"] == "unsupported_grant_type"

    def test_missing_grant_type_is_unsupported(self, server: SandboxServer) -> None:
        """A request without grant_type gets unsupported_grant_type."""
        response = post_raw(
            server,
            data={},
            auth=(server.settings.client_id, server.settings.client_secret),
        )

        assert response.status_code == 400
        assert response.json()["error"] == "unsupported_grant_type"

    def test_get_is_not_allowed(self, server: SandboxServer) -> None:
        """The token endpoint only takes POST, and GETs are not counted."""
        response = requests.get(server.token_url, timeout=5)

        assert response.status_code == 405
        assert server.state.token_requests == 0


class TestTokenBookkeeping:
    def test_every_post_is_counted(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """Successful and failed token requests all count."""
        api.token_response()
        api.token_response(secret="wrong")
        server.state.token_503_count = 1
        api.token_response()

        assert server.state.token_requests == 3

    def test_last_form_is_kept_without_the_secret(self, server: SandboxServer) -> None:
        """Extra fields are ignored but recorded; the secret never is."""
        data = {
            "grant_type": "client_credentials",
            "client_id": server.settings.client_id,
            "client_secret": server.settings.client_secret,
            "audience": "https://api.example.test",
            "resource": "urn:data",
        }

        response = post_raw(server, data=data)

        assert response.status_code == 200
        assert server.state.last_token_form == {
            "grant_type": "client_credentials",
            "client_id": server.settings.client_id,
            "audience": "https://api.example.test",
            "resource": "urn:data",
        }

    def test_lifetime_follows_the_state(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """expires_in is the token lifetime in force when the token is made."""
        server.state.token_lifetime_s = 42

        body = api.token_response().json()

        assert body["expires_in"] == 42


class TestTokenQuirks:
    def test_expires_in_as_string(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """expires_in_as_string sends "300" instead of 300."""
        server.state.expires_in_as_string = True

        body = api.token_response().json()

        assert body["expires_in"] == "300"

    def test_omit_expires_in(self, api: SandboxCaller, server: SandboxServer) -> None:
        """omit_expires_in leaves expires_in out of the response."""
        server.state.omit_expires_in = True

        body = api.token_response().json()

        assert "expires_in" not in body
        assert "access_token" in body

    def test_lowercase_token_type_still_works(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """token_type_lowercase says "bearer", and "bearer" is accepted back."""
        server.state.token_type_lowercase = True
        body = api.token_response().json()
        headers = {"Authorization": f"bearer {body['access_token']}"}

        response = requests.get(server.resource_url, headers=headers, timeout=5)

        assert body["token_type"] == "bearer"
        assert response.status_code == 200

    def test_error_with_200(self, api: SandboxCaller, server: SandboxServer) -> None:
        """token_error_with_200 answers 200 with an error body and no token."""
        server.state.token_error_with_200 = True

        response = api.token_response()

        assert response.status_code == 200
        assert response.json()["error"] == "server_error"
        assert "access_token" not in response.json()
        assert server.state.issued_tokens == []

    def test_html_error(self, api: SandboxCaller, server: SandboxServer) -> None:
        """token_html_error answers an HTML page, 500 unless told otherwise."""
        server.state.token_html_error = True
        first = api.token_response()
        server.state.token_html_error_status = 502
        second = api.token_response()

        assert first.status_code == 500
        assert first.headers["Content-Type"].startswith("text/html")
        assert second.status_code == 502

    def test_429_for_the_next_requests(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """token_429_count answers 429 with Retry-After, then recovers."""
        server.state.token_429_count = 2

        statuses = [api.token_response() for _ in range(3)]

        assert [r.status_code for r in statuses] == [429, 429, 200]
        assert statuses[0].headers["Retry-After"] == "1"
        assert server.state.token_429_count == 0

    def test_503_for_the_next_requests(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """token_503_count answers 503, then recovers."""
        server.state.token_503_count = 1

        statuses = [api.token_response().status_code for _ in range(2)]

        assert statuses == [503, 200]
