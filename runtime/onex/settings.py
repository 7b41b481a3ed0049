"""Runtime settings: flags, then ``ONEX_*`` environment variables, then defaults. The one place env is read.

Every ``ONEX_*`` variable is a field of ``Settings`` (``ONEX_<FIELD>``), declared once with its type, default and
description. From those declarations ``Settings.load`` reads the environment (through pydantic-settings), ``onex
config`` and the README's table document every variable, and contract interpolation resolves ``${ONEX_...}``
(``resolve_variable``): an ``ONEX_*`` name no field declares is an error wherever it is read.

Values are parsed by their field's real type, the same whether they come from a flag, a variable or code: ``int``
a positive whole number, ``float`` seconds (0 or more, finite), ``bool`` on/off (true/false, yes/no, 1/0), a path
list separated by ``os.pathsep``, a choice case-insensitively; ``X | None`` is None when empty. A variable set to the
empty string counts as unset. A bad value is a ``ValueError`` of one line naming the setting, its variable and the
value, which the CLI prints as a usage error (exit 2).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self, Union, get_args, get_origin
from urllib.parse import quote, urlsplit, urlunsplit

import annotated_types
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from onex._model_reads import read_plainly

ENV_PREFIX = "ONEX_"
DEFAULT_STORE = "sqlite:///.onex/onex.db"
DEFAULT_BUS = "memory://"
DEFAULT_HTTP_MAX_BODY = 16 * 1024 * 1024
DEFAULT_HTTP_BATCH_LIMIT = 100
DEFAULT_HTTP_TIMEOUT_S = 30.0
DEFAULT_PROTOCOL_VERSION = "1.0"  # O.N.E. v0.1; also what migration 0005 wrote into the rows it backfilled
DEFAULT_METADATA_VERSION = "0.1"
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
SqliteWriter = Literal["process", "thread"]
EventLoop = Literal["auto", "uvloop", "asyncio"]
# Upper bounds of the integer settings: a value beyond them is nonsense, and some were harmful rather than merely
# useless (ONEX_PARTITIONS=99999999999999999999 had the memory bus create partitions until memory ran out, deaf to
# SIGTERM). A usage error naming the bound is better than either.
MAX_PARTITIONS: Final = 10_000  # Kafka's practical limit per topic (and per broker) is a few thousand
MAX_BUFFER_SIZE: Final = 1_000_000  # messages held per partition: beyond it a slow consumer never catches up
MAX_HTTP_MAX_BODY: Final = 1024**3  # bytes read whole into memory by one request
MAX_HTTP_BATCH_LIMIT: Final = 10_000  # workflows started by one request
MAX_INT32: Final = 2**31 - 1  # milliseconds (~24.8 days: what Kafka's and most timers' int32 settings hold), counts
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)


def find_project(start: Path | None = None) -> Path | None:
    """The nearest directory at or above ``start`` (default: the cwd) holding a ``contracts/`` directory, if any."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "contracts").is_dir():
            return candidate
    return None


def find_root(start: Path | None = None) -> Path:
    """The project root: the nearest directory at or above ``start`` holding a ``contracts/`` directory.

    Falls back to the directory the ``onex`` package was installed from (an editable install of this repository),
    so ``onex`` works from any directory for the shipped nodes.
    """
    here = (start or Path.cwd()).resolve()
    found = find_project(here)
    if found is not None:
        return found
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "contracts").is_dir():
        return package_root
    return here


def user_data_store(environ: Mapping[str, str]) -> str:
    """The default store outside any project: ``$XDG_DATA_HOME/onex/onex.db`` (``~/.local/share/onex/onex.db``).

    Outside a project the root falls back to the installed package, and a store relative to it would be written
    into the installation; the user's data directory is where the XDG base directory spec puts such state.
    """
    base = environ.get("XDG_DATA_HOME") or ""
    data = Path(base) if Path(base).is_absolute() else Path(environ.get("HOME") or Path.home()) / ".local" / "share"
    return f"sqlite:///{quote(str(data / 'onex' / 'onex.db'))}"  # a URL: a % in a directory's name is %25


MEMORY: Final = ":memory:"  # the path of an in-memory SQLite database


