"""A local OAuth 2.0 provider and protected API, for the demo and the tests."""

from __future__ import annotations

from job.sandbox.cli import sandbox_command
from job.sandbox.server import SandboxServer
from job.sandbox.settings import SandboxSettings
from job.sandbox.state import SandboxState

__all__ = ["SandboxServer", "SandboxSettings", "SandboxState", "sandbox_command"]
