"""Settings (``onex.settings``): flags, then ``ONEX_*`` environment variables, then defaults; the project root."""

from __future__ import annotations

from pathlib import Path

import onex
import pytest
from onex.settings import (
    DEFAULT_BUS,
    DEFAULT_STORE,
    MAX_BUFFER_SIZE,
    MAX_HTTP_BATCH_LIMIT,
    MAX_HTTP_MAX_BODY,
    MAX_INT32,
    MAX_PARTITIONS,
    Settings,
    declarations,
    find_root,
    redact_url,
    resolve_variable,
    user_data_store,
)
from pydantic import Field, ValidationError


def test_without_flags_or_environment_every_setting_is_its_default(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, root=str(tmp_path))

    assert (settings.env, settings.tenant, settings.region) == ("dev", "omninode_bridge", None)
    assert (settings.bus, settings.store) == (DEFAULT_BUS, DEFAULT_STORE)
    assert settings.heartbeat_interval_s == 30.0
    assert (settings.partitions, settings.buffer_size) == (4, 10_000)
    assert (settings.http_max_body, settings.http_batch_limit, settings.http_timeout_s) == (16 << 20, 100, 30.0)


def test_onex_environment_variables_override_defaults_with_their_types(tmp_path: Path) -> None:
    environ = {
        "ONEX_ENV": "staging",
        "ONEX_REGION": "eu-west-1",
        "ONEX_BUS": "kafka://broker:9092",
        "ONEX_HEARTBEAT_INTERVAL_S": "2.5",
        "ONEX_PARTITIONS": "8",
        "ONEX_BUFFER_SIZE": "64",
        "ONEX_HTTP_MAX_BODY": "1024",
        "ONEX_HTTP_BATCH_LIMIT": "5",
        "ONEX_HTTP_TIMEOUT_S": "0.5",
        "ENV": "ignored: not an ONEX_ variable",
    }
    settings = Settings.load(environ=environ, root=str(tmp_path))

    assert (settings.env, settings.region, settings.bus) == ("staging", "eu-west-1", "kafka://broker:9092")
    assert settings.heartbeat_interval_s == 2.5
    assert (settings.partitions, settings.buffer_size) == (8, 64)
    assert (settings.http_max_body, settings.http_batch_limit, settings.http_timeout_s) == (1024, 5, 0.5)
    assert settings.tenant == "omninode_bridge"  # not in the environment: the default


def test_flags_override_environment_variables_and_none_flags_do_not(tmp_path: Path) -> None:
    environ = {"ONEX_ENV": "staging", "ONEX_TENANT": "acme", "ONEX_PARTITIONS": "8"}
    settings = Settings.load(environ=environ, root=str(tmp_path), env="prod", partitions=2, tenant=None)

    assert settings.env == "prod"
    assert settings.partitions == 2
    assert settings.tenant == "acme"  # a flag left at None falls through to the environment


def test_the_root_comes_from_a_flag_or_onex_root_resolved_to_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "from_env").mkdir()
    (tmp_path / "from_flag").mkdir()
    monkeypatch.chdir(tmp_path)

    assert Settings.load(environ={"ONEX_ROOT": "from_env"}).root == tmp_path / "from_env"
    assert Settings.load(environ={"ONEX_ROOT": "from_env"}, root="from_flag").root == tmp_path / "from_flag"


def test_settings_are_immutable_and_with_returns_a_changed_copy(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, root=str(tmp_path))
    changed = settings.with_(env="test")

    assert (settings.env, changed.env) == ("dev", "test")
    with pytest.raises(ValidationError, match="frozen"):
        settings.env = "prod"  # type: ignore[misc]


def test_store_url_resolves_a_relative_sqlite_path_against_the_root(tmp_path: Path) -> None:
    def url(store: str) -> str:
        return Settings.load(environ={}, root=str(tmp_path), store=store).store_url()

    assert url(DEFAULT_STORE) == f"sqlite:///{tmp_path}/.onex/onex.db"
    assert url("sqlite:///data/x.db") == f"sqlite:///{tmp_path}/data/x.db"
    assert url("sqlite:////var/lib/onex.db") == "sqlite:////var/lib/onex.db"  # absolute: untouched
    assert url("sqlite:///:memory:") == "sqlite:///:memory:"
    assert url("postgresql://onex@db:5432/onex") == "postgresql://onex@db:5432/onex"


