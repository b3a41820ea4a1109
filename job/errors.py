"""What can go wrong, as types.

The whole tree::

    JobError                      root; the CLI maps it to a message and exit code
    +-- ConfigError               config.yaml or the environment is wrong (exit 2)
    +-- AuthError                 obtaining or using a token failed
    |   +-- PermanentAuthError    the provider refused us (invalid_client, ...)
    |   +-- TransientAuthError    the provider may answer later (429, 5xx, timeout)
    +-- FetchError                pulling the protected resource failed
    |   +-- TransientFetchError   retryable: connection error, timeout, 429, 5xx
    |   +-- PermanentFetchError   not retryable: other 4xx, a bad body, a loop
    +-- StorageError              the database refused or is not ready
    |   +-- TransientStorageError locked, or the connection dropped: retry the page
    |   +-- SchemaError           the schema is behind the code: run `job db upgrade`
    +-- RunInterrupted            the run was asked to stop (SIGTERM, Ctrl-C)

Retry decisions look at the class, never at the message. Every error carries
its context as keyword-only attributes and a message that says what to do.
"""

from __future__ import annotations


class JobError(Exception):
    """The root of every error `job` raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(JobError):
    """The configuration cannot be used as it is."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class AuthError(JobError):
    """A token could not be obtained or was refused."""

    permanent = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.error = error
        self.error_description = error_description


class PermanentAuthError(AuthError):
    """The provider refused the credentials or the request; retrying won't help."""

    permanent = True


class TransientAuthError(AuthError):
    """The provider could not answer now; a later attempt may succeed."""


class FetchError(JobError):
    """The protected resource could not be pulled."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempt = attempt


class TransientFetchError(FetchError):
    """A fault that a retry may cure: connection error, timeout, 429, 5xx."""


class PermanentFetchError(FetchError):
    """A fault that no retry cures: a 4xx, a body of the wrong shape, a loop."""


class StorageError(JobError):
    """The database refused an operation or is unreachable."""


class TransientStorageError(StorageError):
    """The database is locked or the connection broke; a later attempt may work."""


class SchemaError(StorageError):
    """The database schema is not at the revision this code needs."""


class RunInterrupted(JobError):
    """The run was asked to stop between two pages."""

    exit_code = 130
