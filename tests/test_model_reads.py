"""``onex._model_reads``: onex's payloads, envelope and contract models read their fields through CPython's plain
attribute lookup, and behave exactly as pydantic models do: a missing name, a private attribute, an extra field, a
``__getattr__`` of a model's own, one assigned later."""

from __future__ import annotations

import pickle
import sys
import uuid
from typing import Any

import pytest
from onex._model_reads import PlainReads, class_reads_plainly, reads_plainly
from onex.contracts.models import Contract, Step
from onex.envelope import OnexEnvelopeV1, Payload
from onex.metastore.models import MetadataEntry
from onex.nodes import Node
from onex.settings import Settings
from pydantic import BaseModel, ConfigDict, PrivateAttr

from nodes.models import ModelStampRequest
from nodes.orchestrator.v1_0_0.models import ModelOrchestratorConfig

pytestmark = pytest.mark.skipif(sys.implementation.name != "cpython", reason="a CPython type slot")


class Reading(Payload):
    name: str
    size: int = 0

    @property
    def label(self) -> str:
        return f"{self.name}:{self.size}"


class PlainPydantic(BaseModel):
    """The same fields on pydantic's own lookup, to compare with."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    size: int = 0


@pytest.mark.parametrize(
    "cls",
    [OnexEnvelopeV1, ModelStampRequest, Step, Contract, Reading, Settings, ModelOrchestratorConfig, MetadataEntry],
    ids=lambda c: c.__name__,
)
def test_onex_models_read_their_fields_through_the_plain_lookup(cls: type[BaseModel]) -> None:
    assert reads_plainly(cls)
    assert not reads_plainly(PlainPydantic)  # what pydantic gives a model: its __getattr__ hook
    # and, for a PlainReads model, its class's own attributes (Model.built, Model.model_validate)
    assert class_reads_plainly(cls) is issubclass(cls, PlainReads)
    assert not class_reads_plainly(PlainPydantic)  # pydantic's metaclass has a __getattr__ too


def test_a_model_reads_as_pydantic_reads_it() -> None:
    ours, theirs = Reading(name="a", size=2), PlainPydantic(name="a", size=2)
    assert (ours.name, ours.size, ours.label) == ("a", 2, "a:2")
    with pytest.raises(AttributeError) as mine:
        ours.missing  # type: ignore[attr-defined]  # noqa: B018 - the read is the test
    with pytest.raises(AttributeError) as pydantics:
        theirs.missing  # type: ignore[attr-defined]  # noqa: B018
    assert str(mine.value).replace("Reading", "X") == str(pydantics.value).replace("PlainPydantic", "X")
    assert not hasattr(ours, "missing")
    assert getattr(ours, "missing", 5) == 5
    assert ours.get("size") == 2
    assert ours.get("missing", 7) == 7
    with pytest.raises(KeyError):
        ours["missing"]
    assert pickle.loads(pickle.dumps(ours)) == ours
    assert ours.model_copy(update={"size": 3}).size == 3


def test_an_envelope_reads_its_fields_and_properties() -> None:
    cid = uuid.uuid4()
    envelope = OnexEnvelopeV1(event_type="X", source_node_id="n", correlation_id=cid, payload={"a": 1})
    assert envelope.key == str(cid)
    assert envelope.payload == {"a": 1}
    assert OnexEnvelopeV1.from_json(envelope.to_json()) == envelope


def test_a_model_with_private_attributes_or_extra_fields_keeps_pydantics_lookup() -> None:
    class Private(PlainReads):
        name: str
        _secret: int = PrivateAttr(default=3)

    class Extra(PlainReads):
        model_config = ConfigDict(extra="allow")
        name: str

    assert not reads_plainly(Private)
    assert not reads_plainly(Extra)
    assert not reads_plainly(Node.OpenConfig)  # a node's config without a model: any keys
    assert Private(name="a")._secret == 3
    assert Extra(name="a", colour="red").colour == "red"  # type: ignore[attr-defined]


def test_a_models_own_getattr_is_kept() -> None:
    class Defaulting(PlainReads):
        name: str

        def __getattr__(self, item: str) -> Any:
            return f"no {item}"

    assert not reads_plainly(Defaulting)
    assert Defaulting(name="a").colour == "no colour"


def test_a_getattr_assigned_later_is_honoured() -> None:
    class Later(PlainReads):
        name: str

    assert reads_plainly(Later)
    Later.__getattr__ = lambda self, item: 42  # type: ignore[attr-defined]
    assert not reads_plainly(Later)  # CPython sets the slot again itself
    assert Later(name="a").anything == 42  # type: ignore[attr-defined]


def test_a_model_class_reads_its_attributes_as_pydantics_class_reads_them() -> None:
    ours, theirs = Reading, PlainPydantic
    assert ours.model_fields.keys() == theirs.model_fields.keys() == {"name", "size"}
    assert ours.model_validate({"name": "a"}) == Reading(name="a")
    assert ours.__pydantic_serializer__.to_json(Reading(name="a")) == b'{"name":"a","size":0}'
    assert ours.built(name="b", size=1).label == "b:1"
    assert isinstance(ours.label, property)
    assert not hasattr(ours, "missing")
    assert getattr(ours, "missing", 5) == 5
    with pytest.raises(AttributeError, match="missing"):
        ours.missing  # noqa: B018 - the read is the test
    with pytest.raises(AttributeError, match="missing"):
        theirs.missing  # noqa: B018


def test_a_model_class_with_private_attributes_keeps_pydantics_class_lookup() -> None:
    class Private(PlainReads):
        name: str
        _secret: int = PrivateAttr(default=3)

    class Public(PlainReads):
        name: str

    assert not class_reads_plainly(Private)
    # pydantic's metaclass finds the private attribute on the class
    assert Private._secret.default == 3  # type: ignore[attr-defined]
    assert Private(name="a")._secret == 3
    assert class_reads_plainly(Public)


def test_a_metaclass_of_ones_own_keeps_its_getattr() -> None:
    class Meta(type(PlainReads)):  # type: ignore[misc]
        def __getattr__(cls, item: str) -> Any:
            if item.startswith("__"):
                raise AttributeError(item)
            return f"no {item}"

    class Own(PlainReads, metaclass=Meta):
        name: str

    assert not class_reads_plainly(Own)
    assert Own.colour == "no colour"
