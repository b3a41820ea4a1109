"""The benchmark's handle on a `bench.serve` process: its URLs and its knobs."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson

from bench.serve import SECRET_ENV


@dataclass
class BenchSandbox:
    """A sandbox serving ``records`` records from a child process."""

    records: int
    # Made fresh for each sandbox and handed over only through environments.
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    urls: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[str] | None = None

    def __enter__(self) -> BenchSandbox:
        env = {**os.environ, SECRET_ENV: self.secret}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.serve", "--records", str(self.records)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.urls = orjson.loads(self._readline())

        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def command(self, line: str) -> None:
        """Send one command (``epoch 1``, ``latency 0.05``, ``warm 500``)."""
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write(line + "\n")
        process.stdin.flush()
        answer = self._readline()
        if answer != "ok":
            raise RuntimeError(f"bench.serve refused {line!r}: {answer}")

    def _readline(self) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("bench.serve stopped; see its output above")

        return line.strip()

    @property
    def token_url(self) -> str:
        return self.urls["token_url"]

    @property
    def resource_url(self) -> str:
        return self.urls["resource_url"]

    def token(self) -> str:
        """A fresh access token from the Authlib provider (kept in memory)."""
        import requests

        response = requests.post(
            self.token_url,
            data={"grant_type": "client_credentials", "scope": "read:data"},
            auth=(self.urls["client_id"], self.secret),
            timeout=10,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()

        return str(body["access_token"])
