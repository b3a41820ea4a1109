"""private_key_jwt and mutual TLS client authentication, against the sandbox."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwk, jwt
from pydantic import ValidationError

from job.auth import TokenManager
from job.client_auth import ASSERTION_TYPE
from job.clock import FakeClock
from job.config import ProviderSettings
from job.errors import ConfigError, PermanentAuthError, TransientAuthError
from job.sandbox import SandboxServer, SandboxSettings
from job.sandbox.tls import IssuedCertificate, TestAuthority
from tests.factories import SANDBOX_SECRET
from tests.leaks import LeakWatch
from tests.processes import Job

JWT_CLIENT = "jwt-client"
UNUSED_URL = "https://127.0.0.1:1/token"  # never called
TLS_CLIENT = "mtls-client"


@pytest.fixture
def wall_clock() -> FakeClock:
    """A fake clock that starts at the real time: the sandbox checks `exp` by it."""
    return FakeClock(start=datetime.now(UTC))


def write_key(path: Path, kind: str) -> jwk.Key:
    """A new private key in PEM at `path`; its public JWK is returned."""
    private = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return jwk.import_key(path.read_bytes(), "RSA" if kind == "rsa" else "EC")


def register_jwt_client(
    sandbox: SandboxServer, key: jwk.Key, kid: str = "key-1"
) -> None:
    public = {**key.as_dict(private=False), "kid": kid}
    sandbox.state.add_client(
        JWT_CLIENT, "", auth_methods=("private_key_jwt",), jwks={"keys": [public]}
    )


def provider(token_url: str, **fields: Any) -> ProviderSettings:
    return ProviderSettings.model_validate(
        {"name": "p", "token_url": token_url, "scope": "read:data", **fields}
    )


def jwt_manager(
    sandbox: SandboxServer, clock: FakeClock, key_file: Path, **fields: Any
) -> TokenManager:
    settings = provider(
        sandbox.token_url,
        client_id=JWT_CLIENT,
        auth_method="private_key_jwt",
        private_key_file=str(key_file),
        **{"key_id": "key-1", **fields},
    )
    return TokenManager(settings, session=requests.Session(), clock=clock)


def sent_assertion(manager: TokenManager) -> str:
    """The assertion the manager would send next (read from the form it builds)."""
    _, form = manager._credentials()
    return form["client_assertion"]


class TestPrivateKeyJwt:
    @pytest.mark.parametrize("kind", ["rsa", "ec"])
    def test_the_sandbox_accepts_a_signed_assertion(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path, kind: str
    ) -> None:
        """An RS256 or ES256 assertion from a PEM file gets a token."""
        key_file = tmp_path / "client.pem"
        register_jwt_client(sandbox, write_key(key_file, kind))

        token = jwt_manager(sandbox, wall_clock, key_file).token()

        assert token.value in sandbox.state.issued_tokens
        assert sandbox.state.last_token_form == {
            "grant_type": "client_credentials",
            "scope": "read:data",
            "client_id": JWT_CLIENT,
            "client_assertion_type": ASSERTION_TYPE,
        }

    def test_a_client_without_a_registered_key_is_refused_not_crashed(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """No public key on file: invalid_client at once, not a 500 retried."""
        key_file = tmp_path / "client.pem"
        write_key(key_file, "ec")
        sandbox.state.add_client(JWT_CLIENT, "", auth_methods=("private_key_jwt",))

        with pytest.raises(PermanentAuthError) as raised:
            jwt_manager(sandbox, wall_clock, key_file).token()

        assert raised.value.error == "invalid_client"
        assert sandbox.state.token_requests == 1

    def test_the_assertion_has_the_rfc_7523_claims(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """iss = sub = client id, aud = token URL, exp a minute on, kid, unique jti."""
        key_file = tmp_path / "client.pem"
        public = write_key(key_file, "rsa")
        manager = jwt_manager(sandbox, wall_clock, key_file)

        first = jwt.decode(sent_assertion(manager), public)
        second = jwt.decode(sent_assertion(manager), public)

        claims = first.claims
        assert first.header == {"alg": "RS256", "kid": "key-1", "typ": "JWT"}
        assert claims["iss"] == claims["sub"] == JWT_CLIENT
        assert claims["aud"] == sandbox.token_url
        assert claims["exp"] - claims["iat"] == 60
        assert claims["iat"] == int(wall_clock.now().timestamp())
        assert claims["jti"] != second.claims["jti"]

    def test_every_renewal_signs_a_fresh_assertion(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """The sandbox refuses a replayed jti, so two grants prove two assertions."""
        key_file = tmp_path / "client.pem"
        register_jwt_client(sandbox, write_key(key_file, "ec"))
        manager = jwt_manager(sandbox, wall_clock, key_file)
        first = manager.token()

        manager.invalidate()
        second = manager.token()

        assert first.value != second.value
        assert sandbox.state.token_requests == 2

    def test_assertion_audience_replaces_the_token_url(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """A provider that wants its issuer as `aud` gets it when configured."""
        key_file = tmp_path / "client.pem"
        register_jwt_client(sandbox, write_key(key_file, "rsa"))
        sandbox.state.assertion_audience = "https://login.example/tenant"
        configured = jwt_manager(
            sandbox,
            wall_clock,
            key_file,
            assertion_audience="https://login.example/tenant",
        )

        with pytest.raises(PermanentAuthError) as refused:
            jwt_manager(sandbox, wall_clock, key_file).token()
        token = configured.token()

        assert refused.value.error == "invalid_client"
        assert token.value in sandbox.state.issued_tokens

    def test_a_key_the_provider_does_not_know_is_invalid_client(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """Signed with another key: a permanent invalid_client, one request."""
        register_jwt_client(sandbox, write_key(tmp_path / "registered.pem", "rsa"))
        other = tmp_path / "other.pem"
        write_key(other, "rsa")

        with pytest.raises(PermanentAuthError) as refused:
            jwt_manager(sandbox, wall_clock, other).token()

        assert refused.value.error == "invalid_client"
        assert "check client_id" in refused.value.message
        assert sandbox.state.token_requests == 1

    def test_kid_defaults_to_the_key_thumbprint(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """Without key_id, the RFC 7638 thumbprint names the key."""
        key_file = tmp_path / "client.pem"
        public = write_key(key_file, "ec")
        register_jwt_client(sandbox, public, kid=public.thumbprint())

        token = jwt_manager(sandbox, wall_clock, key_file, key_id=None).token()

        assert token.value in sandbox.state.issued_tokens

    def test_a_configured_certificate_adds_its_thumbprints(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """Entra ID style: x5t and x5t#S256 of client_cert_file in the header."""
        cert = TestAuthority(tmp_path).issue_client(JWT_CLIENT)
        loaded = x509.load_pem_x509_certificate(cert.cert_file.read_bytes())
        public = jwk.import_key(cert.key_file.read_bytes(), "EC")
        register_jwt_client(sandbox, public)
        manager = jwt_manager(
            sandbox, wall_clock, cert.key_file, client_cert_file=str(cert.cert_file)
        )

        header = jwt.decode(sent_assertion(manager), public).header
        token = manager.token()

        assert base64.urlsafe_b64decode(header["x5t"] + "=") == loaded.fingerprint(
            hashes.SHA1()  # noqa: S303 - the thumbprint RFC 7515 defines
        )
        assert len(header["x5t#S256"]) == 43
        assert token.value in sandbox.state.issued_tokens

    def test_an_unreadable_key_file_is_a_config_error(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """A missing file is refused with the settings, naming setting and path."""
        with pytest.raises(
            ValidationError,
            match=r"private_key_file\n.*missing\.pem. is not a readable file",
        ):
            jwt_manager(sandbox, wall_clock, tmp_path / "missing.pem")

        assert sandbox.state.token_requests == 0

    def test_a_file_that_is_not_a_key_is_a_config_error(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """A certificate or garbage in private_key_file says how to export a key."""
        key_file = tmp_path / "client.pem"
        key_file.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")

        with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
            jwt_manager(sandbox, wall_clock, key_file).token()

    def test_verbose_description_masks_the_assertion(
        self, sandbox: SandboxServer, wall_clock: FakeClock, tmp_path: Path
    ) -> None:
        """`job token --verbose` shows the algorithm and kid, not the assertion."""
        key_file = tmp_path / "client.pem"
        write_key(key_file, "rsa")
        manager = jwt_manager(sandbox, wall_clock, key_file)

        headers, form = manager.describe_request()
        facts = manager.describe_credentials()

        assert form["client_assertion"] == "***"
        assert "Authorization" not in headers
        assert facts["assertion"] == f"RS256, kid key-1, aud {sandbox.token_url}"


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    """A throwaway CA in the test's folder."""
    return TestAuthority(tmp_path)


@pytest.fixture
def tls_sandbox(
    authority: TestAuthority, leak_watch: LeakWatch
) -> Iterator[SandboxServer]:
    """The sandbox over HTTPS, demanding a client certificate from its CA."""
    settings = SandboxSettings(port=0, client_secret=SANDBOX_SECRET, records=20)
    context = authority.server_context(require_client_cert=True)
    with SandboxServer(settings, ssl_context=context) as server:
        leak_watch.watch_tokens(server.state)
        yield server


def tls_manager(
    token_url: str,
    clock: FakeClock,
    cert: IssuedCertificate,
    ca_bundle: Path | None,
) -> TokenManager:
    settings = provider(
        token_url,
        client_id=TLS_CLIENT,
        auth_method="tls_client_auth",
        client_cert_file=str(cert.cert_file),
        client_key_file=str(cert.key_file),
        ca_bundle=str(ca_bundle) if ca_bundle else None,
        retry={"max_attempts": 2},
    )
    return TokenManager(settings, session=requests.Session(), clock=clock)


class TestMutualTls:
    def test_the_client_certificate_authenticates(
        self,
        tls_sandbox: SandboxServer,
        authority: TestAuthority,
        clock: FakeClock,
    ) -> None:
        """The certificate's subject identifies the client; the form has no secret."""
        cert = authority.issue_client(TLS_CLIENT)
        tls_sandbox.state.add_client(
            TLS_CLIENT, "", auth_methods=("tls_client_auth",), tls_subject=cert.subject
        )

        token = tls_manager(
            tls_sandbox.token_url, clock, cert, authority.ca_file
        ).token()

        assert token.value in tls_sandbox.state.issued_tokens
        assert tls_sandbox.state.last_token_form == {
            "grant_type": "client_credentials",
            "scope": "read:data",
            "client_id": TLS_CLIENT,
        }

    def test_a_certificate_of_another_subject_is_invalid_client(
        self,
        tls_sandbox: SandboxServer,
        authority: TestAuthority,
        clock: FakeClock,
    ) -> None:
        """A valid certificate for someone else gets a permanent invalid_client."""
        registered = authority.issue_client(TLS_CLIENT)
        tls_sandbox.state.add_client(
            TLS_CLIENT,
            "",
            auth_methods=("tls_client_auth",),
            tls_subject=registered.subject,
        )
        stranger = authority.issue_client("someone-else")

        with pytest.raises(PermanentAuthError) as refused:
            tls_manager(
                tls_sandbox.token_url, clock, stranger, authority.ca_file
            ).token()

        assert refused.value.error == "invalid_client"
        assert tls_sandbox.state.token_requests == 1

    def test_an_untrusted_server_certificate_points_at_ca_bundle(
        self,
        tls_sandbox: SandboxServer,
        authority: TestAuthority,
        clock: FakeClock,
    ) -> None:
        """Without ca_bundle, a private CA fails at once, naming the setting."""
        cert = authority.issue_client(TLS_CLIENT)

        with pytest.raises(PermanentAuthError, match="set ca_bundle"):
            tls_manager(tls_sandbox.token_url, clock, cert, None).token()

        assert clock.sleeps == []

    def test_a_certificate_from_another_ca_cannot_connect(
        self,
        tls_sandbox: SandboxServer,
        authority: TestAuthority,
        clock: FakeClock,
        tmp_path: Path,
    ) -> None:
        """The server drops the handshake; the message names the TLS settings."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        foreign = TestAuthority(elsewhere).issue_client(TLS_CLIENT)

        with pytest.raises(TransientAuthError, match="client_cert_file"):
            tls_manager(
                tls_sandbox.token_url, clock, foreign, authority.ca_file
            ).token()

        assert tls_sandbox.state.token_requests == 0

    def test_token_command_facts_name_the_files(
        self, authority: TestAuthority, clock: FakeClock
    ) -> None:
        """`job token` shows the certificate, key and CA bundle paths."""
        cert = authority.issue_client(TLS_CLIENT)
        manager = tls_manager(UNUSED_URL, clock, cert, authority.ca_file)

        assert manager.describe_credentials() == {
            "client certificate": str(cert.cert_file),
            "client key": str(cert.key_file),
            "ca bundle": str(authority.ca_file),
        }

    def test_requests_gets_cert_and_verify(
        self, authority: TestAuthority, clock: FakeClock
    ) -> None:
        """The files go to requests as `cert=(cert, key)` and `verify=ca_bundle`."""
        cert = authority.issue_client(TLS_CLIENT)
        manager = tls_manager(UNUSED_URL, clock, cert, authority.ca_file)

        options = manager._tls_options()

        assert options == {
            "cert": (str(cert.cert_file), str(cert.key_file)),
            "verify": str(authority.ca_file),
        }


JWT_CONFIG = """\
database:
  url: sqlite:///{folder}/job.db
providers:
  entra-like:
    token_url: {token_url}
    client_id: {client_id}
    auth_method: private_key_jwt
    private_key_file: {key_file}
    key_id: key-1
    scope: read:data
sources:
  - name: items
    provider: entra-like
    url: {resource_url}
"""


class TestTokenCommand:
    def test_token_verbose_with_private_key_jwt(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """`job token --verbose` names the key and kid and masks the assertion."""
        key_file = tmp_path / "client.pem"
        register_jwt_client(sandbox, write_key(key_file, "ec"))
        (tmp_path / "config.yaml").write_text(
            JWT_CONFIG.format(
                folder=tmp_path,
                token_url=sandbox.token_url,
                client_id=JWT_CLIENT,
                key_file=key_file,
                resource_url=sandbox.resource_url,
            )
        )

        shown = job("token", "--source", "items", "--verbose")

        facts = dict(_fact(line) for line in shown.stdout.splitlines())
        assert shown.returncode == 0, shown.stderr
        assert facts["auth_method"] == "private_key_jwt"
        assert facts["token_url"] == sandbox.token_url
        assert facts["granted scope"] == "read:data"
        assert facts["lifetime"] == "300 s"
        assert facts["private key"] == str(key_file)
        assert facts["assertion"] == f"ES256, kid key-1, aud {sandbox.token_url}"
        assert "'client_assertion': '***'" in facts["request body"]
        assert ASSERTION_TYPE in facts["request body"]
        assert len(facts["fingerprint"]) == 12


def _fact(line: str) -> tuple[str, str]:
    name, _, value = line.partition("  ")
    return name.strip(), value.strip()
