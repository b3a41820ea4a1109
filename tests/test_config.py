"""config.yaml and the environment, into validated settings or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from job.config import load_settings, parse_duration
from job.errors import ConfigError

VALID = """\
database:
  url: sqlite:///job.db
providers:
  sandbox:
    token_url: http://127.0.0.1:8765/oauth/token
    client_id: ${OAUTH_CLIENT_ID}
    client_secret: ${OAUTH_CLIENT_SECRET}
    auth_method: client_secret_basic
    scope: [read:data, write:data]
sources:
  - name: protected-resource
    provider: sandbox
    url: http://127.0.0.1:8765/data/protected-resource
    records: items
    primary_key: id
    pagination: {next: next}
    schedule: {every: 15m}
"""
ENV = {"OAUTH_CLIENT_ID": "job-demo", "OAUTH_CLIENT_SECRET": "top-secret-value"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


class TestLoadSettings:
    def test_reads_the_documented_shape(self, tmp_path: Path) -> None:
        """The shape from the README loads, with ${VAR} filled in."""
        settings = load_settings(write(tmp_path, VALID), ENV)

        provider = settings.providers["sandbox"]
        assert provider.client_id == "job-demo"
        assert provider.secret() == "top-secret-value"
        assert provider.scope == "read:data write:data"
        source = settings.source("protected-resource")
        assert source.schedule.every == 900
        assert source.primary_key == ("id",)
        assert source.pagination.style == "next"

    def test_the_shipped_example_is_valid(self) -> None:
        """config.yaml at the top of the repository loads as it is."""
        root = Path(__file__).resolve().parents[1]

        settings = load_settings(str(root / "config.yaml"), ENV)

        assert settings.sources[0].name == "protected-resource"

    def test_database_url_comes_from_the_environment_first(
        self, tmp_path: Path
    ) -> None:
        """JOB_DATABASE_URL overrides database.url."""
        env = {**ENV, "JOB_DATABASE_URL": "postgresql://root@127.0.0.1/test"}

        settings = load_settings(write(tmp_path, VALID), env)

        assert settings.database.url == "postgresql://root@127.0.0.1/test"

    def test_secret_never_shows_in_a_repr(self, tmp_path: Path) -> None:
        """Printing the settings does not print the secret."""
        settings = load_settings(write(tmp_path, VALID), ENV)

        assert "top-secret-value" not in repr(settings)
        assert "top-secret-value" not in str(settings.model_dump())


class TestConfigErrors:
    def test_missing_variable_names_the_key_and_the_variable(
        self, tmp_path: Path
    ) -> None:
        """An unset ${VAR} is an error naming the file, key and variable."""
        path = write(tmp_path, VALID)

        with pytest.raises(ConfigError) as caught:
            load_settings(path, {"OAUTH_CLIENT_ID": "x"})

        message = str(caught.value)
        assert path in message
        assert "providers.sandbox.client_secret" in message
        assert "OAUTH_CLIENT_SECRET" in message
        assert caught.value.exit_code == 2

    def test_unknown_key_is_named(self, tmp_path: Path) -> None:
        """A misspelt key is reported with its full path."""
        path = write(tmp_path, VALID.replace("records: items", "recods: items"))

        with pytest.raises(ConfigError, match=r"sources\.0\.recods: unknown key"):
            load_settings(path, ENV)

    def test_bad_value_is_named(self, tmp_path: Path) -> None:
        """A value of the wrong kind names its key and the accepted forms."""
        path = write(tmp_path, VALID.replace("every: 15m", "every: soon"))

        with pytest.raises(ConfigError, match=r"schedule\.every.*30s, 15m or 1h"):
            load_settings(path, ENV)

    def test_unknown_provider_is_named(self, tmp_path: Path) -> None:
        """A source naming a missing provider lists the known ones."""
        path = write(tmp_path, VALID.replace("provider: sandbox", "provider: other"))

        with pytest.raises(ConfigError, match=r"provider 'other'.*known: sandbox"):
            load_settings(path, ENV)

    def test_missing_file_says_how_to_point_at_one(self, tmp_path: Path) -> None:
        """No file: the error says --config and JOB_CONFIG."""
        with pytest.raises(ConfigError, match="--config PATH or set JOB_CONFIG"):
            load_settings(str(tmp_path / "nope.yaml"), ENV)

    def test_invalid_yaml_gives_the_line(self, tmp_path: Path) -> None:
        """Broken YAML is reported with its line number."""
        path = write(tmp_path, VALID + "  - : [\n")

        with pytest.raises(ConfigError, match="not valid YAML at line"):
            load_settings(path, ENV)

    def test_secret_is_required_for_secret_methods(self, tmp_path: Path) -> None:
        """client_secret_basic without a secret says what to add."""
        text = VALID.replace("    client_secret: ${OAUTH_CLIENT_SECRET}\n", "")

        with pytest.raises(ConfigError, match="needs client_secret"):
            load_settings(write(tmp_path, text), ENV)

    def test_two_pagination_styles_are_refused(self, tmp_path: Path) -> None:
        """A source cannot page two ways at once."""
        text = VALID.replace("{next: next}", "{next: next, page: page}")

        with pytest.raises(ConfigError, match="choose one pagination style"):
            load_settings(write(tmp_path, text), ENV)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("90", 90), (90, 90), ("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400)],
    )
    def test_accepts_numbers_and_units(self, text: object, seconds: float) -> None:
        """Plain numbers are seconds; s, m, h and d are units."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["soon", "-5", "5 parsecs", True])
    def test_refuses_anything_else(self, text: object) -> None:
        """Anything that is not a duration is a ValueError."""
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)


