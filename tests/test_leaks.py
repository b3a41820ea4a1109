"""The leak check itself: it must find what it is meant to find."""

from __future__ import annotations

from tests.leaks import LeakWatch


class TestLeakWatch:
    def test_finds_a_secret_in_an_output(self) -> None:
        """A watched secret in any output is reported, without the secret."""
        watch = LeakWatch()
        watch.secret("hunter2-secret")
        watch.output("stderr", "error: bad credentials hunter2-secret")

        leaks = watch.leaks()

        assert leaks == ["a secret appears in stderr"]
        assert "hunter2" not in leaks[0]

    def test_finds_the_basic_header_made_from_a_secret(self) -> None:
        """The Base64 Basic credentials of a secret count as the secret."""
        watch = LeakWatch()
        watch.secret("hunter2-secret", "client")
        header = "Y2xpZW50Omh1bnRlcjItc2VjcmV0"

        watch.output("a log", f"Authorization: Basic {header}")

        assert watch.leaks() == ["a secret appears in a log"]

    def test_finds_issued_tokens_read_at_check_time(self) -> None:
        """Tokens issued after watching started are still found."""

        class State:
            issued_tokens: list[str] = []

        watch = LeakWatch()
        state = State()
        watch.watch_tokens(state)
        state.issued_tokens.append("tok-123456789")
        watch.output("stdout", "got tok-123456789")

        assert watch.leaks() == ["a token appears in stdout"]

    def test_clean_output_passes(self) -> None:
        """Masked output has nothing to report."""
        watch = LeakWatch()
        watch.secret("hunter2-secret")
        watch.output("stderr", "client_secret=***")

        assert watch.leaks() == []
