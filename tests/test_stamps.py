"""Stamps: exact round trips, every comment syntax, sidecars, atomic writes and per-file failures."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from blake3 import blake3
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from onex import stamps
from onex.exceptions import StampError
from onex.filetypes import MISPLACED
from onex.stamps import (
    Stamp,
    find_stamp,
    hash_bytes,
    hash_file,
    parse_sidecar,
    render_sidecar,
    sidecar_path,
    stamp_bytes,
    stamp_file,
    strip_stamp,
    verify_bytes,
    verify_file,
)

NOW = datetime(2025, 8, 30, 20, 30, tzinfo=UTC)
LATER = datetime(2025, 9, 1, 8, 0, tzinfo=UTC)
UID = "56bbeb2e-89f8-4bde-a006-09a645eb73e0"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"

# File name -> the lines that may legitimately come first in such a file, and must stay first.
PREFIXES: dict[str, list[bytes]] = {
    "x.py": [
        b"#!/usr/bin/env python3\n",
        b"# -*- coding: utf-8 -*-\n",
        b"#!/usr/bin/python\n# vim: set fileencoding=utf-8 :\n",
        b"# a comment\n# coding=utf-8\n",
        b"#!/usr/bin/python",  # the whole file, no final newline
    ],
    "x.sh": [b"#!/bin/sh\n", b"#!/bin/sh"],
    "x.yaml": [b"%YAML 1.2\n---\n"],
    "x.toml": [b"[tool]\n"],
    "x.txt": [b"requirements\n"],
    "Makefile": [b"all:\n"],
    "Dockerfile": [b"# syntax=docker/dockerfile:1\n# escape=`\n", b"# syntax=docker/dockerfile:1"],
    "x.md": [b"---\ntitle: T\n---\n", b"---\ntitle: T\n---"],
    "x.html": [b"<!DOCTYPE html>\n"],
    "x.xml": [b'<?xml version="1.0" encoding="UTF-8"?>\n', b'<?xml version="1.0"?>', b'<?xml version="1.0"?><r/>'],
    "x.svg": [b'<?xml version="1.0"?>\n<svg/>'],
    "x.js": [b"#!/usr/bin/env node\n", b"'use strict';\n"],
    "x.ts": [b'/// <reference types="node" />\n'],
    "x.go": [b"// Package x does y.\npackage x\n", b"//go:build linux\n\n"],
    "x.rs": [b"#![allow(dead_code)]\n"],
    "x.c": [b"#include <stdio.h>\n"],
    "x.cpp": [b"#pragma once\n"],
    "x.h": [b"#ifndef X_H\n"],
    "x.java": [b"package x;\n"],
    "x.sql": [b"SELECT 1;\n"],
    "x.css": [b'@charset "UTF-8";\n', b'@charset "UTF-8";'],
    "x.lua": [b"#!/usr/bin/env lua\n"],
}

body_lines = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40),
    st.sampled_from(["", "x = 1", "# comment", "---", "-->", "*/", "\r", "  ", "ONEX:", "# ONEX:uid=x", "é ☃ 𝄞"]),
)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, bytes]:
    """A text file of some stamped type: optional BOM, optional prefix, a body, LF or CRLF line endings."""
    name = draw(st.sampled_from(sorted(PREFIXES)))
    prefix = draw(st.sampled_from([b"", *PREFIXES[name]]))
    body = "\n".join(draw(st.lists(body_lines, max_size=8))).encode("utf-8")
    if draw(st.booleans()) and body:
        body += b"\n"
    content = prefix + body if prefix.endswith(b"\n") or not body else prefix + b"\n" + body
    if draw(st.booleans()):
        content = content.replace(b"\n", b"\r\n")
    if draw(st.booleans()):
        content = b"\xef\xbb\xbf" + content
    return name, content


def stamped(content: bytes, name: str, *, rich: bool = False, now: datetime = NOW) -> bytes:
    out, stamp = stamp_bytes(content, file_name=name, rich=rich, now=now, uid=UID)
    assert stamp.kind == ("rich" if rich else "lightweight")
    return out


# --- properties -----------------------------------------------------------------------------------------------


@given(documents(), st.booleans())
def test_strip_gives_back_the_exact_original(doc: tuple[str, bytes], rich: bool) -> None:
    name, content = doc
    out = stamped(content, name, rich=rich)
    assert out != content
    assert strip_stamp(out, file_name=name) == content
    assert strip_stamp(content, file_name=name) == content


@given(documents(), st.booleans())
def test_stamped_content_verifies_and_hashes_as_the_original(doc: tuple[str, bytes], rich: bool) -> None:
    name, content = doc
    out = stamped(content, name, rich=rich)
    result = verify_bytes(out, file_name=name)
    assert result.status == "valid"
    assert result.expected == result.actual == blake3(content).hexdigest()
    assert verify_bytes(content, file_name=name).status == "unstamped"


@given(documents(), st.booleans())
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_stamp_content_is_stamp_bytes_with_the_file_type_stamp_file_reports(
    tmp_path: Path, doc: tuple[str, bytes], rich: bool
) -> None:
    name, content = doc
    made = stamps.stamp_content(content, file_name=name, rich=rich, now=NOW, uid=UID)
    assert (made.content, made.stamp) == stamp_bytes(content, file_name=name, rich=rich, now=NOW, uid=UID)
    path = tmp_path / uuid.uuid4().hex / name
    path.parent.mkdir()
    path.write_bytes(content)
    assert made.file_type == stamps.stamp_file(path, rich=rich, dry_run=True).file_type


@given(documents(), st.booleans())
def test_restamping_unchanged_content_is_byte_identical(doc: tuple[str, bytes], rich: bool) -> None:
    name, content = doc
    out = stamped(content, name, rich=rich)
    again, stamp = stamp_bytes(out, file_name=name, rich=rich, now=LATER)
    assert again == out
    assert stamp == find_stamp(out, file_name=name)
    assert stamp.ts == NOW.isoformat(timespec="microseconds")


@given(documents(), st.booleans(), st.data())
def test_a_one_byte_change_in_the_body_is_reported_as_modified(
    doc: tuple[str, bytes], rich: bool, data: st.DataObject
) -> None:
    name, content = doc
    out = stamped(content, name, rich=rich)
    layout = stamps._layout_of(out, name)
    assume(layout.stamp_end < len(out))  # a file that is all prefix has no body to change
    i = data.draw(st.integers(layout.stamp_end, len(out) - 1))
    changed = out[:i] + (b"~" if out[i : i + 1] != b"~" else b"!") + out[i + 1 :]
    result = verify_bytes(changed, file_name=name)
    assert result.status == "modified"
    assert result.expected == blake3(content).hexdigest() != result.actual


def one_byte_changed(content: bytes, i: int) -> bytes:
    return content[:i] + (b"~" if content[i : i + 1] != b"~" else b"!") + content[i + 1 :]


@given(documents(), st.booleans(), st.data())
def test_a_one_byte_change_anywhere_but_the_stamp_is_never_valid(
    doc: tuple[str, bytes], rich: bool, data: st.DataObject
) -> None:
    name, content = doc
    out = stamped(content, name, rich=rich)
    layout = stamps._layout_of(out, name)
    # Before the stamp (BOM, shebang, encoding line, front matter, declaration) or after it.
    outside = [*range(layout.keep_end), *range(layout.stamp_end, len(out))]
    assume(outside)
    changed = one_byte_changed(out, data.draw(st.sampled_from(outside)))
    result = verify_bytes(changed, file_name=name)
    assert result.status in ("modified", "unstamped")
    if find_stamp(changed, file_name=name) is not None:  # the stamp is still where it belongs: compared, and fails
        assert result.status == "modified"
        assert result.expected == blake3(content).hexdigest() != result.actual


@example(doc=("x.py", b"#!/usr/bin/env python3\nprint(1)\n"), rich=False, n=0)  # '#!' -> '~!'
@given(documents(), st.booleans(), st.integers(min_value=0))
def test_a_one_byte_change_in_the_preserved_prefix_is_reported_as_modified(
    doc: tuple[str, bytes], rich: bool, n: int
) -> None:
    name, content = doc
    out = stamped(content, name, rich=rich)
    layout = stamps._layout_of(out, name)
    assume(layout.keep_end > 0)  # a file with nothing that must stay first
    changed = one_byte_changed(out, n % layout.keep_end)
    result = verify_bytes(changed, file_name=name)
    assert result.status == "modified", changed[: layout.stamp_end]


@given(documents(), st.booleans())
def test_restamping_changed_content_replaces_the_stamp(doc: tuple[str, bytes], rich: bool) -> None:
    name, content = doc
    out = stamped(content, name, rich=rich)
    # A stamp at the very end (after a prefix with no final newline) has no newline: keep it a whole line.
    edited = out + (b"" if out.endswith(b"\n") else b"\n") + b"more\n"
    again, stamp = stamp_bytes(edited, file_name=name, rich=rich, now=LATER)
    assert stamp.uid == UID
    assert stamp.hash == blake3(strip_stamp(edited, file_name=name)).hexdigest()
    assert stamp.ts == LATER.isoformat(timespec="microseconds")
    assert strip_stamp(again, file_name=name) == strip_stamp(edited, file_name=name)
    assert verify_bytes(again, file_name=name).status == "valid"
    if rich:
        assert stamp.fields["created_at"] == NOW.isoformat(timespec="microseconds")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.booleans(), st.booleans())
def test_stamp_file_matches_stamp_bytes_on_disk(doc: tuple[str, bytes], rich: bool, in_memory: bool) -> None:
    name, content = doc
    with tempfile.TemporaryDirectory() as tmp, limit(None if in_memory else 0):
        path = Path(tmp, name)
        path.write_bytes(content)
        result = stamp_file(path, rich=rich)
        assert result.status == "stamped", result.error
        out = path.read_bytes()
        assert strip_stamp(out, file_name=name) == content
        assert result.stamp is not None
        assert result.stamp == find_stamp(out, file_name=name)
        assert hash_file(path) == blake3(content).hexdigest() == result.stamp.hash
        assert verify_file(path).status == "valid"
        assert stamp_file(path, rich=rich).status == "unchanged"
        assert path.read_bytes() == out
        assert os.listdir(tmp) == [name]  # no temporary file left behind


class limit:
    """Set ``stamps.IN_MEMORY_LIMIT`` for a block, to drive the streaming path with small files."""

    def __init__(self, value: int | None) -> None:
        self.value = value
        self.saved = stamps.IN_MEMORY_LIMIT

    def __enter__(self) -> None:
        if self.value is not None:
            stamps.IN_MEMORY_LIMIT = self.value

    def __exit__(self, *exc: object) -> None:
        stamps.IN_MEMORY_LIMIT = self.saved


# --- formats --------------------------------------------------------------------------------------------------

LINE_FORMS = {
    "x.py": (b"# ONEX:", b""),
    "x.sh": (b"# ONEX:", b""),
    "x.yaml": (b"# ONEX:", b""),
    "x.yml": (b"# ONEX:", b""),
    "x.toml": (b"# ONEX:", b""),
    "x.txt": (b"# ONEX:", b""),
    "Makefile": (b"# ONEX:", b""),
    "Dockerfile": (b"# ONEX:", b""),
    "x.md": (b"<!-- ONEX:", b" -->"),
    "x.html": (b"<!-- ONEX:", b" -->"),
    "x.xml": (b"<!-- ONEX:", b" -->"),
    "x.svg": (b"<!-- ONEX:", b" -->"),
    "x.js": (b"// ONEX:", b""),
    "x.ts": (b"// ONEX:", b""),
    "x.tsx": (b"// ONEX:", b""),
    "x.go": (b"// ONEX:", b""),
    "x.rs": (b"// ONEX:", b""),
    "x.c": (b"// ONEX:", b""),
    "x.h": (b"// ONEX:", b""),
    "x.cpp": (b"// ONEX:", b""),
    "x.java": (b"// ONEX:", b""),
    "x.sql": (b"-- ONEX:", b""),
    "x.lua": (b"-- ONEX:", b""),
    "x.css": (b"/* ONEX:", b" */"),
}


@pytest.mark.parametrize(("name", "form"), sorted(LINE_FORMS.items()))
def test_every_comment_syntax_gets_a_lightweight_line(name: str, form: tuple[bytes, bytes]) -> None:
    out, stamp = stamp_bytes(b"body\n", file_name=name, now=NOW, uid=UID)
    opener, closer = form
    digest = blake3(b"body\n").hexdigest()
    line = opener + f"uid={UID},hash={digest},ts=2025-08-30T20:30:00.000000+00:00".encode() + closer
    blank = b"\n" if name.endswith(".go") else b""  # Go: never glued to a package doc comment
    assert out == line + b"\n" + blank + b"body\n"
    assert stamp == Stamp(UID, digest, "2025-08-30T20:30:00.000000+00:00", "lightweight", {})


@pytest.mark.parametrize("name", sorted(LINE_FORMS))
def test_every_comment_syntax_gets_a_rich_block_that_parses_as_yaml(name: str) -> None:
    out, stamp = stamp_bytes(b"body\n", file_name=name, rich=True, now=NOW, uid=UID, namespace="ns", author="Ann")
    opener, closer = LINE_FORMS[name]
    comment = opener.removesuffix(b"ONEX:")
    lines = out.split(b"\n")
    assert lines[0] == comment + b"=== OmniNode:Metadata ==="
    end = lines.index((comment if not closer else b"") + b"=== /OmniNode:Metadata ===" + closer)
    block = b"\n".join(line.removeprefix(comment if not closer else b"") for line in lines[1:end])
    assert yaml.safe_load(block) == stamp.fields
    assert sorted(stamp.fields) == [
        "author",
        "created_at",
        "file_type",
        "hash",
        "last_modified_at",
        "metadata_version",
        "name",
        "namespace",
        "protocol_version",
        "size",
        "uuid",
    ]
    keys = [line.split(b":", 1)[0].removeprefix(comment if not closer else b"") for line in lines[1:end]]
    assert keys == sorted(keys)
    assert stamp.fields["size"] == 5
    assert stamp.fields["name"] == name
    assert stamp.fields["hash"] == blake3(b"body\n").hexdigest()


def test_the_rich_block_matches_the_reference_layout() -> None:
    out, _ = stamp_bytes(b"x = 1\n", file_name="severity_level.py", rich=True, now=NOW, uid=UID, author="OmniNode Team")
    digest = blake3(b"x = 1\n").hexdigest()
    assert out.decode() == (
        "# === OmniNode:Metadata ===\n"
        "# author: OmniNode Team\n"
        "# created_at: '2025-08-30T20:30:00.000000+00:00'\n"
        "# file_type: code\n"
        f"# hash: {digest}\n"
        "# last_modified_at: '2025-08-30T20:30:00.000000+00:00'\n"
        "# metadata_version: 0.1.0\n"
        "# name: severity_level.py\n"
        "# namespace: onex.default\n"
        "# protocol_version: 0.1.0\n"
        "# size: 6\n"
        f"# uuid: {UID}\n"
        "# === /OmniNode:Metadata ===\n"
        "x = 1\n"
    )


@pytest.mark.parametrize(("name", "bad"), [("x.md", "--"), ("x.html", "a-->b"), ("x.css", "*/"), ("x.xml", "-")])
def test_block_comments_are_never_closed_early_by_a_value(name: str, bad: str) -> None:
    out, stamp = stamp_bytes(b"<p/>\n", file_name=name, rich=True, author=bad, namespace=f"n{bad}s", now=NOW)
    block = out[out.index(b"\n") : out.index(b"=== /OmniNode:Metadata ===")]
    assert (b"*/" if name == "x.css" else b"--") not in block
    assert stamp.fields["author"] == bad
    assert find_stamp(out, file_name=name) == stamp


def test_values_needing_quotes_round_trip() -> None:
    for value in ["yes", "1234", "a: b", "#x", "it's", "line\nbreak", "tab\t", "é", "𝄞", " pad ", "", "null"]:
        out, stamp = stamp_bytes(b"x\n", file_name="x.py", rich=True, author=value, now=NOW)
        assert stamp.fields["author"] == value
        assert find_stamp(out, file_name="x.py") == stamp, value
        assert out.isascii()


def test_crlf_files_get_a_crlf_stamp() -> None:
    out = stamped(b"#!/bin/sh\r\necho hi\r\n", "x.sh")
    first, second, rest = out.split(b"\r\n", 2)
    assert first == b"#!/bin/sh"
    assert second.startswith(b"# ONEX:uid=")
    assert b"\n" not in second
    assert rest == b"echo hi\r\n"
    rich = stamped(b"a\r\nb\r\n", "x.py", rich=True)
    assert rich.count(b"\r\n") == rich.count(b"\n")


def test_bom_shebang_and_encoding_line_stay_first() -> None:
    content = b"\xef\xbb\xbf#!/usr/bin/env python\n# -*- coding: utf-8 -*-\nprint(1)\n"
    out = stamped(content, "x.py")
    assert out.startswith(b"\xef\xbb\xbf#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n# ONEX:uid=")


def test_extensionless_scripts_take_the_interpreters_syntax(tmp_path: Path) -> None:
    assert stamped(b"#!/usr/bin/env node\nx()\n", "tool").split(b"\n")[1].startswith(b"// ONEX:")
    assert stamped(b"#!/usr/bin/env -S python3 -u\nx()\n", "tool").split(b"\n")[1].startswith(b"# ONEX:")
    _, stamp = stamp_bytes(b"#!/usr/bin/weird\nx\n", file_name="tool")
    assert stamp.kind == "sidecar"


def test_lightweight_stamps_with_extra_pairs_are_recognised_and_kept() -> None:
    digest = blake3(b"x\n").hexdigest()
    content = f"# ONEX:uid={UID},hash={'0' * 64},ts=2025-01-01T00:00:00Z,author=me,v=1\nx\n".encode()
    found = find_stamp(content, file_name="x.py")
    assert found is not None
    assert found.fields == {"author": "me", "v": "1"}
    out, stamp = stamp_bytes(content, file_name="x.py", now=NOW)
    assert out == f"# ONEX:uid={UID},hash={digest},ts=2025-08-30T20:30:00.000000+00:00,author=me,v=1\nx\n".encode()
    assert stamp.uid == UID


def test_switching_kind_or_options_restamps_and_keeps_the_uid() -> None:
    light = stamped(b"x\n", "x.py")
    rich, stamp = stamp_bytes(light, file_name="x.py", rich=True, now=LATER)
    assert stamp.uid == UID
    assert stamp.kind == "rich"
    assert stamp.fields["created_at"] == NOW.isoformat(timespec="microseconds")
    assert strip_stamp(rich, file_name="x.py") == b"x\n"
    renamed, other = stamp_bytes(rich, file_name="x.py", rich=True, namespace="other", now=LATER)
    assert renamed != rich
    assert other.fields["namespace"] == "other"
    assert other.uid == UID
    back, again = stamp_bytes(rich, file_name="x.py", now=LATER)
    assert again.kind == "lightweight"
    assert again.uid == UID
    assert strip_stamp(back, file_name="x.py") == b"x\n"


def test_extra_keys_of_a_rich_block_survive_a_restamp() -> None:
    out = stamped(b"x\n", "x.py", rich=True)
    out = out.replace(b"# author:", b"# lifecycle: active\n# tools: [a, b]\n# author:")
    found = find_stamp(out, file_name="x.py")
    assert found is not None
    assert found.fields["lifecycle"] == "active"
    again, stamp = stamp_bytes(out + b"y\n", file_name="x.py", rich=True, now=LATER)
    assert stamp.fields["lifecycle"] == "active"
    assert stamp.fields["tools"] == ["a", "b"]
    assert find_stamp(again, file_name="x.py") == stamp


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(
            b"# a: &a [x, x, x, x, x, x, x, x, x]\n"
            + b"".join(
                f"# {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n".encode()
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            id="alias-bomb",
        ),
        pytest.param(b"# loop: &l [*l]\n", id="alias-cycle"),
        pytest.param(b"# when: 2025-13-45\n", id="impossible-date"),
        pytest.param(b"# deep: " + b"[" * 3000 + b"]" * 3000 + b"\n", id="deep-nesting"),
        pytest.param(b"# hash: !!binary x\n", id="bad-tag"),
    ],
)
def test_hostile_yaml_in_a_block_is_not_a_stamp(lines: bytes) -> None:
    block = stamped(b"x\n", "x.py", rich=True).replace(b"# author:", lines + b"# author:")
    assert find_stamp(block, file_name="x.py") is None
    assert strip_stamp(block, file_name="x.py") == block
    out, stamp = stamp_bytes(block, file_name="x.py", rich=True)
    assert strip_stamp(out, file_name="x.py") == block
    assert find_stamp(out, file_name="x.py") == stamp


def test_extra_values_keep_their_yaml_types() -> None:
    extras = b"# big: 1.0e+20\n# flag: true\n# none: null\n# ratio: 0.5\n# tags: {a: [1, 'two words']}\n"
    block = stamped(b"x\n", "x.py", rich=True).replace(b"# author:", extras + b"# author:")
    _, stamp = stamp_bytes(block + b"y\n", file_name="x.py", rich=True, now=LATER)
    assert {k: stamp.fields[k] for k in ("big", "flag", "none", "ratio", "tags")} == {
        "big": 1e20,
        "flag": True,
        "none": None,
        "ratio": 0.5,
        "tags": {"a": [1, "two words"]},
    }
    out, _ = stamp_bytes(block + b"y\n", file_name="x.py", rich=True, now=LATER)
    assert find_stamp(out, file_name="x.py") == stamp


def test_a_stamp_is_recognised_only_at_its_place_and_only_whole() -> None:
    real = stamped(b"x\n", "x.py")
    assert find_stamp(b"y = 2\n" + real, file_name="x.py") is None  # not after other content
    assert find_stamp(real.replace(b",hash=", b",hsh="), file_name="x.py") is None
    assert find_stamp(real.replace(b",ts=", b",tz="), file_name="x.py") is not None  # ts is optional: an extra pair
    rich = stamped(b"x\n", "x.py", rich=True)
    unclosed = rich.replace(b"# === /OmniNode:Metadata ===\n", b"")
    assert find_stamp(unclosed, file_name="x.py") is None
    assert strip_stamp(unclosed, file_name="x.py") == unclosed
    broken = rich.replace(b"# hash: ", b"hash: ")  # a line without the comment marker
    assert find_stamp(broken, file_name="x.py") is None


def test_empty_files_are_stamped() -> None:
    out = stamped(b"", "x.py")
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1
    assert verify_bytes(out, file_name="x.py").actual == blake3(b"").hexdigest()
    assert strip_stamp(out, file_name="x.py") == b""


def test_stamp_bytes_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="timezone"):
        stamp_bytes(b"x", file_name="x.py", now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="UUID"):
        stamp_bytes(b"x", file_name="x.py", uid="a,b")


def test_refusals_raise_stamp_errors_naming_the_file() -> None:
    # Not UTF-8 and declaring nothing: a sidecar, never a refusal (tests/test_filetypes.py has the encodings).
    assert stamp_bytes(b"x = '\xe9'\n", file_name="x.py")[1].kind == "sidecar"
    with pytest.raises(StampError, match="longer than"):
        stamp_bytes(b"x\n", file_name="x.py", rich=True, namespace="n" * 9000)
    with pytest.raises(StampError, match="encoding declaration"):
        stamp_bytes(b"x\n", file_name="x.py", rich=True, author="coding: latin-1")
    with pytest.raises(StampError, match="must stay first"):
        stamp_bytes(b"#!" + b"x" * 10_000 + b"\n", file_name="x.sh")
    with pytest.raises(StampError, match="must stay first"):
        stamp_bytes(b"---\n" + b"a: b\n" * 20_000 + b"---\n", file_name="x.md")


# --- sidecars -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "file_type"),
    [
        ("data.json", b'{"a": 1}\n', "data"),
        ("logo.png", PNG, "image"),
        ("archive.tar.gz", b"\x1f\x8b\x08\x00" + bytes(64), "archive"),
        ("notes.unknown", b"text of no known type\n", "text"),
        ("fake.py", PNG, "image"),  # binary content with a text extension is never modified
        ("nul.py", b"x = 1\x00\n", "binary"),
        ("empty.json", b"", "data"),
    ],
)
def test_files_without_comments_get_a_sidecar(tmp_path: Path, name: str, content: bytes, file_type: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    out, stamp = stamp_bytes(content, file_name=name)
    assert out is content
    assert stamp.kind == "sidecar"
    result = stamp_file(path, namespace="ns")
    assert result.status == "stamped", result.error
    assert path.read_bytes() == content
    assert result.file_type == file_type
    assert result.size == len(content)
    side = sidecar_path(path)
    assert side == tmp_path / f"{name}.onex.yaml"
    recorded = parse_sidecar(side.read_bytes())
    assert recorded == result.stamp
    assert recorded.hash == hash_file(path) == blake3(content).hexdigest()
    assert recorded.fields["namespace"] == "ns"
    assert recorded.fields["file_type"] == file_type
    assert verify_file(path).status == "valid"
    before = side.read_bytes(), side.stat().st_mtime_ns
    assert stamp_file(path, namespace="ns").status == "unchanged"
    assert (side.read_bytes(), side.stat().st_mtime_ns) == before
    path.write_bytes(content + b"!")
    assert verify_file(path).status == "modified"
    again = stamp_file(path, namespace="ns")
    assert again.status == "stamped"
    assert again.stamp is not None
    assert again.stamp.uid == recorded.uid
    assert verify_file(path).status == "valid"


def test_sidecars_in_memory() -> None:
    _, stamp = stamp_bytes(PNG, file_name="a.png", now=NOW, uid=UID)
    side = render_sidecar(stamp)
    assert verify_bytes(PNG, file_name="a.png", sidecar=side).status == "valid"
    assert verify_bytes(PNG + b"x", file_name="a.png", sidecar=side).status == "modified"
    assert verify_bytes(PNG, file_name="a.png").status == "unstamped"
    assert verify_bytes(PNG, file_name="a.png", sidecar=b"[]").status == "error"
    same, again = stamp_bytes(PNG, file_name="a.png", sidecar=side, now=LATER)
    assert same is PNG
    assert again == stamp


def test_a_foreign_file_where_the_sidecar_goes_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "a.json.onex.yaml").write_text("mine: true\n")
    result = stamp_file(tmp_path / "a.json")
    assert result.status == "failed"
    assert result.error is not None
    assert "not an onex sidecar" in result.error
    assert (tmp_path / "a.json.onex.yaml").read_text() == "mine: true\n"
    assert verify_file(tmp_path / "a.json").status == "error"


def test_sidecars_and_temp_files_are_never_stamped(tmp_path: Path) -> None:
    side = tmp_path / "a.json.onex.yaml"
    side.write_text("x: 1\n")
    result = stamp_file(side)
    assert result.status == "skipped"
    assert side.read_text() == "x: 1\n"


# --- files on disk --------------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "run.sh"
    path.write_bytes(b"#!/bin/sh\necho hi\n")
    path.chmod(0o751)
    inode = path.stat().st_ino
    result = stamp_file(path)
    assert result.status == "stamped"
    assert stat.S_IMODE(path.stat().st_mode) == 0o751
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert sorted(os.listdir(tmp_path)) == ["run.sh"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a file away")
@pytest.mark.parametrize("mode", [0o4755, 0o2775, 0o6750])
def test_setuid_and_setgid_bits_of_another_users_file_survive_a_stamp(tmp_path: Path, mode: int) -> None:
    # The kernel clears S_ISUID and S_ISGID on a chown, root's included: the mode must be set after the owner.
    path = tmp_path / "tool.sh"
    path.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chown(path, 54321, 54321)
    path.chmod(mode)
    assert stamp_file(path).status == "stamped"
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 54321, 54321)


# A stamp the O.N.E. v0.1 bridge wrote on line 1, whatever came first in the file.
BRIDGE_LINE = f"# ONEX:uid={UID},hash={'a' * 64},ts=2025-01-01T00:00:00Z,author=bridge,v=1\n".encode()


@pytest.mark.parametrize(
    "edit",
    [
        lambda stamped: b"import os\n" + stamped,  # a line added above the stamp
        lambda stamped: b"\n" + stamped,  # a blank line
        lambda _: BRIDGE_LINE + b"# -*- coding: utf-8 -*-\nx = 1\n",  # the bridge's stamp above a coding line
    ],
    ids=["line-above", "blank-above", "bridge-above-coding"],
)
def test_a_stamp_no_longer_where_it_belongs_is_modified_and_never_stamped_twice(tmp_path: Path, edit: Any) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"x = 1\n")
    first = stamp_file(path).stamp
    assert first is not None
    path.write_bytes(edit(path.read_bytes()))
    edited = path.read_bytes()
    expected = first.hash if edited.count(b"ONEX:") == 1 and not edited.startswith(BRIDGE_LINE) else "a" * 64
    result = verify_file(path)
    assert (result.status, result.expected) == ("modified", expected)
    assert verify_bytes(edited, file_name="a.py") == dataclasses.replace(result, path="a.py")
    again = stamp_file(path)
    assert (again.status, again.error) == ("failed", f"{path}: {MISPLACED}")
    assert path.read_bytes() == edited  # no second stamp, no new uid
    with pytest.raises(StampError, match="not where it belongs"):
        stamp_bytes(edited, file_name="a.py")


@pytest.mark.parametrize(
    ("name", "front"),
    [
        ("post.md", b"+++\ntitle = 'x'\n+++\n"),  # Hugo's TOML front matter
        ("index.html", b"---\nlayout: default\n---\n"),  # Jekyll reads it on line 1 of any page it renders
        ("feed.xml", b"---\nlayout: null\n---\n"),
        ("main.scss", b"---\n---\n"),  # Jekyll's marker for a stylesheet to compile
        ("site.css", b"---\r\ntitle: x\r\n...\r\n"),
    ],
)
def test_a_stamp_goes_after_front_matter_in_every_file_a_site_generator_renders(name: str, front: bytes) -> None:
    content = front + b"body {}\n"
    for rich in (False, True):
        out, stamp = stamp_bytes(content, file_name=name, rich=rich, now=NOW, uid=UID)
        assert stamp.kind == ("rich" if rich else "lightweight")
        assert out.startswith(front)
        assert find_stamp(out, file_name=name) == stamp
        assert verify_bytes(out, file_name=name).status == "valid"
        assert strip_stamp(out, file_name=name) == content
        assert stamp_bytes(out, file_name=name, rich=rich)[0] is out


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"x\n")
    result = stamp_file(path, dry_run=True)
    assert result.status == "stamped"
    assert result.stamp is not None
    assert path.read_bytes() == b"x\n"
    (tmp_path / "b.json").write_text("{}")
    assert stamp_file(tmp_path / "b.json", dry_run=True).status == "stamped"
    assert not sidecar_path(tmp_path / "b.json").exists()


def test_a_symlink_is_stamped_through_and_stays_a_link(tmp_path: Path) -> None:
    target = tmp_path / "real.py"
    target.write_bytes(b"x\n")
    link = tmp_path / "link.py"
    link.symlink_to(target)
    result = stamp_file(link)
    assert result.status == "stamped"
    assert result.path == str(link)
    assert link.is_symlink()
    assert find_stamp(target.read_bytes(), file_name="real.py") is not None


@pytest.mark.parametrize(
    "interfere",
    [
        pytest.param(lambda p: p.write_bytes(p.read_bytes() + b"edit\n"), id="appended"),
        pytest.param(lambda p: os.utime(p, ns=(1, 1)), id="touched"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()), id="rewritten-same-bytes"),
        pytest.param(lambda p: replace_with_copy(p), id="replaced-by-an-editor"),
        pytest.param(lambda p: p.unlink(), id="deleted"),
    ],
)
@pytest.mark.parametrize("name", ["a.py", "a.json"])
def test_a_file_that_changes_while_being_stamped_is_left_alone(tmp_path: Path, interfere: Any, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"{}\n")
    seen: list[bytes] = []

    def hook(p: Path) -> None:
        interfere(p)
        seen.append(p.read_bytes() if p.exists() else b"<gone>")

    result = stamp_file(path, _before_replace=hook)
    assert result.status == "failed"
    assert result.error is not None
    assert "changed while stamping" in result.error
    assert str(path) in result.error
    assert (path.read_bytes() if path.exists() else b"<gone>") == seen[0]
    assert not sidecar_path(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ([name] if path.exists() else [])


def replace_with_copy(path: Path) -> None:
    copy = path.with_suffix(".new")
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.replace(copy, path)


def test_large_files_stream_with_flat_memory(tmp_path: Path) -> None:
    size = 200 * 1024 * 1024
    path = tmp_path / "big.bin"
    with path.open("wb") as f:  # sparse: costs no disk and reads back as zeros
        f.truncate(size)
    expected = blake3()
    zeros = bytes(1024 * 1024)
    for _ in range(size // len(zeros)):
        expected.update(zeros)
    tracemalloc.start()
    try:
        digest = hash_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == expected.hexdigest()
    assert peak < 3 * 1024 * 1024, peak


def test_large_text_files_are_stamped_by_streaming(tmp_path: Path) -> None:
    line = b"print('a fairly ordinary line of python source code')\r\n"
    content = b"#!/usr/bin/env python\r\n" + line * (300_000 // len(line))
    path = tmp_path / "big.py"
    path.write_bytes(content)
    with limit(0):
        tracemalloc.start()
        try:
            result = stamp_file(path, rich=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.status == "stamped"
        assert peak < 3 * 1024 * 1024
        out = path.read_bytes()
        assert out.startswith(b"#!/usr/bin/env python\r\n# === OmniNode:Metadata ===\r\n")
        assert strip_stamp(out, file_name="big.py") == content
        assert verify_file(path).status == "valid"
        assert stamp_file(path, rich=True).status == "unchanged"
        with path.open("r+b") as f:
            f.seek(len(out) - 3)
            f.write(b"X")
        assert verify_file(path).status == "modified"


# --- files in use, and where a stamper may write -------------------------------------------------------------

# A second process that opens a file and keeps it open, doing on request what a program using it would do.
HOLDER = """
import os, sys
fd = os.open(sys.argv[1], {"a": os.O_WRONLY | os.O_APPEND, "r": os.O_RDONLY}[sys.argv[2]])
print("open", flush=True)
for line in sys.stdin:
    if line.startswith("append "):
        os.write(fd, line[len("append "):].encode())
    print("done", flush=True)
