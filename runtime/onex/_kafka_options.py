"""``KafkaBus``'s settings: the options each aiokafka client takes, the bus's defaults over aiokafka's, and how a
``kafka://`` URL becomes the bus's arguments (``KafkaBus.from_url``, which documents the URL)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from onex.exceptions import BusError, error_text
from onex.settings import redact_url

# Options every aiokafka client (producer, consumer, admin) accepts: connection and security settings.
CLIENT_OPTIONS: Final = frozenset(
    {
        "request_timeout_ms",
        "retry_backoff_ms",
        "metadata_max_age_ms",
        "connections_max_idle_ms",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)

PRODUCER_DEFAULTS: Final[Mapping[str, Any]] = {
    "acks": "all",
    # A few ms of lingering turns a burst of publish() calls into one request per partition.
    "linger_ms": 5,
    # 600-byte envelopes: 16 KiB (aiokafka's default) fills after ~25 records; 256 KiB keeps requests large
    # and still bounds the memory held per partition (one full batch per partition, then publish() waits).
    "max_batch_size": 256 * 1024,
}

CONSUMER_DEFAULTS: Final[Mapping[str, Any]] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    # On revocation a member first finishes and commits its batch in hand (see _RevocationListener), so the group
    # must wait for it longer than aiokafka's default (the session timeout); the Java client waits 5 minutes.
    "rebalance_timeout_ms": 60_000,
    # The Java client's default rather than aiokafka's round robin: partition i of every topic a subscription takes
    # goes to the same member (given equal partition counts, which ensure_topics gives), so a node consuming
    # several topics keyed alike (the reducer: everything by namespace) sees all of one key in one place.
    "partition_assignment_strategy": (RangePartitionAssignor,),
    # How long a silent member keeps its partitions. 6 s is the least that Kafka and Redpanda accept by default
    # (group.min.session.timeout.ms) and is safe because aiokafka heartbeats from a task of its own, not from the
    # fetch loop: only an event loop blocked for 6 s loses the group. Shorter than aiokafka's 10 s because a group
    # join takes half the session timeout on tansu and at least group.initial.rebalance.delay.ms (3 s) on Kafka:
    # a node starts in about 3 s instead of 5. The heartbeat interval follows it (a third), unless it is set.
    "session_timeout_ms": 6_000,
    # How soon a consumer notices a topic that appeared (aiokafka's default is 5 minutes). A broker that lost its
    # topics (tansu with memory storage, restarted) gets them back when someone publishes (tansu 0.6 also creates
    # those a metadata request names, a consumer's included, with 4 partitions), and only then can the consumers
    # subscribed to them be assigned their partitions again.
    "metadata_max_age_ms": 5_000,
}

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


def _check_broker(url: str, broker: str) -> None:
    """``BusError`` unless ``broker`` is ``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` (or a bare IPv6
    address), as aiokafka reads it (no port: 9092), with PORT a number from 1 to 65535: aiokafka would raise a
    bare ``ValueError`` for a port that is not a number, and only when the bus starts."""
    text = broker.strip()
    port: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise BusError(f"Kafka bus URL {url!r}: broker {broker!r} is not [IPv6 address]:PORT")
        port = rest[1:] if rest else None
    elif ":" in text and not _is_ipv6(text):
        host, _, port = text.rpartition(":")
    else:
        host = text
    if not host:
        raise BusError(f"Kafka bus URL {url!r}: broker {broker!r} names no host (expected HOST:PORT)")
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise BusError(f"Kafka bus URL {url!r}: the port of broker {broker!r} must be a number from 1 to 65535")


def _is_ipv6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


def bus_arguments(url: str, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The brokers and keyword arguments of ``KafkaBus`` for ``url``, ``overrides`` merged over the URL's (their
    ``consumer_options`` / ``producer_options`` key by key); ``BusError`` naming what in the URL is wrong."""
    shown = redact_url(url)  # messages never show its password
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise BusError(f"Kafka bus URL {shown!r}: {exc}") from None
    if parts.scheme != "kafka":
        raise BusError(f"not a Kafka bus URL: {shown!r} (expected kafka://HOST:PORT[,HOST:PORT])")
    credentials, _, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise BusError(f"Kafka bus URL {shown!r} names no broker")
    for broker in hosts.split(","):
        _check_broker(shown, broker)
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
            raise BusError(f"Kafka bus URL {shown!r}: {name} must be a number, not {value!r}") from None

    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("partitions", "replication_factor", "background_fetch_max_wait_ms"):
            kwargs[name] = number(name, value, int)
        elif name in ("join_timeout_s", "commit_timeout_s"):
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
            raise BusError(f"Kafka bus URL {shown!r}: unknown parameter {name!r}")
    consumer_options.update(overrides.pop("consumer_options", None) or {})
    producer_options.update(overrides.pop("producer_options", None) or {})
    if consumer_options:
        kwargs["consumer_options"] = consumer_options
    if producer_options:
        kwargs["producer_options"] = producer_options
    kwargs.update(overrides)
    if kwargs.get("security_protocol") in ("SSL", "SASL_SSL") and kwargs.get("ssl_context") is None:
        try:
            kwargs["ssl_context"] = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:  # no such file, or not certificates
            raise BusError(f"Kafka bus URL {shown!r}: cannot load ssl_cafile {cafile!r}: {error_text(exc)}") from None
    return hosts, kwargs