class TestConfigPath:
    def test_explicit_path_wins_then_job_config_then_default(self) -> None:
        """--config beats JOB_CONFIG, which beats ./config.yaml."""
        from job.config import config_path

        assert config_path("a.yaml", {"JOB_CONFIG": "b.yaml"}) == "a.yaml"
        assert config_path(None, {"JOB_CONFIG": "b.yaml"}) == "b.yaml"
        assert config_path(None, {}) == "config.yaml"


class TestValuesRefusedAtLoad:
    """Mistakes that would otherwise surface only at run time, or as a traceback."""

    @pytest.mark.parametrize(
        ("old", "new", "expected"),
        [
            ("every: 15m", "every: .inf", "finite"),
            ("every: 15m", "every: 99999999999999w", "more than 366 days"),
            ("every: 15m", "cron: '61 * *'", "five fields"),
            ("every: 15m", "{every: 1m, timezone: Mars/Base}", "timezone 'Mars/Base'"),
            (
                "token_url: http://",
                "token_url: 127.0.0.1:8765/x\n    x_: ",
                "token_url: must start with http",
            ),
            ("scope:", "connect_timeout_s: 0\n    scope:", "must be more than 0"),
        ],
    )
    def test_bad_values_name_the_key(
        self, tmp_path: Path, old: str, new: str, expected: str
    ) -> None:
        """Each bad value is a ConfigError naming what is wrong."""
        text = VALID.replace(old, new, 1)
        if "{every" in new:
            text = VALID.replace("schedule: {every: 15m}", f"schedule: {new}")

        with pytest.raises(ConfigError, match=expected):
            load_settings(write(tmp_path, text), ENV)

    def test_no_sources_is_an_error(self, tmp_path: Path) -> None:
        """An empty source list is refused rather than doing nothing."""
        text = VALID[: VALID.index("sources:")] + "sources: []\n"

        with pytest.raises(ConfigError, match="sources"):
            load_settings(write(tmp_path, text), ENV)

    def test_empty_secret_is_an_error(self, tmp_path: Path) -> None:
        """An empty client_secret (an unset ${VAR:-}) is refused."""
        with pytest.raises(ConfigError, match="client_secret"):
            load_settings(write(tmp_path, VALID), {**ENV, "OAUTH_CLIENT_SECRET": ""})

    def test_a_key_given_twice_is_an_error(self, tmp_path: Path) -> None:
        """YAML would keep the last of two equal keys; we refuse both."""
        path = write(tmp_path, VALID + "sources: []\n")

        with pytest.raises(ConfigError, match="'sources' is given twice"):
            load_settings(path, ENV)

    def test_a_file_that_is_not_utf8_is_named(self, tmp_path: Path) -> None:
        """Latin-1 bytes give an error that says to save as UTF-8."""
        path = tmp_path / "config.yaml"
        path.write_bytes(VALID.replace("items", "it\xe9ms").encode("latin-1"))

        with pytest.raises(ConfigError, match="save the file as UTF-8"):
            load_settings(str(path), ENV)

    def test_numbers_in_params_become_text(self, tmp_path: Path) -> None:
        """`page_size: 500` and a numeric client_id need no quotes."""
        text = VALID.replace("records: items", "records: items\n    params: {n: 500}")
        env = {**ENV, "OAUTH_CLIENT_ID": "12345"}
        path = write(tmp_path, text.replace("${OAUTH_CLIENT_ID}", "12345"))

        settings = load_settings(path, env)

        assert settings.sources[0].params == {"n": "500"}
        assert settings.providers["sandbox"].client_id == "12345"

    def test_a_missing_secret_file_is_named_at_load(self, tmp_path: Path) -> None:
        """client_secret_file that does not exist: exit-2 error naming it."""
        text = VALID.replace(
            "client_secret: ${OAUTH_CLIENT_SECRET}",
            f"client_secret_file: {tmp_path / 'nope'}",
        )

        with pytest.raises(
            ConfigError, match=r"client_secret_file: .*nope. is not a readable file"
        ):
            load_settings(write(tmp_path, text), ENV)

    def test_a_secret_file_keeps_spaces_but_not_the_line_end(
        self, tmp_path: Path
    ) -> None:
        """Only the trailing newline is removed from a secret file."""
        secret = tmp_path / "secret"
        secret.write_text(" lead and trail \n")
        text = VALID.replace(
            "client_secret: ${OAUTH_CLIENT_SECRET}", f"client_secret_file: {secret}"
        )

        settings = load_settings(write(tmp_path, text), ENV)

        assert settings.providers["sandbox"].secret() == " lead and trail "
