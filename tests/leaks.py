"""The check that no secret or issued token reaches any output the suite sees."""

from __future__ import annotations

from collections.abc import Iterable

from job.auth import basic_credentials


class LeakWatch:
    """Collects the secrets in play and the outputs to search for them."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.token_sources: list[object] = []
        self.outputs: list[tuple[str, str]] = []

    def secret(self, value: str, client_id: str | None = None) -> None:
        """Watch for `value`, and for the Basic header it would make."""
        self.secrets.add(value)
        if client_id is not None:
            self.secrets.add(basic_credentials(client_id, value).split(" ", 1)[1])

    def watch_tokens(self, state: object) -> None:
        """Watch every token a sandbox state issues (read at check time)."""
        self.token_sources.append(state)

    def output(self, where: str, text: str | bytes | None) -> None:
        if text:
            data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
            self.outputs.append((where, data))

    def needles(self) -> set[str]:
        tokens: Iterable[str] = (
            token
            for state in self.token_sources
            for token in list(getattr(state, "issued_tokens", []))
        )
        return {*self.secrets, *tokens}

    def leaks(self) -> list[str]:
        """Each place where a watched value appears, named without the value."""
        found = []
        needles = self.needles()
        for where, text in self.outputs:
            for needle in needles:
                if needle and needle in text:
                    kind = "secret" if needle in self.secrets else "token"
                    found.append(f"a {kind} appears in {where}")

        return found
