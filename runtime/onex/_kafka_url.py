"""How a ``kafka://`` URL becomes ``KafkaBus``'s arguments (``KafkaBus.from_url``, which documents the URL)."""

from __future__ import annotations

import ssl
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from onex.exceptions import BusError

# Settings that from_url() takes from the URL's query string (integers), by the client they go to.
_URL_CONSUMER_OPTIONS: Final = frozenset(
    {
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "rebalance_timeout_ms",
        "max_poll_interval_ms",
        "fetch_max_wait_ms",
    }
)
_URL_PRODUCER_OPTIONS: Final = frozenset({"linger_ms", "max_batch_size"})


def bus_arguments(url: str, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The brokers and keyword arguments of ``KafkaBus`` for ``url``, ``overrides`` merged over the URL's (their
    ``consumer_options`` / ``producer_options`` key by key); ``BusError`` naming what in the URL is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise BusError(f"not a Kafka bus URL: {url!r} (expected kafka://HOST:PORT[,HOST:PORT])")
    credentials, _, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise BusError(f"Kafka bus URL {url!r} names no broker")
    kwargs: dict[str, Any] = {}
    if credentials:
        user, _, password = credentials.partition(":")
        kwargs["sasl_plain_username"] = unquote(user)
        kwargs["sasl_plain_password"] = unquote(password)
        kwargs.setdefault("security_protocol", "SASL_PLAINTEXT")
    cafile: str | None = None
    consumer_options: dict[str, Any] = {}
    producer_options: dict[str, Any] = {}

    def number(name: str, value: str, kind: type[int] | type[float]) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise BusError(f"Kafka bus URL {url!r}: {name} must be a number, not {value!r}") from None

    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("partitions", "replication_factor", "background_fetch_max_wait_ms"):
            kwargs[name] = number(name, value, int)
        elif name == "join_timeout_s":
            kwargs[name] = number(name, value, float)
        elif name in _URL_CONSUMER_OPTIONS:
            consumer_options[name] = number(name, value, int)
        elif name in _URL_PRODUCER_OPTIONS:
            producer_options[name] = number(name, value, int)
        elif name in ("client_id", "security_protocol", "sasl_mechanism"):
            kwargs[name] = value
        elif name == "ssl_cafile":
            cafile = value
        else:
            raise BusError(f"Kafka bus URL {url!r}: unknown parameter {name!r}")
    consumer_options.update(overrides.pop("consumer_options", None) or {})
    producer_options.update(overrides.pop("producer_options", None) or {})
    if consumer_options:
        kwargs["consumer_options"] = consumer_options
    if producer_options:
        kwargs["producer_options"] = producer_options
    kwargs.update(overrides)
    if kwargs.get("security_protocol") in ("SSL", "SASL_SSL") and kwargs.get("ssl_context") is None:
        kwargs["ssl_context"] = ssl.create_default_context(cafile=cafile)
    return hosts, kwargs
