"""bench/decode.py's records: one stamp's envelopes of every event it reads, kept from a real in-process run."""

from __future__ import annotations

from pathlib import Path

import pytest
from onex.envelope import typed_reader

from bench.decode import READS, one_stamp

pytestmark = pytest.mark.anyio


async def test_one_stamp_keeps_a_record_of_every_event_the_benchmark_reads(tmp_path: Path) -> None:
    # The nodes publish with ``publish_many``: a bus that kept only what ``publish`` saw missed the command.
    kept, codecs = await one_stamp(str(tmp_path))
    assert kept.keys() >= READS.keys()
    for event, codec in codecs.items():
        assert codec.model is not None
        assert type(typed_reader(event, codec.model)(kept[event].to_json()).payload) is codec.model
