"""The README's pagination and incremental examples, pulled as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from job.clock import FakeClock
from job.sandbox import SandboxServer
from job.storage import engine as db
from tests.factories import make_pipeline, make_settings

README = Path(__file__).parent.parent / "README.md"
SECTION = "## Pagination and incremental pulls"


def examples() -> list[dict[str, Any]]:
    """Every `sources:` entry in the README's pagination section."""
    text = README.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)

    return [source for block in blocks for source in yaml.safe_load(block)["sources"]]


def on(sandbox: SandboxServer, source: dict[str, Any]) -> dict[str, Any]:
    """The example pointed at the test's sandbox instead of port 8765."""
    url = source["url"].replace("http://127.0.0.1:8765", sandbox.url)
    return {**source, "url": url}


class TestReadmeExamples:
    def test_the_section_has_every_style_and_an_incremental_source(self) -> None:
        """Five pagination styles and one incremental source are documented."""
        names = [source["name"] for source in examples()]

        assert len(names) == 6
        assert sum("incremental" in source for source in examples()) == 1

    @pytest.mark.parametrize("index", range(6))
    def test_each_example_pulls_every_record_once(
        self, sandbox: SandboxServer, tmp_path: Path, clock: FakeClock, index: int
    ) -> None:
        """The example, as written, stores exactly the sandbox's records."""
        source = on(sandbox, examples()[index])
        url = f"sqlite:///{tmp_path / 'job.db'}"
        db.upgrade(db.make_engine(url))
        pipeline = make_pipeline(make_settings(sandbox, url, source=source), clock)

        result = pipeline.pull(source["name"])

        rows = list(pipeline.store.iter_records(source["name"]))
        assert result.succeeded, result.error
        assert {row["record_key"]: row["payload"] for row in rows} == {
            str(record["id"]): record for record in sandbox.state.all_records()
        }
