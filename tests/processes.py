"""Running `job` as a separate process, the way people and cron do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from job.sandbox import SandboxServer
from tests.factories import SANDBOX_SECRET
from tests.leaks import LeakWatch

CONFIG = """\
database:
  url: {database_url}
providers:
  sandbox:
    token_url: {token_url}
    client_id: job-demo
    client_secret: ${{OAUTH_CLIENT_SECRET}}
    scope: read:data
    retry: {{max_attempts: 2, backoff_base_s: 0.01, backoff_cap_s: 0.02}}
sources:
  - name: items
    provider: sandbox
    url: {resource_url}
    primary_key: id
    pagination: {{next: next}}
    schedule: {{every: 1s}}
"""


class Job:
    """Runs `python -m job` with a config file, recording output for leak checks."""

    def __init__(self, folder: Path, watch: LeakWatch) -> None:
        self.folder = folder
        self.watch = watch
        self.env = {**os.environ, "OAUTH_CLIENT_SECRET": SANDBOX_SECRET}
        self.env.pop("JOB_DATABASE_URL", None)

    def write_config(self, sandbox: SandboxServer | None, **overrides: str) -> Path:
        values = {
            "database_url": f"sqlite:///{self.folder / 'job.db'}",
            "token_url": sandbox.token_url if sandbox else "http://127.0.0.1:9/t",
            "resource_url": sandbox.resource_url if sandbox else "http://127.0.0.1:9/r",
            **overrides,
        }
        path = self.folder / "config.yaml"
        path.write_text(CONFIG.format(**values))
        return path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "job", "--log-format", "json", *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.watch.output(f"job {' '.join(args)} stdout", result.stdout)
        self.watch.output(f"job {' '.join(args)} stderr", result.stderr)
        return result