def database_path(url: str) -> str:
    """The file path in a ``sqlite:`` store URL (``":memory:"`` for an in-memory database); ValueError if invalid."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a SQLite store URL: {url!r} (expected sqlite:///PATH or sqlite://:memory:)")
    rest = url.removeprefix("sqlite://")
    if rest in (MEMORY, "/" + MEMORY):
        return MEMORY
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"SQLite store URL {url!r} has no path: expected sqlite:///relative.db or sqlite:////abs.db")
    if "?" in rest or "#" in rest:
        raise ValueError(f"SQLite store URL {url!r}: query strings and fragments are not supported")
    return rest[1:]


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://u:***@host/db``), for banners, logs and messages; also a URL that
    does not parse (an unclosed ``[``), which a message about it shows."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url, count=1)
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def variable(name: str) -> str:
    """The environment variable of the setting ``name``: ``ONEX_<NAME>``."""
    return f"{ENV_PREFIX}{name.upper()}"


CACHE_MEMORY: Final = ("memory", "memory://")  # ONEX_CACHE_URL's spellings of each process's own memory
CACHE_SCHEMES: Final = ("redis://", "rediss://")
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def parse_api_keys(text: str) -> dict[str, str]:
    """``KEY=TENANT,KEY2=TENANT2`` as {key: tenant}; ValueError (one line, naming ONEX_API_KEYS and the entry's
    position, never the key itself) for an entry that is not KEY=TENANT, a tenant outside ``TENANT_PATTERN``, or a
    key given twice."""
    keys: dict[str, str] = {}
    for position, entry in enumerate(text.split(","), 1):
        key, sep, tenant = (part.strip() for part in entry.partition("="))
        where = f"api_keys (ONEX_API_KEYS), entry {position}"
        if not sep or not key:
            raise ValueError(f"{where}: expected KEY=TENANT pairs separated by commas")
        if not re.fullmatch(TENANT_PATTERN, tenant):
            rule = "1-64 characters of [A-Za-z0-9_.-], a letter or digit first"
            raise ValueError(f"{where}: tenant {tenant!r} must be {rule}")
        if key in keys:
            raise ValueError(f"{where}: the key is given twice")
        keys[key] = tenant
    return keys


# --- parsing: by the field's type, whatever the value came from ---------------------------------------------------


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """``(optional, type)``: ``int | None`` is ``(True, int)``, ``int`` is ``(False, int)``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return len(args) < len(get_args(annotation)), args[0]
    return False, annotation


def _refuse(name: str, noun: str, raw: Any) -> ValueError:
    return ValueError(f"{name} ({variable(name)}) must be {noun}, not {raw!r}")


def _number(name: str, raw: Any, kind: type[int] | type[float], maximum: int | None = None) -> int | float:
    """``raw`` as ``kind``, positive (a number of seconds may be 0), and at most ``maximum`` when given."""
    try:
        value = kind(raw)
    except (TypeError, ValueError, OverflowError):
        value = -1
    if kind is int and isinstance(raw, float) and not raw.is_integer():
        value = -1  # int(2.5) would be 2: a whole number is asked for, not truncated
    if not math.isfinite(value) or value < 0 or (value == 0 and kind is int):
        raise _refuse(name, "a positive whole number" if kind is int else "a number of seconds, 0 or more", raw)
    if maximum is not None and value > maximum:
        raise _refuse(name, f"a whole number from 1 to {maximum}", raw)
    return value


def _maximum(info: FieldInfo | None) -> int | None:
    """The upper bound a field declares (``Field(le=...)``), if any."""
    for constraint in info.metadata if info is not None else ():
        if isinstance(constraint, annotated_types.Le) and isinstance(constraint.le, int):
            return constraint.le
    return None


