"""The ``sandbox`` command: where the secret comes from, and a real run."""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import click
import pytest
import requests

import job
from job.sandbox.cli import SECRET_ENV, load_or_create_secret, resolve_secret

REPO_ROOT = Path(job.__file__).resolve().parent.parent


class TestResolveSecret:
    def test_environment_wins(self, tmp_path: Path) -> None:
        """JOB_SANDBOX_CLIENT_SECRET is used and no file is written."""
        path = tmp_path / "secret"

        secret, origin = resolve_secret(path, {SECRET_ENV: "from-env"})

        assert (secret, origin) == ("from-env", f"${SECRET_ENV}")
        assert not path.exists()

    def test_existing_file_is_read(self, tmp_path: Path) -> None:
        """An existing secret file is used as is, minus the final newline."""
        path = tmp_path / "secret"
        path.write_text("kept: as+is\n", encoding="utf-8")

        secret, origin = resolve_secret(path, {})

        assert secret == "kept: as+is"
        assert origin == str(path)

    def test_missing_file_is_created_private(self, tmp_path: Path) -> None:
        """A new secret goes into a new 0600 file in a new 0700 folder."""
        path = tmp_path / ".sandbox" / "client_secret"

        secret = load_or_create_secret(path)

        assert len(secret) >= 32
        assert path.read_text(encoding="utf-8") == secret + "\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert load_or_create_secret(path) == secret

    def test_empty_file_is_an_error(self, tmp_path: Path) -> None:
        """An empty secret file stops the command with a clear message."""
        path = tmp_path / "secret"
        path.write_text("", encoding="utf-8")

        with pytest.raises(click.ClickException, match="empty"):
            load_or_create_secret(path)


Lines = queue.Queue[str | None]


def start_command(tmp_path: Path) -> tuple[subprocess.Popen[str], Lines]:
    """Run ``python -m job.sandbox`` on a free port; stream its output lines."""
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    env["PYTHONPATH"] = str(REPO_ROOT)
    command = [sys.executable, "-m", "job.sandbox", "--port", "0", "--records", "5"]
    process = subprocess.Popen(
        [*command, "--secret-file", str(tmp_path / "secret")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: Lines = queue.Queue()
    threading.Thread(target=pump, args=(process, lines), daemon=True).start()

    return process, lines


def pump(process: subprocess.Popen[str], lines: Lines) -> None:
    """Copy the process's output into ``lines``; None marks the end."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def read_until(lines: Lines, marker: str | None) -> list[str]:
    """Collect output lines up to the one containing ``marker`` (None: the end)."""
    seen: list[str] = []
    while True:
        line = lines.get(timeout=15)
        if line is None:
            return seen
        seen.append(line)
        if marker is not None and marker in line:
            return seen


@pytest.mark.slow
class TestSandboxCommand:
    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
    def test_serves_until_signalled(self, tmp_path: Path, signum: int) -> None:
        """It prints where to connect, serves, and exits 0 on SIGINT or SIGTERM."""
        process, lines = start_command(tmp_path)
        try:
            banner = read_until(lines, "client secret:")
            urls = {line.split(":", 1)[0].strip(): line.split()[-1] for line in banner}
            secret = (tmp_path / "secret").read_text(encoding="utf-8").strip()
            auth = ("job-demo", quote(secret, safe=""))
            data = {"grant_type": "client_credentials"}
            reply = requests.post(urls["token URL"], data=data, auth=auth, timeout=5)
            token = reply.json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            page = requests.get(urls["resource URL"], headers=headers, timeout=5)
            process.send_signal(signum)
            returncode = process.wait(timeout=10)
        finally:
            process.kill()
            process.wait()
        output = "".join(banner + read_until(lines, None))

        assert page.status_code == 200
        assert returncode == 0
        assert str(tmp_path / "secret") in output
        assert secret not in output
        assert token not in output
