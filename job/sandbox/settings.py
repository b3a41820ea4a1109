"""The fixed shape of one sandbox: where it listens, its client and its data."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_AUTH_METHODS: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
# The configured client has a secret only; clients added at run time
# (`SandboxState.add_client`) may also use a key or a certificate.
SUPPORTED_AUTH_METHODS = frozenset(DEFAULT_AUTH_METHODS)
CLIENT_AUTH_METHODS = frozenset(
    (*DEFAULT_AUTH_METHODS, "private_key_jwt", "tls_client_auth")
)


@dataclass(frozen=True)
class SandboxSettings:
    """How to build a sandbox; the live knobs are on `SandboxState` instead."""

    # Kept out of repr so that logging the settings never shows the secret.
    client_secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8765
    client_id: str = "job-demo"
    scope: str = "read:data"
    token_lifetime_s: int = 300
    records: int = 3000
    default_page_size: int = 100
    max_page_size: int = 1000
    mutate_every_s: float | None = None
    auth_methods: tuple[str, ...] = DEFAULT_AUTH_METHODS

    def __post_init__(self) -> None:
        _check_loopback(self.host)
        check_auth_methods(self.auth_methods)
        if not self.client_secret:
            raise ValueError("client_secret is empty; pass a non-empty secret.")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} is not a TCP port (0 picks one).")
        if self.token_lifetime_s < 1:
            raise ValueError(
                f"token_lifetime_s={self.token_lifetime_s} must be 1 or more."
            )
        if self.records < 0:
            raise ValueError(f"records={self.records} must be 0 or more.")
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ValueError(
                f"default_page_size={self.default_page_size} must be between 1 "
                f"and max_page_size={self.max_page_size}."
            )
        if self.mutate_every_s is not None and self.mutate_every_s <= 0:
            raise ValueError(
                f"mutate_every_s={self.mutate_every_s} must be positive, or None "
                "to keep the data still."
            )


def _check_loopback(host: str) -> None:
    # The sandbox ships a demo secret and answers anyone; it must never be
    # reachable from another machine.
    if host == "localhost":
        return
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise ValueError(
            f"host={host!r} is not a loopback address; the sandbox only listens "
            "on 127.0.0.1, ::1 or localhost."
        )


def check_auth_methods(
    methods: tuple[str, ...], supported: frozenset[str] = SUPPORTED_AUTH_METHODS
) -> None:
    """Raise ValueError unless the methods are ones the sandbox supports."""
    unknown = set(methods) - supported
    if unknown or not methods:
        raise ValueError(
            f"auth_methods={methods!r} must be a non-empty subset of "
            f"{sorted(supported)}."
        )