def _flag(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _refuse(name, "on or off (true/false, 1/0)", raw)


def _paths(raw: Any) -> tuple[Path, ...]:
    """A list of paths: a string separated by ``os.pathsep`` (empty entries dropped), or any iterable of paths."""
    items = raw.split(os.pathsep) if isinstance(raw, str) else list(raw)
    return tuple(Path(item) for item in items if str(item))


def _parse(name: str, info: FieldInfo, raw: Any) -> Any:
    """``raw`` (a flag, a variable's text, or a value given in code) as the field ``info`` declares it; ValueError
    naming ``name``."""
    optional, kind = _unwrap(info.annotation)
    if raw is None or (optional and raw == ""):
        return None
    if kind is bool:
        return _flag(name, raw)
    if kind is int or kind is float:
        return _number(name, raw, kind, _maximum(info))
    if kind is Path:
        return Path(raw)
    if get_origin(kind) is tuple and get_args(kind) == (Path, ...):
        return _paths(raw)
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        text = str(raw).strip().lower()
        if text not in choices:
            raise _refuse(name, f"one of {', '.join(choices)}", raw)
        return text
    if kind is str:
        return str(raw)
    return raw


def spelled(value: Any) -> str:
    """A setting's value as its variable would spell it: ``true``/``false``, paths joined by ``os.pathsep``, None
    empty. What ``onex config``'s table and the README show, and what contracts interpolate."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return os.pathsep.join(str(item) for item in value)
    return str(value)


def _one_line(exc: ValidationError) -> str:
    """The first problem of ``exc`` as the one line the CLI prints: the setting, its variable, the value."""
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)  # our own parser's message, already naming the variable and the value
    name = str(error["loc"][0]) if error["loc"] else "?"
    return f"{name} ({variable(name)}): {error['msg']}, not {error.get('input')!r}"


class _Environment(EnvSettingsSource):
    """The ``ONEX_*`` variables of one mapping (``os.environ`` or a caller's), spelled exactly so, not empty."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # pydantic-settings matches lower-cased names; only the upper-case spelling is ours (onex_bus is not).
        return {
            key.lower(): value
            for key, value in self._environ.items()
            if key.startswith(ENV_PREFIX) and key == key.upper() and value != ""
        }


def _instance() -> str:
    return "{host}-{pid}".format_map(whereabouts())


def whereabouts() -> dict[str, Any]:
    """This process's ``host`` (name) and ``pid``: a node's introspection carries them (``onex ps`` shows them)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _shown(text: str) -> dict[str, Any]:
    """What ``onex config`` and the README show as the default of a field whose default is computed."""
    return {"default_text": text}


class Settings(BaseSettings):
    """Immutable runtime settings. Build with ``Settings.load(environ, **flags)``; ``with_`` returns a changed copy.

    ``Settings(...)`` itself takes the values given and defaults for the rest: it does not read the environment
    (``load`` does), so code and tests that build settings get the same ones wherever they run.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        enable_decoding=False,  # a path list is text separated by os.pathsep, not JSON
        frozen=True,
        extra="forbid",
    )

    root: Path = Field(
        default_factory=find_root,
        description="The project root (relative: to the working directory). Contracts, nodes and the default "
        "store are found from it.",
        json_schema_extra=_shown("the nearest directory at or above the working directory with contracts/"),
    )
    env: str = Field(
        "dev",
        description="The environment: part of every topic name, consumer group and envelope "
        "(1-64 characters of [A-Za-z0-9_.-], a letter or digit first).",
    )
    tenant: str = Field(
        "omninode_bridge",
        description="The tenant: part of every topic name (1-64 characters of [A-Za-z0-9_.-], a letter or digit "
        "first).",
    )
    region: str | None = Field(None, description="The region written into every envelope; empty: none.")
    instance: str = Field(
        default_factory=_instance,
        description="This process's name in node ids, heartbeats and envelopes.",
        json_schema_extra=_shown("HOSTNAME-PID"),
    )
    bus: str = Field(DEFAULT_BUS, description="The event bus: memory:// (in this process) or kafka://HOST:PORT[,...].")
    store: str = Field(
        DEFAULT_STORE,
        description="The store: sqlite:///PATH (relative: to the root; outside any project "
        "$XDG_DATA_HOME/onex/onex.db) or postgresql://...",
    )
    heartbeat_interval_s: float = Field(30.0, description="Seconds between a node's heartbeats; 0: none.")
    partitions: int = Field(
        4,
        le=MAX_PARTITIONS,
        description="Partitions per topic (Kafka: set when onex creates it); bounds how many replicas share work. On "
        "the memory bus, how a subscription's messages are split into batches handled side by side; a small batch "
        "takes in what waits in the others, so there the count changes little (docs/performance.md). Bounded "
        "because Kafka's practical limit per topic is a few thousand.",
    )
    buffer_size: int = Field(
        10_000, le=MAX_BUFFER_SIZE, description="Messages the memory bus buffers per partition before publish waits."
    )
    http: str | None = Field(
        None, description="Where `onex run` serves the HTTP stamping API (HOST:PORT); empty: nowhere."
    )
    # Kept out of repr() so that printing settings never leaks it; `onex config` shows only whether it is set.
    api_key: str | None = Field(
        None,
        repr=False,
        description="The bearer key the HTTP API requires; empty: none.",
        json_schema_extra={"secret": True},
    )
    api_keys: str | None = Field(
        None,
        repr=False,
        description="Bearer keys of the HTTP API and the metastore tenant each one sees: KEY=TENANT,KEY2=TENANT2 "
        "(ONEX_API_KEY is tenant default); empty: none.",
        json_schema_extra={"secret": True},
    )
    http_max_body: int = Field(
        DEFAULT_HTTP_MAX_BODY, le=MAX_HTTP_MAX_BODY, description="The largest HTTP body read whole, in bytes (413)."
    )
    http_batch_limit: int = Field(
        DEFAULT_HTTP_BATCH_LIMIT, le=MAX_HTTP_BATCH_LIMIT, description="The most items in one HTTP /batch."
    )
    http_timeout_s: float = Field(
        DEFAULT_HTTP_TIMEOUT_S,
        description="Seconds an HTTP request waits for its workflows before 504 (they keep running).",
    )
    # `onex stamp PATH...` in process sets exactly its PATHs; a deployment stamps its own tree unless told otherwise.
    stamp_roots: tuple[Path, ...] = Field(
        (),
        description=f"The only paths the stamping effect may touch (symlinks resolved), separated by {os.pathsep!r}; "
        "relative: to the root. Empty: the root.",
    )
    checkpoints: bool = Field(
        True,
        description="Whether orchestrators and reducers checkpoint state in the store (off: nothing is recovered).",
    )
    synchronous_checkpoints: bool = Field(
        True,
        description="Whether an orchestrator on the memory bus publishes a workflow's outcome only once its checkpoint "
        "is stored (off: written behind, faster; a crash loses the workflows not written yet, an outcome a client was "
        "told of included). Kafka always waits.",
    )
    sqlite_writer: SqliteWriter = Field(
        "process",
        description="Where a SQLite database file's writes run: a process of their own (no wait for the interpreter "
        "lock the nodes hold), or a thread of the process using the store.",
    )
    event_loop: EventLoop = Field(
        "auto",
        description="The event loop a command runs on: uvloop (libuv, in C), asyncio's own, or auto (uvloop where it "
        "is installed, else asyncio's).",
    )
    log_level: LogLevel = Field("info", description="The lowest level logged.")
    log_format: LogFormat = Field("text", description="Log lines as text, or json (one object a line).")
    log_summary_s: float = Field(30.0, description="Seconds between a working node's summary log lines; 0: never.")
    metrics: str | None = Field(
        None, description="Where `onex run` serves /healthz, /readyz and /metrics (HOST:PORT); empty: nowhere."
    )
    dlq_alert_threshold: int = Field(
        10,
        le=MAX_INT32,
        description="A node dead-lettering more messages than this within the window alerts and is DEGRADED.",
    )
    dlq_alert_window_s: float = Field(300.0, description="The dead-letter alert's window, in seconds.")
    cache_url: str | None = Field(
        None,
        description="Where every cache keeps its entries, overriding the caching subcontracts' backend: memory or "
        "redis://HOST:PORT/DB (shared by the processes of one ONEX_ENV and ONEX_TENANT using it); empty: as each "
        "subcontract says.",
    )
    # Read by the shipped contracts (${ONEX_...} in contracts/*.yaml) into their nodes' config; the placeholders'
    # own defaults there equal these (a test checks).
    stamp_author: str = Field("onex", description="The author written into stamps (stamping effect).")
    stamp_timeout_ms: int = Field(
        30_000, le=MAX_INT32, description="Milliseconds the orchestrator gives its stamp step before retrying it."
    )
    intelligence_url: str | None = Field(
        None, description="Where the orchestrator's optional intelligence step posts each hash; empty: skipped."
    )
    log_events: bool = Field(
        False,
        description="Whether the database adapter also writes every event it consumes (outcomes, transitions, "
        "aggregation intents; not STAMP_CREATED) to event_logs.",
    )
    drain_timeout_ms: int = Field(
        5_000,
        le=MAX_INT32,
        description="Milliseconds the database adapter's drain gives batches in hand while the store is down.",
    )
    registry_sweep_ms: int = Field(
        1_000, le=MAX_INT32, description="Milliseconds between the registry's sweeps for stale nodes."
    )
    shutdown_timeout_s: float = Field(
        25.0,
        description="Seconds a command gives its drain after SIGTERM (onex run: or Ctrl-C) before it exits anyway, "
        "with status 1, as a crash would (on Kafka what was not committed comes again; workflows resume from their "
        "checkpoints): a store that stays down would hold it for ever. Below the supervisor's grace period "
        "(Kubernetes: 30 s). 0: no limit.",
    )
    # O.N.E. v0.1: what every stored stamp row and HTTP stamp answer says it follows (metadata_stamps columns; the
    # rows migration 0005 backfilled say "1.0" / "0.1", the defaults, since a migration cannot read settings).
    protocol_version: str = Field(
        DEFAULT_PROTOCOL_VERSION, description="The protocol_version recorded with every stamp (O.N.E. v0.1)."
    )
    metadata_version: str = Field(
        DEFAULT_METADATA_VERSION, description="The metadata_version recorded with every stamp (O.N.E. v0.1)."
    )
    reducer_flush_ms: int = Field(
        500, le=MAX_INT32, description="Milliseconds between the reducer's flushes of its aggregates."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The values given, nothing else: `load` reads the environment, from whichever mapping it is given.
        return (init_settings,)

    @field_validator("*", mode="before")
    @classmethod
    def _typed(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or "?"
        return _parse(name, cls.model_fields[name], value)

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("env", "tenant")
    @classmethod
    def _topic_part(cls, value: str, info: ValidationInfo) -> str:
        # Both go into every Kafka topic name, which takes only [a-zA-Z0-9._-] (249 characters at most): ONEX_ENV='a b'
        # made topics no broker creates. The tenants' rule of ONEX_API_KEYS keeps a name well within that.
        if not re.fullmatch(TENANT_PATTERN, value):
            name = info.field_name or "?"
            rule = "1-64 characters of [A-Za-z0-9_.-], a letter or digit first (it is part of every topic name)"
            raise ValueError(f"{name} ({variable(name)}) must be {rule}, not {value!r}")
        return value

    @field_validator("cache_url")
    @classmethod
    def _cache_backend(cls, value: str | None) -> str | None:
        # Checked here, with the other settings, rather than when the first cache opens: `onex run` had logged its
        # start and exited 1 by then, for what is a usage error.
        if value is None or value in CACHE_MEMORY:
            return value
        where = f"cache_url ({variable('cache_url')})"
        if not value.startswith(CACHE_SCHEMES):
            raise ValueError(f"{where} must be memory or redis://HOST:PORT/DB, not {redact_url(value)!r}")
        try:
            _ = urlsplit(value).port  # a port that is not a number from 0 to 65535
        except ValueError as exc:
            raise ValueError(f"{where} {redact_url(value)!r}: {exc}") from None
        return value

    @field_validator("api_keys")
    @classmethod
    def _key_pairs(cls, value: str | None) -> str | None:
        if value is not None:
            parse_api_keys(value)  # ValueError naming the variable and the entry at fault
        return value

    @model_validator(mode="after")
    def _one_tenant_per_key(self) -> Self:
        keys = parse_api_keys(self.api_keys) if self.api_keys else {}
        if self.api_key and keys.get(self.api_key, DEFAULT_TENANT) != DEFAULT_TENANT:
            raise ValueError(f"api_key (ONEX_API_KEY) is also a key of tenant {keys[self.api_key]!r} in ONEX_API_KEYS")
        return self

    def tenant_keys(self) -> dict[str, str]:
        """Each HTTP API key and the tenant it sees: ``api_keys``' pairs, and ``api_key`` as tenant ``default``."""
        keys = parse_api_keys(self.api_keys) if self.api_keys else {}
        if self.api_key:
            keys[self.api_key] = DEFAULT_TENANT
        return keys

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Self:
        """Flags that are not None win over ``ONEX_<NAME>`` variables (of ``environ``, default ``os.environ``),
        which win over defaults. ValueError (one line) for a value that is not of its setting's type.

        Without a root or store given, and with the cwd inside no project, the store is ``user_data_store()``.
        """
        return cls.load_with_sources(environ, **flags)[0]

    @classmethod
    def load_with_sources(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> tuple[Self, dict[str, str]]:
        """``load``'s settings, and where each field's value came from: ``flag``, ``environment`` or ``default``."""
        environ = os.environ if environ is None else environ
        unknown = sorted(set(flags) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
        given = {name: value for name, value in flags.items() if value is not None}
        found = _Environment(cls, environ)()
        values = {**found, **given}
        if "root" not in values and "store" not in values and find_project() is None:
            values["store"] = user_data_store(environ)
        sources = {
            name: "flag" if name in given else "environment" if name in found else "default"
            for name in cls.model_fields
        }
        try:
            return cls(**values), sources
        except ValidationError as exc:
            raise ValueError(_one_line(exc)) from None

    def with_(self, **changes: Any) -> Self:
        """A copy with ``changes``, parsed as ``load`` parses flags; TypeError for a name that is no setting."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
        try:
            return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})
        except ValidationError as exc:
            raise ValueError(_one_line(exc)) from None

    def stamp_root_paths(self) -> tuple[str, ...]:
        """The real paths (symlinks resolved) the stamping effect may touch: ``stamp_roots``, or the project root."""
        return tuple(os.path.realpath(self.root / path) for path in self.stamp_roots or (self.root,))

    def store_url(self) -> str:
        """The store URL with a relative SQLite path resolved against the project root."""
        prefix = "sqlite:///"
        if self.store.startswith(prefix) and not self.store.startswith("sqlite:////"):
            path = self.store[len(prefix) :]
            if path != ":memory:" and not Path(path).is_absolute():
                return f"{prefix}{quote(str(self.root))}/{path}"  # ``path`` is URL text already; the root is not
        return self.store


read_plainly(Settings)  # read on every handled batch; a BaseSettings, so not a PlainReads (onex._model_reads)


# --- the declarations, as documentation and for contract interpolation --------------------------------------------


@dataclass(frozen=True, slots=True)
class Declaration:
    """One setting as ``onex config`` and the README document it."""

    name: str
    variable: str
    type: str  # as a user reads it: int, float, bool, str, path, paths, a choice; ", optional" when it may be unset
    default: Any  # the value (None: none), or for a computed default the text saying how it is computed
    description: str
    secret: bool  # shown only as set or not


def _type_name(annotation: Any) -> str:
    optional, kind = _unwrap(annotation)
    if get_origin(kind) is Literal:
        name = "/".join(str(choice) for choice in get_args(kind))
    elif get_origin(kind) is tuple and get_args(kind) == (Path, ...):
        name = "paths"
    elif kind is Path:
        name = "path"
    else:
        name = getattr(kind, "__name__", str(kind))
    return f"{name}, optional" if optional else name


def _declaration(name: str, info: FieldInfo) -> Declaration:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    default = extra["default_text"] if "default_text" in extra else info.get_default(call_default_factory=False)
    return Declaration(
        name=name,
        variable=variable(name),
        type=_type_name(info.annotation) + ("" if (most := _maximum(info)) is None else f", at most {most}"),
        default=default,
        description=info.description or "",
        secret=bool(extra.get("secret")),
    )


def declarations() -> tuple[Declaration, ...]:
    """Every setting, in declaration order: what ``onex config`` and the README's configuration table show."""
    return tuple(_declaration(name, info) for name, info in Settings.model_fields.items())


DECLARED: frozenset[str] = frozenset(variable(name) for name in Settings.model_fields)
_BY_VARIABLE: dict[str, str] = {variable(name): name for name in Settings.model_fields}


def resolve_variable(name: str, environ: Mapping[str, str]) -> str | None:
    """What a contract's ``${name}`` stands for, given ``environ``; None: unset (the placeholder's default applies).

    An ``ONEX_*`` name is onex's: it must be declared (``DECLARED``, a field of ``Settings``), its value is checked
    against the field's type and given in one spelling (``on`` -> ``true``), and unset or empty it is the declared
    default, never None, so that a contract sees what ``onex config`` shows. Any other name is the project's own and
    is read as it is. ValueError (one line, naming the variable) for an undeclared ``ONEX_*`` name or a bad value.
    """
    if not name.startswith(ENV_PREFIX):
        return environ.get(name)
    field = _BY_VARIABLE.get(name)
    if field is None:
        close = difflib.get_close_matches(name, sorted(DECLARED), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"{name} is not an onex setting (`onex config` lists them){hint}")
    info = Settings.model_fields[field]
    raw = environ.get(name)
    if raw:
        value = _parse(field, info, raw)
        return spelled(value.resolve() if isinstance(value, Path) else value)
    return spelled(_parse(field, info, info.get_default(call_default_factory=True)))