def test_a_sqlite_store_under_a_root_whose_name_holds_a_percent_sign_is_in_that_root(tmp_path: Path) -> None:
    """A store URL is percent-decoded (``sqlite:///a%20b.db`` is ``a b.db``): the root joined to a relative path, or
    the user's data directory, must be encoded, or ``%41`` in a directory's name would read as ``A``."""
    from onex._sqlite import SqliteStore

    root = tmp_path / "a%41 b"
    url = Settings.load(environ={}, root=str(root), store="sqlite:///data/x.db").store_url()
    assert SqliteStore(url).path == str(root / "data" / "x.db")
    assert SqliteStore(user_data_store({"XDG_DATA_HOME": str(root)})).path == str(root / "onex" / "onex.db")


def test_find_root_walks_up_to_the_nearest_directory_with_contracts(tmp_path: Path) -> None:
    project = tmp_path / "project"
    deep = project / "src" / "pkg" / "deep"
    deep.mkdir(parents=True)
    (project / "contracts").mkdir()
    (project / "src" / "contracts.txt").write_text("a file named like it does not count")

    assert find_root(deep) == project
    assert find_root(project) == project

    nested = project / "sub"
    (nested / "contracts").mkdir(parents=True)
    assert find_root(nested / "contracts") == nested  # the nearest one wins


def test_find_root_falls_back_to_the_installed_projects_root(tmp_path: Path) -> None:
    # Nothing above tmp_path has contracts/: the editable install of this repository is the fallback.
    repository = Path(onex.__file__).resolve().parents[2]
    assert (repository / "contracts").is_dir()

    assert find_root(tmp_path) == repository


def test_the_default_root_is_found_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "nodes").mkdir()
    monkeypatch.chdir(tmp_path / "nodes")

    assert Settings.load(environ={}).root == tmp_path


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("partitions", "many"),
        ("partitions", "0"),
        ("buffer_size", "2.5"),
        ("heartbeat_interval_s", "-1"),
        ("http_timeout_s", "nan"),
        ("http_timeout_s", "inf"),
        ("http_batch_limit", "-3"),
    ],
)
def test_a_number_setting_that_is_not_one_is_refused_naming_the_setting_and_its_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{name} \(ONEX_{name.upper()}\) must be .*, not '{value}'$"):
        Settings.load(environ={f"ONEX_{name.upper()}": value}, root=str(tmp_path))


@pytest.mark.parametrize(
    ("name", "bound"),
    [
        # ONEX_PARTITIONS=99999999999999999999 had the memory bus create partitions until memory ran out.
        ("partitions", MAX_PARTITIONS),
        ("buffer_size", MAX_BUFFER_SIZE),
        ("http_max_body", MAX_HTTP_MAX_BODY),
        ("http_batch_limit", MAX_HTTP_BATCH_LIMIT),
        ("dlq_alert_threshold", MAX_INT32),
        ("stamp_timeout_ms", MAX_INT32),
        ("drain_timeout_ms", MAX_INT32),
        ("registry_sweep_ms", MAX_INT32),
        ("reducer_flush_ms", MAX_INT32),
    ],
)
def test_an_integer_setting_beyond_its_bound_is_refused_naming_the_bound(tmp_path: Path, name: str, bound: int) -> None:
    variable = f"ONEX_{name.upper()}"
    assert getattr(Settings.load(environ={variable: str(bound)}, root=str(tmp_path)), name) == bound
    for huge in (str(bound + 1), "99999999999999999999"):
        with pytest.raises(ValueError, match=rf"^{name} \({variable}\) must be a whole number from 1 to {bound}, "):
            Settings.load(environ={variable: huge}, root=str(tmp_path))
    with pytest.raises(ValueError, match=f"from 1 to {bound}"):
        Settings(root=tmp_path).with_(**{name: bound + 1})  # in code as from the environment
    assert resolve_variable(variable, {variable: str(bound)}) == str(bound)
    with pytest.raises(ValueError, match=f"from 1 to {bound}"):
        resolve_variable(variable, {variable: huge})  # a contract interpolating it
    assert not [d for d in declarations() if d.name == name and not d.type.endswith(f"at most {bound}")]


def test_every_integer_setting_has_an_upper_bound() -> None:
    assert [d.variable for d in declarations() if d.type == "int"] == []


@pytest.mark.parametrize("name", ["env", "tenant"])
@pytest.mark.parametrize("value", ["a b", "a/b", "-dev", "x" * 65, "dév", "a:b"])
def test_an_environment_or_tenant_that_cannot_be_part_of_a_topic_name_is_refused(
    tmp_path: Path, name: str, value: str
) -> None:
    # Both go into every Kafka topic name, which takes [a-zA-Z0-9._-] only: ONEX_ENV='a b' made topic 'a b.omni...'.
    variable = f"ONEX_{name.upper()}"
    with pytest.raises(ValueError, match=rf"^{name} \({variable}\) must be 1-64 characters of .*, not {value!r}$"):
        Settings.load(environ={variable: value}, root=str(tmp_path))


