"""Payloads and where events go: the codec that validates an event's payload into its model, and the one map from
event names to topics and codecs (``EventCatalog``), built from the contracts by nodes, the client and the harness.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from onex.contracts import Contract, EventSpec, load_payload_model, unresolved_refs
from onex.envelope import (
    NODE_HEARTBEAT,
    NODE_INTROSPECTION,
    REGISTRY_REQUEST_INTROSPECTION,
    RUNTIME_EVENTS,
    STATE_TRANSITION,
    ModelIntrospectionRequest,
    ModelNodeHeartbeat,
    ModelNodeIntrospection,
    ModelStateTransitions,
    OnexEnvelopeV1,
    Reader,
    topic_name,
    typed_reader,
)
from onex.exceptions import OnexError, PayloadError
from onex.settings import Settings

__all__ = ["Event", "EventCatalog", "PayloadCodec", "Publication", "readers_for"]


class Event(NamedTuple):
    """A consumed envelope with its validated payload (a pydantic model, or a dict for schema-less events)."""

    envelope: OnexEnvelopeV1
    payload: Any


class PayloadCodec:
    """Validates one event's payloads, compiled once from the contract.

    ``payload_model`` gives a pydantic model. An inline ``payload_schema`` is compiled once into a jsonschema
    validator object (schemas are not re-read per message; the validator is reused); events with neither carry
    free-form dicts.
    """

    def __init__(self, spec: EventSpec, *, root: Path) -> None:
        self.event_name = spec.event_name
        self.model: type[BaseModel] | None = None
        self._validator: Any = None
        if spec.payload_model:
            try:
                model = load_payload_model(spec.payload_model, root=root)
            except LookupError as exc:
                raise OnexError(str(exc)) from None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise OnexError(f"{spec.payload_model!r} is not a pydantic model")
            self.model = model
        elif spec.payload_schema is not None:
            from jsonschema import Draft202012Validator

            # jsonschema resolves a $ref when a payload first reaches it: a dangling one would fail every message.
            for _, problem in unresolved_refs(spec.payload_schema):
                raise OnexError(f"event {spec.event_name}: payload_schema: {problem}")
            self._validator = Draft202012Validator(spec.payload_schema)

    def decode(self, envelope: OnexEnvelopeV1) -> Any:
        """The validated payload of ``envelope``; PayloadError names the event id and the bad field.

        A payload that already is this event's model was validated when its envelope was built in this process (the
        models are frozen), and is handed over as it is; anything else (a dict off the wire or from a caller) is
        validated here, at the edge.
        """
        payload = envelope.payload
        if self.model is not None:
            if type(payload) is self.model:
                return payload
            try:
                if isinstance(payload, BaseModel):  # another model of the same event (another node's version)
                    return self.model.model_validate(payload.model_dump())
                return self.model.model_validate(payload)
            except ValidationError as exc:
                raise PayloadError(str(envelope.event_id), envelope.event_type, _first_error(exc)) from None
        if isinstance(payload, BaseModel):
            payload = payload.model_dump()
        if self._validator is not None:
            error = next(iter(self._validator.iter_errors(payload)), None)
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "payload"
                raise PayloadError(str(envelope.event_id), envelope.event_type, f"{where}: {error.message}")
        return payload

    def encode(self, payload: BaseModel | Mapping[str, Any]) -> Any:
        """The payload for an envelope: the event's model (validated from a mapping, or checked to be the model),
        or for an event without a model the mapping as a dict (checked against the inline schema, if any)."""
        if type(payload) is self.model:  # the usual case, told without the model metaclass's isinstance
            return payload
        if isinstance(payload, BaseModel):
            if self.model is not None and type(payload) is not self.model:
                raise PayloadError(
                    "-", self.event_name, f"expected {self.model.__name__}, got {type(payload).__name__}"
                )
            return payload if self.model is not None else payload.model_dump()
        if self.model is not None:
            try:
                return self.model.model_validate(payload)
            except ValidationError as exc:
                raise PayloadError("-", self.event_name, _first_error(exc)) from None
        data = dict(payload)
        if self._validator is not None:
            error = next(iter(self._validator.iter_errors(data)), None)
            if error is not None:
                raise PayloadError("-", self.event_name, error.message)
        return data


def readers_for(consumed: Iterable[tuple[str, PayloadCodec]]) -> dict[str, Reader]:
    """For a subscription to these (topic, codec) pairs: a ``typed_reader`` for each topic that carries one event
    with a payload model, so the payloads of its records are validated once, in the parse of their JSON."""
    by_topic: dict[str, list[PayloadCodec]] = {}
    for topic, codec in consumed:
        by_topic.setdefault(topic, []).append(codec)
    return {
        topic: typed_reader(codec.event_name, codec.model)
        for topic, [codec, *others] in by_topic.items()
        if not others and codec.model is not None
    }


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"


_RUNTIME_MODELS: dict[str, type[BaseModel]] = {
    NODE_INTROSPECTION: ModelNodeIntrospection,
    NODE_HEARTBEAT: ModelNodeHeartbeat,
    STATE_TRANSITION: ModelStateTransitions,
    REGISTRY_REQUEST_INTROSPECTION: ModelIntrospectionRequest,
}


@dataclass(frozen=True, slots=True)
class Publication:
    """An event as a contract declares it: its topic, its payload codec and (for a publisher) its partition key."""

    event_name: str
    topic: str
    codec: PayloadCodec
    partition_key: str | None = None

    @classmethod
    def of(cls, spec: EventSpec, settings: Settings) -> Publication:
        topic = topic_name(
            spec.event_name, env=settings.env, tenant=settings.tenant, cls=spec.topic_class, major=spec.event_version
        )
        return cls(spec.event_name, topic, PayloadCodec(spec, root=settings.root), spec.partition_key)

    @classmethod
    def runtime(cls, event_name: str, settings: Settings) -> Publication:
        """One of the events every node publishes (``RUNTIME_EVENTS``)."""
        model = _RUNTIME_MODELS[event_name]
        spec = EventSpec(
            event_name=event_name,
            topic_class=RUNTIME_EVENTS[event_name],
            payload_model=f"onex.envelope:{model.__name__}",
        )
        return cls.of(spec, settings)


class EventCatalog:
    """The one map from event names to topics and payload codecs, built once from the contracts: every event any of
    them publishes or consumes, and the runtime's own. The client and the test harness read it; a node builds its
    own entries the same way (``Publication.of``) from its contract alone."""

    def __init__(self, contracts: Iterable[Contract], settings: Settings) -> None:
        self.events: dict[str, Publication] = {name: Publication.runtime(name, settings) for name in RUNTIME_EVENTS}
        for contract in contracts:
            events = contract.subcontracts.event_type
            # Consumers first, publishers last: where two contracts name different models, the publisher's wins.
            for spec in (*events.consumes, *events.publishes) if events else ():
                self.events[spec.event_name] = Publication.of(spec, settings)

    def topic(self, event_name: str) -> str:
        return self.events[event_name].topic

    def decoded(self, envelope: OnexEnvelopeV1) -> OnexEnvelopeV1:
        """``envelope`` with its payload as its event's model (PayloadError when it does not fit); as it is when it
        already carries it, or when the event has no model."""
        publication = self.events.get(envelope.event_type)
        if publication is None or publication.codec.model is None or isinstance(envelope.payload, BaseModel):
            return envelope
        return envelope.model_copy(update={"payload": publication.codec.decode(envelope)})
