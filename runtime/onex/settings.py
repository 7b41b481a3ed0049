"""Runtime settings: flags, then ``ONEX_*`` environment variables, then defaults. The one place env is read."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_STORE = "sqlite:///.onex/onex.db"
DEFAULT_BUS = "memory://"
DEFAULT_HTTP_MAX_BODY = 16 * 1024 * 1024
DEFAULT_HTTP_BATCH_LIMIT = 100
DEFAULT_HTTP_TIMEOUT_S = 30.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


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
    return f"sqlite:///{data / 'onex' / 'onex.db'}"


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://u:***@host/db``), for banners, logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _number(name: str, raw: Any, kind: type[int] | type[float]) -> int | float:
    """``raw`` as ``kind``, positive (a timeout may be 0); ValueError naming the setting and its variable if not."""
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        value = -1
    if not math.isfinite(value) or value < 0 or (value == 0 and kind is int):
        noun = "a positive whole number" if kind is int else "a number of seconds, 0 or more"
        raise ValueError(f"{name} (ONEX_{name.upper()}) must be {noun}, not {raw!r}")
    return value


def _flag(name: str, raw: Any) -> bool:
    """``raw`` as a yes/no setting; ValueError naming the setting and its variable if it is neither."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} (ONEX_{name.upper()}) must be on or off (true/false, 1/0), not {raw!r}")


def _paths(raw: Any) -> tuple[Path, ...]:
    """A list of paths: a string separated by ``os.pathsep`` (empty entries dropped), or any iterable of paths."""
    items = raw.split(os.pathsep) if isinstance(raw, str) else list(raw)
    return tuple(Path(item) for item in items if str(item))


@dataclass(frozen=True, slots=True)
class Settings:
    """Immutable runtime settings. Build with ``Settings.load(**flags)``."""

    root: Path = field(default_factory=find_root)
    env: str = "dev"
    tenant: str = "omninode_bridge"
    region: str | None = None
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    bus: str = DEFAULT_BUS
    store: str = DEFAULT_STORE
    heartbeat_interval_s: float = 30.0
    partitions: int = 4
    buffer_size: int = 10_000
    # The HTTP gateway: where `onex run` serves it (HOST:PORT, None: not at all) and the bearer token it requires
    # (None or empty: none). The key is kept out of repr() so that printing settings never leaks it.
    http: str | None = None
    api_key: str | None = field(default=None, repr=False)
    # Its limits: the largest body read whole (bytes; 413 above it), the most items in one /batch, and how long a
    # request waits for its workflows (then 504; they keep running).
    http_max_body: int = DEFAULT_HTTP_MAX_BODY
    http_batch_limit: int = DEFAULT_HTTP_BATCH_LIMIT
    http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S
    # The only places the stamping effect may touch files: a command whose real path (symlinks resolved) is under
    # none of them is refused. ONEX_STAMP_ROOTS is a list separated by os.pathsep (":" on Linux); relative entries
    # are the project root's, as the SQLite store's path is. Empty (the default): the project root alone, so a
    # deployment stamps its own tree unless told otherwise. `onex stamp PATH...` in process sets exactly its PATHs.
    stamp_roots: tuple[Path, ...] = ()
    # Whether orchestrators and reducers checkpoint their state in the store (workflows survive crashes and move
    # between replicas). Off only to measure what durability costs (bench/): nothing is recovered then.
    checkpoints: bool = True
    # Operating: the log level (debug, info, warning, error), the log format (text, or json: one object a line), how
    # often each node logs a summary while it works (seconds; 0: never), and where `onex run` serves /healthz,
    # /readyz and /metrics (HOST:PORT; None: nowhere).
    log_level: str = "info"
    log_format: str = "text"
    log_summary_s: float = 30.0
    metrics: str | None = None
    # The dead-letter alert: a node that dead-letters more than this many messages within the window logs an ERROR,
    # raises onex_dead_letter_alert and reports DEGRADED (heartbeat, /readyz body) until the window holds fewer.
    dlq_alert_threshold: int = 10
    dlq_alert_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.log_level.lower() not in LOG_LEVELS:
            choices = ", ".join(LOG_LEVELS)
            raise ValueError(f"log_level (ONEX_LOG_LEVEL) must be one of {choices}, not {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            choices = ", ".join(LOG_FORMATS)
            raise ValueError(f"log_format (ONEX_LOG_FORMAT) must be one of {choices}, not {self.log_format!r}")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Flags that are not None win over ``ONEX_<NAME>`` variables, which win over defaults.

        Without a root or store given, and with the cwd inside no project, the store is ``user_data_store()``.
        """
        return cls.load_with_sources(environ, **flags)[0]

    @classmethod
    def load_with_sources(
        cls, environ: Mapping[str, str] | None = None, **flags: Any
    ) -> tuple[Settings, dict[str, str]]:
        """``load``'s settings, and where each field's value came from: ``flag``, ``environment`` or ``default``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in fields(cls):
            flag = flags.get(f.name)
            raw = flag if flag is not None else environ.get(f"ONEX_{f.name.upper()}")
            if raw is None:
                sources[f.name] = "default"
                continue
            sources[f.name] = "flag" if flag is not None else "environment"
            if f.name == "root":
                values[f.name] = Path(raw).resolve()
            elif f.type in ("int", "float"):  # the annotations are strings (``from __future__ import annotations``)
                values[f.name] = _number(f.name, raw, int if f.type == "int" else float)
            elif f.type == "bool":
                values[f.name] = _flag(f.name, raw)
            elif f.type == "tuple[Path, ...]":
                values[f.name] = _paths(raw)
            else:
                values[f.name] = str(raw)
        if not values.get("api_key"):
            values.pop("api_key", None)  # ONEX_API_KEY= (empty) means no key, not a key that is the empty string
            sources["api_key"] = "default"
        if "root" not in values and "store" not in values and find_project() is None:
            values["store"] = user_data_store(environ)
        return cls(**values), sources

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def stamp_root_paths(self) -> tuple[str, ...]:
        """The real paths (symlinks resolved) the stamping effect may touch: ``stamp_roots``, or the project root."""
        return tuple(os.path.realpath(self.root / path) for path in self.stamp_roots or (self.root,))

    def store_url(self) -> str:
        """The store URL with a relative SQLite path resolved against the project root."""
        prefix = "sqlite:///"
        if self.store.startswith(prefix) and not self.store.startswith("sqlite:////"):
            path = self.store[len(prefix) :]
            if path != ":memory:" and not Path(path).is_absolute():
                return prefix + str(self.root / path)
        return self.store
