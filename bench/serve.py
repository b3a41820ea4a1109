"""The sandbox for benchmarks, in its own process so it never shares our GIL.

Run as ``python -m bench.serve --records N``. It starts the real sandbox (the
Authlib token endpoint, and the Flask API for comparison) and the fast
resource server on free loopback ports, prints one JSON line with their URLs,
then reads commands on stdin, one per line, answering ``ok`` to each:

- ``epoch N``: serve the data as of mutation round N (10 % changed per round);
- ``latency S``: add S seconds to every data response;
- ``warm P``: render every page of a full pull at page size P.

It stops at the end of its input. The client secret comes from
``$JOB_SANDBOX_CLIENT_SECRET`` and is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from job.sandbox.fast import FastResourceServer
from job.sandbox.server import SandboxServer
from job.sandbox.settings import SandboxSettings

SECRET_ENV = "JOB_SANDBOX_CLIENT_SECRET"  # noqa: S105 - an env var name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("--records", type=int, required=True)
    args = parser.parse_args(argv)
    settings = SandboxSettings(
        client_secret=os.environ[SECRET_ENV],
        port=0,
        records=args.records,
        token_lifetime_s=24 * 3600,
        max_page_size=1000,
    )
    with SandboxServer(settings) as sandbox:
        fast = FastResourceServer(sandbox.state).start()
        try:
            _announce(sandbox, fast)
            _obey(sandbox, fast)
        finally:
            fast.stop()


def _announce(sandbox: SandboxServer, fast: FastResourceServer) -> None:
    urls = {
        "token_url": sandbox.token_url,
        "resource_url": fast.resource_url,
        "flask_resource_url": sandbox.resource_url,
        "client_id": sandbox.settings.client_id,
    }
    sys.stdout.write(orjson.dumps(urls).decode() + "\n")
    sys.stdout.flush()


def _obey(sandbox: SandboxServer, fast: FastResourceServer) -> None:
    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if command == "epoch":
            sandbox.state.epoch = int(value)
            fast.bodies.forget()
        elif command == "latency":
            sandbox.state.latency_s = float(value)
        elif command == "warm":
            fast.bodies.warm(int(value))
        else:
            sys.stdout.write(f"unknown command {command!r}\n")
            sys.stdout.flush()
            continue
        sys.stdout.write("ok\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
