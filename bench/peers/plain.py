"""The straightforward pull: requests.get per page, an ORM object per record.

What a first script usually looks like: no session reuse, ``Response.json()``,
``Session.merge`` for each record so a rerun updates instead of duplicating,
and a commit per page. Run as ``python -m bench.peers.plain --resource-url U
--token-url T --client-id C --page-size P --database-url URL`` with the
secret in ``$BENCH_CLIENT_SECRET``; pulls once and prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import orjson
import requests
from sqlalchemy import JSON, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "plain_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    updated_at: Mapped[str] = mapped_column(String(40))
    payload: Mapped[Any] = mapped_column(JSON)


def pull(args: argparse.Namespace, engine: Any) -> int:
    token = requests.post(
        args.token_url,
        data={"grant_type": "client_credentials", "scope": "read:data"},
        auth=(args.client_id, os.environ["BENCH_CLIENT_SECRET"]),
        timeout=30,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    origin = args.resource_url.split("/data/", 1)[0]
    url: str | None = f"{args.resource_url}?page_size={args.page_size}"
    count = 0
    with Session(engine) as session:
        while url:
            body = requests.get(url, headers=headers, timeout=30).json()
            for item in body["items"]:
                session.merge(
                    Item(id=item["id"], updated_at=item["updated_at"], payload=item)
                )
            session.commit()
            count += len(body["items"])
            url = origin + body["next"] if body["next"] else None

    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("resource-url", "token-url", "client-id", "database-url"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args()
    url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    started = time.perf_counter()
    count = pull(args, engine)
    result = {"records": count, "first_s": time.perf_counter() - started}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
