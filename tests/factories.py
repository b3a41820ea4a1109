"""Settings and objects for tests, built the way the CLI builds them."""

from __future__ import annotations

from typing import Any

import requests

from job.clock import Clock
from job.config import Settings
from job.pipeline import Pipeline
from job.sandbox import SandboxServer
from job.storage.engine import make_engine
from job.storage.store import Store

SANDBOX_SECRET = "s3cret: with+plus/slash%percent and é"


def make_settings(
    sandbox: SandboxServer,
    database_url: str = "sqlite://",
    *,
    provider: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> Settings:
    """Settings for one source `items` on the sandbox, with overrides."""
    data = {
        "path": "test-config.yaml",
        "database": {"url": database_url},
        "providers": {
            "sandbox": {
                "name": "sandbox",
                "token_url": sandbox.token_url,
                "client_id": "job-demo",
                "client_secret": SANDBOX_SECRET,
                "scope": "read:data",
                **(provider or {}),
            }
        },
        "sources": [
            {
                "name": "items",
                "provider": "sandbox",
                "url": sandbox.resource_url,
                "primary_key": "id",
                "pagination": {"next": "next"},
                "retry": {"backoff_base_s": 0.01, "backoff_cap_s": 0.05},
                **(source or {}),
            }
        ],
    }
    return Settings.model_validate(data)


def make_pipeline(settings: Settings, clock: Clock) -> Pipeline:
    """A pipeline on the settings' database, which must be migrated already."""
    engine = make_engine(settings.database.url)
    return Pipeline(
        settings,
        store=Store(engine, clock),
        session=requests.Session(),
        clock=clock,
    )
