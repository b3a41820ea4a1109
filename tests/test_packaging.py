"""The installed package works on its own: migrations ship inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from job.sandbox import SandboxServer
from tests.factories import SANDBOX_SECRET
from tests.leaks import LeakWatch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout, as `pip install .` would build it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("job-*.whl")
    return built


class TestWheel:
    def test_the_wheel_carries_the_migrations(self, wheel: Path) -> None:
        """Every revision and the Alembic environment are inside the wheel."""
        names = set(zipfile.ZipFile(wheel).namelist())

        revisions = sorted((ROOT / "migrations" / "versions").glob("0*.py"))
        assert revisions
        for revision in revisions:
            assert f"job/migrations/versions/{revision.name}" in names
        assert "job/migrations/env.py" in names
        assert "job/migrations/script.py.mako" in names

    def test_installed_job_upgrades_and_pulls_from_another_folder(
        self,
        wheel: Path,
        tmp_path: Path,
        sandbox: SandboxServer,
        leak_watch: LeakWatch,
    ) -> None:
        """Installed (not from the checkout), db upgrade and once work anywhere."""
        target = tmp_path / "site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--quiet",
                "--target",
                str(target),
                str(wheel),
            ],
            check=True,
            capture_output=True,
        )
        work = tmp_path / "elsewhere"
        work.mkdir()
        (work / "config.yaml").write_text(
            f"database: {{url: 'sqlite:///{work / 'job.db'}'}}\n"
            "providers:\n"
            f"  p: {{token_url: '{sandbox.token_url}', client_id: job-demo,"
            " client_secret: '${SECRET}'}\n"
            f"sources:\n  - {{name: items, provider: p, url: '{sandbox.resource_url}',"
            " primary_key: id, pagination: {next: next}}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(target), "SECRET": SANDBOX_SECRET}
        env.pop("JOB_CONFIG", None)

        outputs = []
        for command in (["db", "upgrade"], ["once"]):
            result = subprocess.run(
                [sys.executable, "-m", "job", "--log-format", "json", *command],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            leak_watch.output(f"installed job {command}", result.stdout + result.stderr)
            outputs.append(result)

        assert [r.returncode for r in outputs] == [0, 0], outputs[-1].stderr
        assert (
            str(target)
            in subprocess.run(
                [sys.executable, "-c", "import job.migrations as m; print(m.__file__)"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
            ).stdout
        )
