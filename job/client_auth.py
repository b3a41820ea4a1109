"""How the client proves who it is at the token endpoint, for each auth method.

Four methods, named as in the IANA registry of RFC 7591:

- ``client_secret_basic``: HTTP Basic, id and secret each form-urlencoded
  first (RFC 6749 section 2.3.1);
- ``client_secret_post``: id and secret in the form body;
- ``private_key_jwt``: a short-lived JWT signed with the client's private key
  (RFC 7523 section 2.2), as Entra ID and Okta use;
- ``tls_client_auth``: the client certificate of a mutual TLS connection
  (RFC 8705 section 2.1); only ``client_id`` goes in the form.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from job.clock import Clock
from job.config import ProviderSettings
from job.errors import ConfigError

if TYPE_CHECKING:
    from joserfc import jwk

# cryptography and joserfc are imported where a key or certificate is read:
# together they add about 10 MB to every job process, and only providers
# using private_key_jwt or a client certificate need them.

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# RFC 7523 section 3 asks for an expiry "within a reasonable window"; providers
# cap it (Okta at one hour) and a short one limits what a leaked assertion buys.
ASSERTION_LIFETIME_S = 60

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

KeyType = Literal["RSA", "EC", "OKP"]


def basic_credentials(client_id: str, secret: str) -> str:
    """The client_secret_basic header value, encoded as RFC 6749 section 2.3.1 asks.

    The id and the secret are each form-urlencoded before Base64, so a secret
    holding `:`, `+`, `%` or a space reaches a strict server intact.
    """
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


@dataclass
class AssertionSigner:
    """Signs RFC 7523 client assertions with the key in `private_key_file`."""

    provider: ProviderSettings
    clock: Clock
    _key: jwk.Key | None = field(default=None, init=False, repr=False)
    _algorithm: str = field(default="", init=False)
    _x5t: dict[str, str] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def assertion(self) -> str:
        """A fresh signed assertion: unique `jti`, `exp` a minute from now."""
        key, algorithm = self._loaded()
        provider = self.provider
        issued = int(self.clock.now().timestamp())
        claims = {
            "iss": provider.client_id,
            "sub": provider.client_id,
            "aud": provider.assertion_audience or provider.token_url,
            "jti": secrets.token_urlsafe(18),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ASSERTION_LIFETIME_S,
        }
        header = {
            "alg": algorithm,
            "kid": self.key_id(),
            "typ": "JWT",
            **self._thumbprints(),
        }

        from joserfc import jwt

        return jwt.encode(header, claims, key, algorithms=[algorithm])

    def key_id(self) -> str:
        """`key_id` as configured, else the key's RFC 7638 thumbprint."""
        if self.provider.key_id:
            return self.provider.key_id
        key, _ = self._loaded()

        return key.thumbprint()

    def _thumbprints(self) -> dict[str, str]:
        # Entra ID finds the certificate by its SHA-1 thumbprint (x5t), not
        # by kid; send both forms when the certificate is configured.
        path = self.provider.client_cert_file
        if path is None:
            return {}
        with self._lock:
            if self._x5t is None:
                pem = _read(path, self.provider.name, "client_cert_file")
                self._x5t = certificate_thumbprints(pem, self.provider.name, path)
            return dict(self._x5t)

    @property
    def algorithm(self) -> str:
        return self._loaded()[1]

    def _loaded(self) -> tuple[jwk.Key, str]:
        with self._lock:
            if self._key is None:
                self._key, self._algorithm = load_signing_key(self.provider)
            return self._key, self._algorithm


def load_signing_key(provider: ProviderSettings) -> tuple[jwk.Key, str]:
    """The JWK and JWS algorithm for the provider's PEM private key file."""
    from cryptography.hazmat.primitives import serialization
    from joserfc import jwk

    path = provider.private_key_file
    if path is None:
        raise ConfigError(f"provider {provider.name!r}: private_key_jwt needs a key")
    pem = _read(path, provider.name, "private_key_file")
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"provider {provider.name!r}: private_key_file {path} is not an "
            f"unencrypted PEM private key ({exc}); export it with "
            "`openssl pkcs8 -topk8 -nocrypt`"
        ) from None
    key_type, algorithm = _algorithm_for(private, provider.name, path)

    return jwk.import_key(pem, key_type), algorithm


def certificate_thumbprints(pem: bytes, name: str, path: Path) -> dict[str, str]:
    """`x5t` and `x5t#S256` (RFC 7515 4.1.7-8) of a PEM certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(
            serialization.Encoding.DER
        )
    except ValueError:
        raise ConfigError(
            f"provider {name!r}: client_cert_file {path} is not a PEM certificate"
        ) from None

    return {
        "x5t": _b64url(hashlib.sha1(der).digest()),  # noqa: S324 - a name, per RFC
        "x5t#S256": _b64url(hashlib.sha256(der).digest()),
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _algorithm_for(private: Any, name: str, path: Path) -> tuple[KeyType, str]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(private, rsa.RSAPrivateKey):
        return "RSA", "RS256"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        algorithm = _EC_ALGORITHMS.get(private.curve.name)
        if algorithm is not None:
            return "EC", algorithm
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return "OKP", "EdDSA"
    raise ConfigError(
        f"provider {name!r}: private_key_file {path} holds a key type JWS cannot "
        "use here; use RSA (RS256), EC P-256/384/521 (ES256/384/512) or Ed25519"
    )


def tls_options(provider: ProviderSettings) -> dict[str, Any]:
    """`cert=` and `verify=` for requests: the client certificate and CA bundle."""
    options: dict[str, Any] = {}
    if provider.ca_bundle is not None:
        _check_readable(provider.ca_bundle, provider.name, "ca_bundle")
        options["verify"] = str(provider.ca_bundle)
    if provider.client_cert_file is not None:
        _check_readable(provider.client_cert_file, provider.name, "client_cert_file")
        if provider.client_key_file is None:
            options["cert"] = str(provider.client_cert_file)
        else:
            _check_readable(provider.client_key_file, provider.name, "client_key_file")
            options["cert"] = (
                str(provider.client_cert_file),
                str(provider.client_key_file),
            )

    return options


def _read(path: Path, name: str, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"provider {name!r}: cannot read {setting} {path} ({exc.strerror}); "
            "check the path and its permissions"
        ) from None


def _check_readable(path: Path, name: str, setting: str) -> None:
    # requests would fail later with an opaque SSL error; say which file instead.
    _read(path, name, setting)
