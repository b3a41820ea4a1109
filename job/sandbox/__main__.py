"""Let ``python -m job.sandbox`` run the sandbox command."""

from __future__ import annotations

from job.sandbox.cli import sandbox_command

sandbox_command()
