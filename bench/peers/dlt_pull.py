"""The pull as dlt does it: REST API source, OAuth2 client credentials, merge on id.

Runs in the benchmark's own environment (bench/.venv-peers), never in job's:
``python dlt_pull.py --resource-url U --token-url T --client-id C --page-size P
--destination sqlite|postgresql --database-url URL --dataset NAME --work DIR``,
with the secret in ``$BENCH_CLIENT_SECRET``. Pulls twice (a first load, then a
re-sync of the same data) and prints one JSON line with both times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

# dlt reports usage over the network unless told not to; we stay on loopback.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

import dlt  # type: ignore[import-not-found]
from dlt.sources.helpers.rest_client.auth import (  # type: ignore[import-not-found]
    OAuth2ClientCredentials,
)
from dlt.sources.rest_api import rest_api_source  # type: ignore[import-not-found]


def _source(args: argparse.Namespace) -> Any:
    parts = urlsplit(args.resource_url)
    auth = OAuth2ClientCredentials(
        access_token_url=args.token_url,
        client_id=args.client_id,
        client_secret=os.environ["BENCH_CLIENT_SECRET"],
        access_token_request_data={"scope": "read:data"},
    )
    return rest_api_source(
        {
            "client": {
                "base_url": f"{parts.scheme}://{parts.netloc}/",
                "auth": auth,
                "paginator": {"type": "json_link", "next_url_path": "next"},
            },
            "resources": [
                {
                    "name": "items",
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": parts.path.lstrip("/"),
                        "params": {"page_size": args.page_size},
                        "data_selector": "items",
                    },
                }
            ],
        }
    )


def _destination(args: argparse.Namespace) -> Any:
    if args.destination == "postgresql":
        return dlt.destinations.postgres(credentials=args.database_url)
    return dlt.destinations.sqlalchemy(credentials=args.database_url)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in (
        "resource-url",
        "token-url",
        "client-id",
        "destination",
        "database-url",
        "dataset",
        "work",
    ):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args()
    pipeline = dlt.pipeline(
        pipeline_name="bench",
        destination=_destination(args),
        dataset_name=args.dataset,
        pipelines_dir=args.work,
    )
    times = []
    for _ in range(2):
        started = time.perf_counter()
        pipeline.run(_source(args))
        times.append(time.perf_counter() - started)
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM items")
    count = int(rows[0][0])
    sys.stdout.write(
        json.dumps(
            {
                "records": count,
                "first_s": times[0],
                "second_s": times[1],
                "version": dlt.__version__,
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
