"""The `job` command as people run it: real processes, real sandbox."""

from __future__ import annotations

import subprocess
import sys

from job.sandbox import SandboxServer
from tests.leaks import LeakWatch
from tests.processes import Job


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert "job: error:" in result.stderr


class TestUserMistakes:
    def test_unknown_config_key_exits_2_naming_key_and_file(self, job: Job) -> None:
        """A misspelt key: exit 2, the file and the key in one line."""
        path = job.write_config(None)
        path.write_text(path.read_text().replace("primary_key", "primary_kee"))

        result = job("once")

        assert_clean_error(result, 2)
        assert "config.yaml" in result.stderr
        assert "sources.0.primary_kee: unknown key" in result.stderr

    def test_missing_environment_variable_exits_2(self, job: Job) -> None:
        """An unset ${VAR}: exit 2, naming the variable."""
        job.write_config(None)
        del job.env["OAUTH_CLIENT_SECRET"]

        result = job("once")

        assert_clean_error(result, 2)
        assert "OAUTH_CLIENT_SECRET is not set" in result.stderr

    def test_schema_not_created_says_to_upgrade(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """Before `job db upgrade`, a pull says to run it."""
        job.write_config(sandbox)

        result = job("once")

        assert_clean_error(result, 1)
        assert "run `job db upgrade`" in result.stderr

    def test_unreachable_token_url_fails_cleanly(self, job: Job) -> None:
        """No provider listening: exit 1, a message naming the token URL."""
        job.write_config(None)
        assert job("db", "upgrade").returncode == 0

        result = job("once")

        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "cannot connect to http://127.0.0.1:9/t" in result.stderr

    def test_wrong_secret_fails_cleanly_without_echoing_it(
        self, job: Job, sandbox: SandboxServer, leak_watch: LeakWatch
    ) -> None:
        """invalid_client: exit 1, what to check, and the wrong secret nowhere."""
        job.write_config(sandbox)
        job.env["OAUTH_CLIENT_SECRET"] = "a-wrong-secret-value"
        leak_watch.secret("a-wrong-secret-value", "job-demo")
        job("db", "upgrade")

        result = job("once")

        assert result.returncode == 1
        assert "invalid_client" in result.stderr
        assert "check client_id and client_secret" in result.stderr

    def test_token_verbose_shows_the_request_even_when_refused(
        self, job: Job, sandbox: SandboxServer, leak_watch: LeakWatch
    ) -> None:
        """A refused token request still shows what was sent, masked."""
        job.write_config(sandbox)
        job.env["OAUTH_CLIENT_SECRET"] = "another-wrong-secret"
        leak_watch.secret("another-wrong-secret", "job-demo")

        result = job("token", "--verbose")

        assert result.returncode == 1
        assert "'Authorization': 'Basic ***'" in result.stdout
        assert "'grant_type': 'client_credentials'" in result.stdout
        assert "invalid_client" in result.stderr

    def test_unknown_source_lists_the_known_ones(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """--source with a typo names the sources that exist."""
        job.write_config(sandbox)
        job("db", "upgrade")

        result = job("once", "--source", "itmes")

        assert_clean_error(result, 2)
        assert "known: items" in result.stderr


class TestCommands:
    def test_upgrade_once_runs_and_token(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """The everyday commands work end to end and show no token."""
        job.write_config(sandbox)

        upgraded = job("db", "upgrade")
        current = job("db", "current")
        once = job("once")
        runs = job("runs", "--json")
        token = job("token", "--verbose")

        assert "revision 0002" in upgraded.stdout
        assert "current: 0002" in current.stdout
        assert once.returncode == 0, once.stderr
        assert '"status":"succeeded"' in runs.stdout
        assert '"inserted":250' in runs.stdout
        assert token.returncode == 0
        assert "fingerprint" in token.stdout
        assert "Basic ***" in token.stdout
        assert '"event": "token.acquired"' in token.stderr

    def test_logs_are_json_lines_with_library_records_too(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """Off a terminal every line on stderr is one JSON object."""
        import json

        job.write_config(sandbox)
        job("db", "upgrade")

        result = job("--log-level", "DEBUG", "once")

        lines = [json.loads(line) for line in result.stderr.splitlines()]
        names = {line["event"] for line in lines}
        assert {"run.started", "token.acquired", "run.finished"} <= names
        assert any(line.get("logger", "").startswith("urllib3") for line in lines)


class TestStartUp:
    def test_start_up_objects_are_frozen_before_a_command_runs(self) -> None:
        """The collector never walks the modules again while a pull allocates."""
        probe = (
            "import gc, job.cli\n"
            "before = gc.get_freeze_count()\n"
            "try:\n"
            "    job.cli.main(['--config', 'missing.yaml', 'runs'], "
            "standalone_mode=False)\n"
            "except BaseException:\n"
            "    pass\n"
            "print(before, gc.get_freeze_count() > 10_000)"
        )

        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )

        assert done.stdout.split() == ["0", "True"]

    def test_commands_load_neither_the_sandbox_nor_cryptography(self) -> None:
        """Only `job sandbox` and key-based client auth pay for those libraries."""
        probe = (
            "import sys, job.cli; "
            "print(sorted(m for m in ('flask', 'authlib', 'cryptography', 'joserfc') "
            "if m in sys.modules))"
        )

        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )

        assert done.stdout.strip() == "[]"