os.close(fd)
"""


def read_line(stream: Any, timeout: float = 60.0) -> str:
    """The next line a child prints, waiting at most ``timeout`` seconds for it (never a sleep)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line from the child within {timeout} s"
    line: str = stream.readline()
    return line.strip()


@contextlib.contextmanager
def held_open(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """``path`` open in another process (``mode`` "a": for appending, "r": for reading) until the block ends."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert read_line(child.stdout) == "open"
            yield child
        finally:
            assert child.stdin is not None
            child.stdin.close()  # the holder's loop ends: it closes the file and exits
            assert child.wait(timeout=60) == 0


def tell(child: subprocess.Popen[str], command: str) -> None:
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write(command + "\n")
    child.stdin.flush()
    assert read_line(child.stdout) == "done"


@pytest.mark.parametrize("mode", ["a", "r"])
def test_a_file_open_in_another_process_is_busy_and_left_as_it_is(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "app.log.txt"
    path.write_bytes(b"first\n")
    inode = path.stat().st_ino
    with held_open(path, mode) as holder:
        result = stamp_file(path)
        assert result.status == "busy"
        assert result.stamp is None
        assert result.error == f"{path}: busy: open in another process, retry later"
        assert result.file_type == "text"
        if mode == "a":
            tell(holder, "append second")  # still writing into the very file onex looked at
    assert path.stat().st_ino == inode
    assert path.read_bytes() == (b"first\nsecond\n" if mode == "a" else b"first\n")
    assert sorted(os.listdir(tmp_path)) == ["app.log.txt"]  # no temporary file left behind
    assert stamp_file(path).status == "stamped"  # closed: the next run stamps it


def test_a_busy_file_already_stamped_is_unchanged_and_a_dry_run_needs_no_lease(tmp_path: Path) -> None:
    stamped_file = tmp_path / "done.py"
    stamped_file.write_bytes(b"x = 1\n")
    assert stamp_file(stamped_file).status == "stamped"
    fresh = tmp_path / "fresh.py"
    fresh.write_bytes(b"y = 2\n")
    with held_open(stamped_file, "r"), held_open(fresh, "a"):
        assert stamp_file(stamped_file).status == "unchanged"
        assert stamp_file(fresh, dry_run=True).status == "stamped"
        assert stamp_file(fresh).status == "busy"
    assert fresh.read_bytes() == b"y = 2\n"


def test_a_sidecar_is_written_for_a_file_open_elsewhere(tmp_path: Path) -> None:
    # The original of a sidecar type is only read, never replaced: there is nothing to take a lease for.
    path = tmp_path / "rows.json"
    path.write_bytes(b"[1]\n")
    with held_open(path, "a"):
        assert stamp_file(path).status == "stamped"
    assert path.read_bytes() == b"[1]\n"
    assert verify_file(path).status == "valid"


def test_whoever_opens_the_file_while_the_lease_is_held_keeps_the_original(tmp_path: Path) -> None:
    # The window a late opener could fall into: after the lease is taken, before the rename. The opener blocks
    # until the lease is released, so the stamper must see the break (F_GETLEASE) and not rename under it.
    path = tmp_path / "late.txt"
    path.write_bytes(b"x\n")
    woken_r, woken_w = os.pipe()
    os.set_blocking(woken_w, False)
    previous = signal.signal(signal.SIGURG, lambda *_: None)  # the lease break's signal, see stamps._take_lease
    previous_fd = signal.set_wakeup_fd(woken_w, warn_on_full_buffer=False)
    fd = os.open(path, os.O_RDONLY)
    try:
        with stamps._write_lease(fd, str(path)) as alone:
            assert alone()
            opener = subprocess.Popen(
                [sys.executable, "-c", f"open({str(path)!r}, 'a').write('late\\n')"], stdout=subprocess.DEVNULL
            )
            ready, _, _ = select.select([woken_r], [], [], 60)  # the kernel signals us when the opener arrives
            assert ready, "the opener never broke the lease"
            assert not alone()
    finally:
        os.close(fd)
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGURG, previous)
        os.close(woken_r)
        os.close(woken_w)
    assert opener.wait(timeout=60) == 0
    assert path.read_bytes() == b"x\nlate\n"


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_where_leases_are_refused_only_a_change_is_caught(tmp_path: Path) -> None:
    # Without CAP_LEASE and not the file's owner, F_SETLEASE fails with EACCES: the fallback. A file open elsewhere
    # is then stamped if it does not change meanwhile; one that changes is still left alone.
    script = (
        "import sys; from pathlib import Path; from onex.stamps import stamp_file\n"
        "quiet = stamp_file(sys.argv[1])\n"
        "moved = stamp_file(sys.argv[2], _before_replace=lambda p: p.write_bytes(p.read_bytes() + b'more\\n'))\n"
        "print(quiet.status, moved.status, moved.error)\n"
    )
    quiet, moved = tmp_path / "quiet.py", tmp_path / "moved.py"
    for path in (quiet, moved):
        path.write_bytes(b"x = 1\n")
        os.chown(path, 54321, 54321)
    with held_open(quiet, "a"):
        run = subprocess.run(
            ["setpriv", "--bounding-set=-lease", sys.executable, "-c", script, str(quiet), str(moved)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split(" ", 2)[:2] == ["stamped", "failed"], run.stdout
    assert "changed while stamping" in run.stdout
    assert verify_file(quiet).status == "valid"
    assert moved.read_bytes() == b"x = 1\nmore\n"


def test_temporary_files_carry_the_name_and_pid_of_their_writer(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"x\n")
    seen: list[str] = []
    stamp_file(path, _before_replace=lambda p: seen.extend(n for n in os.listdir(p.parent) if n != "a.py"))
    assert len(seen) == 1
    assert seen[0].startswith(f".a.py.onex-tmp.{os.getpid()}.")
    assert stamp_file(tmp_path / seen[0]).status == "skipped"  # never stamped, even when named


def test_roots_refuse_a_file_outside_them_and_a_link_leading_out(tmp_path: Path) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.py").write_bytes(b"s = 1\n")
    (inside / "ok.py").write_bytes(b"x = 1\n")
    (inside / "link.py").symlink_to(outside / "secret.py")
    roots = [str(inside)]

    assert stamp_file(inside / "ok.py", roots=roots).status == "stamped"
    for path in (outside / "secret.py", inside / "link.py", inside / ".." / "outside" / "secret.py"):
        result = stamp_file(path, roots=roots)
        assert result.status == "failed"
        assert result.error == f"{path}: refused: {outside / 'secret.py'} is outside the stamp roots ({inside})"
    assert (outside / "secret.py").read_bytes() == b"s = 1\n"
    assert sorted(os.listdir(outside)) == ["secret.py"]
    assert stamp_file(inside / "ok.py", roots=[str(inside / "ok.py")]).status == "unchanged"  # a file as its root


# --- bad input ------------------------------------------------------------------------------------------------


def test_non_utf8_text_is_stamped_in_its_declared_encoding_or_gets_a_sidecar(tmp_path: Path) -> None:
    declared = tmp_path / "latin1.py"
    declared.write_bytes(b"# -*- coding: latin-1 -*-\nname = 'Jos\xe9'\n")
    assert stamp_file(declared).status == "stamped"
    assert strip_stamp(declared.read_bytes(), file_name="latin1.py") == b"# -*- coding: latin-1 -*-\nname = 'Jos\xe9'\n"
    assert verify_file(declared).status == "valid"
    undeclared = tmp_path / "latin1.txt"
    undeclared.write_bytes(b"Jos\xe9\n")
    assert stamp_file(undeclared).status == "stamped"
    assert undeclared.read_bytes() == b"Jos\xe9\n"
    assert sidecar_path(undeclared).exists()
    assert verify_file(undeclared).status == "valid"


def test_a_missing_file_fails(tmp_path: Path) -> None:
    result = stamp_file(tmp_path / "gone.py")
    assert result.status == "failed"
    assert result.error == f"{tmp_path / 'gone.py'}: no such file (deleted while running?)"
    assert verify_file(tmp_path / "gone.py").status == "error"
    with pytest.raises(StampError, match="no such file"):
        hash_file(tmp_path / "gone.py")


def test_a_directory_fails(tmp_path: Path) -> None:
    (tmp_path / "d.py").mkdir()
    open_before = sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else []
    result = stamp_file(tmp_path / "d.py")
    assert result.status == "failed"
    assert result.error == f"{tmp_path / 'd.py'}: is a directory"
    if open_before:
        assert sorted(os.listdir("/proc/self/fd")) == open_before  # the directory's descriptor was closed


def test_errors_name_the_path_given_not_a_symlinks_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link.py").symlink_to(tmp_path / "real")
    assert stamp_file(tmp_path / "link.py").error == f"{tmp_path / 'link.py'}: is a directory"
    assert verify_file(tmp_path / "link.py").error == f"{tmp_path / 'link.py'}: is a directory"


def test_a_fifo_fails_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.py")
    result = stamp_file(tmp_path / "pipe.py")
    assert result.status == "failed"
    assert result.error is not None
    assert "not a regular file" in result.error


def test_a_symlink_loop_fails(tmp_path: Path) -> None:
    (tmp_path / "a.py").symlink_to(tmp_path / "b.py")
    (tmp_path / "b.py").symlink_to(tmp_path / "a.py")
    result = stamp_file(tmp_path / "a.py")
    assert result.status == "failed"
    assert result.error == f"{tmp_path / 'a.py'}: symlink loop"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "secret.py"
    path.write_bytes(b"x\n")
    path.chmod(0)
    try:
        result = stamp_file(path)
    finally:
        path.chmod(0o600)
    assert result.status == "failed"
    assert result.error == f"{path}: permission denied"


def test_permission_denied_is_a_per_file_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too: the kernel's refusal is stood in for by the same error at the same call.
    path = tmp_path / "secret.py"
    path.write_bytes(b"x\n")
    real_open = os.open

    def refusing_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    assert stamp_file(path).error == f"{path}: permission denied"
    assert verify_file(path).error == f"{path}: permission denied"
    monkeypatch.undo()
    assert stamp_file(path).status == "stamped"  # and the next file is fine


def test_an_unwritable_directory_fails_and_leaves_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.py"
    path.write_bytes(b"x\n")

    def refusing_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refusing_mkstemp)
    result = stamp_file(path)
    assert result.status == "failed"
    assert result.error == f"{path}: permission denied"
    assert path.read_bytes() == b"x\n"


def test_hash_bytes_is_plain_blake3() -> None:
    for size in (0, 1, 1024, stamps.THREADS_FROM + 1):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        assert hash_bytes(data) == blake3(data).hexdigest()


@pytest.fixture(autouse=True)
def _no_leaked_limit() -> Iterator[None]:
    saved = stamps.IN_MEMORY_LIMIT
    yield
    assert saved == stamps.IN_MEMORY_LIMIT


@pytest.mark.skipif(sys.platform != "linux", reason="write leases are Linux's")
def test_a_file_another_stamper_holds_the_lease_of_is_busy_not_failed(tmp_path: Path) -> None:
    """Two stampers on one file (a run restarted over a killed one): the second opens the file (non-blocking) while
    the first holds its write lease, gets EWOULDBLOCK, and reports busy (retried) instead of failing."""
    import fcntl
    import signal

    path = tmp_path / "shared.txt"
    path.write_bytes(b"text\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)  # a lease break signals the holder: not with SIGIO here
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        result = stamp_file(path)
    finally:
        os.close(fd)
    assert (result.status, result.error) == ("busy", f"{path}: busy: open in another process, retry later")
    assert path.read_bytes() == b"text\n"
    assert stamp_file(path).status == "stamped"  # the lease gone: the next attempt stamps it


def test_a_new_stamps_uid_is_random_not_time_ordered() -> None:
    # Event and workflow ids are time-ordered (version 7); the uid written into a file says nothing of when.
    uids = {uuid.UUID(stamp_bytes(b"x = 1\n", file_name="a.py")[1].uid) for _ in range(20)}
    assert len(uids) == 20
    assert {u.version for u in uids} == {4}