@pytest.mark.parametrize("value", ["prod", "prod-eu.2", "omninode_bridge", "x" * 64, "0"])
def test_an_environment_or_tenant_of_topic_characters_is_taken(tmp_path: Path, value: str) -> None:
    settings = Settings.load(environ={"ONEX_ENV": value, "ONEX_TENANT": value}, root=str(tmp_path))
    assert (settings.env, settings.tenant) == (value, value)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("bogus://", "must be memory or redis://HOST:PORT/DB, not 'bogus://'"),
        ("redis", "must be memory or redis://HOST:PORT/DB, not 'redis'"),
        ("redis://u:s3cret@h:99999/0", "'redis://u:***@h:99999/0': Port out of range"),
    ],
)
def test_a_cache_url_no_cache_can_open_is_refused_with_the_other_settings(tmp_path: Path, url: str, error: str) -> None:
    with pytest.raises(ValueError, match=r"^cache_url \(ONEX_CACHE_URL\) ") as refused:
        Settings.load(environ={"ONEX_CACHE_URL": url}, root=str(tmp_path))
    assert error in str(refused.value)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("url", ["memory", "memory://", "redis://127.0.0.1:6379/3", "rediss://cache:6380/0"])
def test_a_cache_url_of_memory_or_redis_is_taken(tmp_path: Path, url: str) -> None:
    assert Settings.load(environ={"ONEX_CACHE_URL": url}, root=str(tmp_path)).cache_url == url


def test_zero_is_a_valid_number_of_seconds(tmp_path: Path) -> None:
    settings = Settings.load(environ={"ONEX_HEARTBEAT_INTERVAL_S": "0", "ONEX_HTTP_TIMEOUT_S": "0"}, root=str(tmp_path))
    assert (settings.heartbeat_interval_s, settings.http_timeout_s) == (0.0, 0.0)


def test_sources_say_whether_each_value_came_from_a_flag_the_environment_or_the_default(tmp_path: Path) -> None:
    environ = {"ONEX_BUS": "kafka://b:9092", "ONEX_PARTITIONS": "8", "ONEX_API_KEY": ""}
    settings, sources = Settings.load_with_sources(environ=environ, root=str(tmp_path), partitions=2)

    assert settings == Settings.load(environ=environ, root=str(tmp_path), partitions=2)
    assert (sources["root"], sources["partitions"], sources["bus"]) == ("flag", "flag", "environment")
    assert (sources["store"], sources["env"], sources["api_key"]) == ("default", "default", "default")
    assert set(sources) == set(Settings.model_fields)


def test_outside_any_project_the_default_store_is_in_the_users_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing above tmp_path holds contracts/

    data = tmp_path / "data"
    assert Settings.load(environ={"XDG_DATA_HOME": str(data)}).store_url() == f"sqlite:///{data}/onex/onex.db"
    home = Settings.load(environ={"HOME": str(tmp_path / "home")}).store_url()
    assert home == f"sqlite:///{tmp_path}/home/.local/share/onex/onex.db"
    # A relative XDG_DATA_HOME is invalid by the spec and ignored; a store or root given keeps its meaning.
    assert (
        Settings.load(environ={"XDG_DATA_HOME": "rel", "HOME": "/h"}).store == "sqlite:////h/.local/share/onex/onex.db"
    )
    assert Settings.load(environ={"ONEX_STORE": "sqlite:///x.db"}).store == "sqlite:///x.db"
    assert Settings.load(environ={}, root=str(tmp_path)).store_url() == f"sqlite:///{tmp_path}/.onex/onex.db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://onex:s3cret@db:5432/onex", "postgresql://onex:***@db:5432/onex"),
        (
            "kafka://user:p%40ss@k1:9092,k2:9092?security_protocol=SASL_SSL",
            "kafka://user:***@k1:9092,k2:9092?security_protocol=SASL_SSL",
        ),
        ("postgresql://onex@db/onex", "postgresql://onex@db/onex"),
        ("sqlite:////var/lib/onex.db", "sqlite:////var/lib/onex.db"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- typed parsing: by each field's real type, whether the value comes from a flag, a variable or code -------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("on", True), ("OFF", False), ("yes", True), ("no", False), ("1", True), ("0", False), ("True", True)],
)
def test_a_yes_no_setting_takes_on_off_true_false_yes_no_and_1_0(tmp_path: Path, raw: str, expected: bool) -> None:
    assert Settings.load(environ={"ONEX_CHECKPOINTS": raw}, root=str(tmp_path)).checkpoints is expected
    assert Settings.load(environ={"ONEX_LOG_EVENTS": raw}, root=str(tmp_path)).log_events is expected


