"""Runtime settings: flags, then ``ONEX_*`` environment variables, then defaults. The one place env is read."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_STORE = "sqlite:///.onex/onex.db"
DEFAULT_BUS = "memory://"
DEFAULT_HTTP_MAX_BODY = 16 * 1024 * 1024
DEFAULT_HTTP_BATCH_LIMIT = 100
DEFAULT_HTTP_TIMEOUT_S = 30.0


def find_root(start: Path | None = None) -> Path:
    """The project root: the nearest directory at or above ``start`` holding a ``contracts/`` directory.

    Falls back to the directory the ``onex`` package was installed from (an editable install of this repository),
    so ``onex`` works from any directory for the shipped nodes.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "contracts").is_dir():
            return candidate
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "contracts").is_dir():
        return package_root
    return here


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

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Flags that are not None win over ``ONEX_<NAME>`` variables, which win over defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            flag = flags.get(f.name)
            raw = flag if flag is not None else environ.get(f"ONEX_{f.name.upper()}")
            if raw is None:
                continue
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
        settings = cls(**values)
        return settings

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
