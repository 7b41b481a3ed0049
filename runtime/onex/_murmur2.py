"""Kafka's default partitioner hash in pure Python, without aiokafka's per-byte loop (``KafkaBus`` picks a record's
partition with it, as the Java client and aiokafka would)."""

from __future__ import annotations

import functools
import struct


@functools.lru_cache(maxsize=4_096)  # a workflow's events share its key
def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of ``key``, masked to 31 bits: what the Java client and aiokafka's default partitioner take
    modulo the partition count. Four bytes at a time through ``struct`` (aiokafka's loops byte by byte: 4 us for a
    UUID key)."""
    m = 0x5BD1E995
    length = len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    words = length >> 2
    for k in struct.unpack_from(f"<{words}I", key):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = words << 2
    extra = length & 3
    if extra == 3:
        h ^= key[tail + 2] << 16
    if extra >= 2:
        h ^= key[tail + 1] << 8
    if extra >= 1:
        h ^= key[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h & 0x7FFFFFFF