def test_a_yes_no_setting_that_is_neither_is_refused_naming_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^checkpoints \(ONEX_CHECKPOINTS\) must be on or off .*, not 'maybe'$"):
        Settings.load(environ={"ONEX_CHECKPOINTS": "maybe"}, root=str(tmp_path))


def test_a_path_list_is_split_on_the_path_separator_and_empty_entries_dropped(tmp_path: Path) -> None:
    settings = Settings.load(environ={"ONEX_STAMP_ROOTS": "a::/b/c:"}, root=str(tmp_path))
    assert settings.stamp_roots == (Path("a"), Path("/b/c"))


def test_a_choice_is_case_insensitive_and_kept_in_lower_case(tmp_path: Path) -> None:
    settings = Settings.load(environ={"ONEX_LOG_LEVEL": "DEBUG", "ONEX_LOG_FORMAT": "Json"}, root=str(tmp_path))
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    with pytest.raises(ValueError, match=r"^log_level \(ONEX_LOG_LEVEL\) must be one of debug, info, warning, error"):
        Settings.load(environ={"ONEX_LOG_LEVEL": "chatty"}, root=str(tmp_path))


def test_an_empty_variable_is_an_unset_one(tmp_path: Path) -> None:
    environ = {"ONEX_ENV": "", "ONEX_PARTITIONS": "", "ONEX_REGION": "", "ONEX_CHECKPOINTS": ""}
    settings, sources = Settings.load_with_sources(environ=environ, root=str(tmp_path))

    assert (settings.env, settings.partitions, settings.region, settings.checkpoints) == ("dev", 4, None, True)
    assert {sources[name] for name in ("env", "partitions", "region", "checkpoints")} == {"default"}


def test_only_the_upper_case_spelling_of_a_variable_is_read(tmp_path: Path) -> None:
    settings = Settings.load(environ={"onex_env": "lower", "Onex_Env": "mixed"}, root=str(tmp_path))
    assert settings.env == "dev"


class Extended(Settings):
    """A settings class with optional numbers, as a new feature would declare them."""

    limit: int | None = Field(None, description="An optional count.")
    ratio: float | None = Field(None, description="An optional number of seconds.")


def test_an_optional_number_is_that_number_or_none_never_text(tmp_path: Path) -> None:
    unset = Extended.load(environ={"ONEX_LIMIT": ""}, root=str(tmp_path))
    assert (unset.limit, unset.ratio) == (None, None)

    given = Extended.load(environ={"ONEX_LIMIT": "5", "ONEX_RATIO": "0.25"}, root=str(tmp_path))
    assert (given.limit, given.ratio) == (5, 0.25)
    assert type(given.limit) is int

    with pytest.raises(ValueError, match=r"^limit \(ONEX_LIMIT\) must be a positive whole number, not 'five'$"):
        Extended.load(environ={"ONEX_LIMIT": "five"}, root=str(tmp_path))
    assert Extended.load(environ={}, root=str(tmp_path), limit="7").limit == 7  # a flag is parsed the same way


def test_settings_built_in_code_do_not_read_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEX_ENV", "staging")

    assert Settings(root=tmp_path).env == "dev"  # code and tests get the same settings wherever they run
    assert Settings.load(root=str(tmp_path)).env == "staging"  # load reads os.environ unless given a mapping


def test_with_parses_its_changes_as_load_parses_flags(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, root=str(tmp_path))

    changed = settings.with_(partitions="3", stamp_roots=["x"], heartbeat_interval_s=0)
    assert (changed.partitions, changed.stamp_roots, changed.heartbeat_interval_s) == (3, (Path("x"),), 0.0)
    assert changed.instance == settings.instance  # the rest is copied, not computed again
    with pytest.raises(ValueError, match=r"^partitions \(ONEX_PARTITIONS\) must be a positive whole number, not 0$"):
        settings.with_(partitions=0)
    with pytest.raises(TypeError, match="partition"):
        settings.with_(partition=3)


def test_an_unknown_flag_is_an_error_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="heartbeat_s"):
        Settings.load(environ={}, root=str(tmp_path), heartbeat_s=1)


def test_the_api_key_is_never_in_the_repr(tmp_path: Path) -> None:
    settings = Settings.load(environ={"ONEX_API_KEY": "s3cret"}, root=str(tmp_path))
    assert settings.api_key == "s3cret"
    assert "s3cret" not in repr(settings)
