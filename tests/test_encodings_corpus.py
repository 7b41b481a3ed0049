"""A folder of real files of many encodings, stamped by the real CLI (``onex stamp`` in a subprocess): afterwards each
file is either its exact bytes plus one stamp, in its own encoding, or unchanged with a sidecar; a read-only file is
skipped (and stamped with ``--force``); ``onex verify`` says valid for every stamped file; a second run changes no
byte; and ``verify`` and ``stamp`` agree on symlinks (outside the root: skipped, a loop: an error)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from onex.stamps import find_stamp, hash_bytes, sidecar_path, strip_stamp

ONEX = Path(sys.executable).with_name("onex")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"

Where = Literal["in place", "sidecar"]

# name -> (bytes, where the stamp must go, the codec the stamped file must still decode in)
CORPUS: dict[str, tuple[bytes, Where, str]] = {
    "utf8.txt": ("naïve café ✓\n".encode(), "in place", "utf-8"),
    "utf8_bom.md": (b"\xef\xbb\xbf# Title\n\nbody \xc3\xa9\n", "in place", "utf-8-sig"),
    "ascii.py": (b"#!/usr/bin/env python3\nprint('hi')\n", "in place", "ascii"),
    "crlf.txt": (b"line one\r\nline two\r\n", "in place", "ascii"),
    "utf16le.txt": (b"\xff\xfe" + "héllo\r\nwörld\r\n".encode("utf-16-le"), "in place", "utf-16"),
    "utf16be.sh": (b"\xfe\xff" + "#!/bin/sh\necho ✓\n".encode("utf-16-be"), "in place", "utf-16"),
    "utf32le.yaml": (b"\xff\xfe\x00\x00" + "key: välue\n".encode("utf-32-le"), "in place", "utf-32"),
    "pep263.py": (b"# -*- coding: latin-1 -*-\nname = 'Jos\xe9'\n", "in place", "latin-1"),
    "pep263_crlf.py": (b"#!/usr/bin/python\r\n# coding=cp1252\r\nx = '\x80'\r\n", "in place", "cp1252"),
    "koi8r.py": (b"# coding: koi8-r\nprint('\xf0\xd2\xc9\xd7\xc5\xd4')\n", "in place", "koi8-r"),
    "shift_jis.html": (
        '<html><head><meta charset="Shift_JIS"></head><body>表示</body></html>\n'.encode("shift_jis"),
        "in place",
        "shift_jis",
    ),
    "latin1.xml": (b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<r>caf\xe9</r>\n', "in place", "latin-1"),
    "latin1.txt": (b"caf\xe9 cr\xe8me br\xfbl\xe9e\n", "sidecar", "latin-1"),  # declares nothing: no guessing
    "cp1252.md": (b"\x93smart quotes\x94 \x80\n", "sidecar", "cp1252"),
    "image.png": (PNG, "sidecar", ""),
    "fake.py": (PNG, "sidecar", ""),  # binary whatever its extension says
    "nuls.bin": (b"\x00\x01\x02\x03" * 64, "sidecar", ""),
    "data.json": (b'{"a": 1}\n', "sidecar", "utf-8"),
    "empty.py": (b"", "in place", "utf-8"),
    "empty.json": (b"", "sidecar", ""),
}
READ_ONLY = {"readonly.txt": b"do not touch\n", "readonly.png": PNG}


def onex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_")}
    env["COLUMNS"] = "300"
    command = [str(ONEX)] if ONEX.exists() else [sys.executable, "-m", "onex.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for name, (content, _, _) in CORPUS.items():
        (root / name).write_bytes(content)
    for name, content in READ_ONLY.items():
        (root / name).write_bytes(content)
        (root / name).chmod(0o444)
    (root / "z_link.txt").symlink_to("utf8.txt")  # the same file, met after it: stamped once, by its own name
    return root


def stamp(root: Path, *extra: str) -> dict[str, Any]:
    run = onex("stamp", ".", "--store", f"sqlite:///{root.parent / 'onex.db'}", "-o", "json", *extra, cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def verify(root: Path) -> dict[str, Any]:
    run = onex("verify", ".", "--all", "-o", "json", cwd=root)
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def test_every_file_is_its_bytes_plus_a_stamp_in_its_encoding_or_unchanged_with_a_sidecar(corpus: Path) -> None:
    report = stamp(corpus)
    counts = report["counts"]
    assert (counts["stamped"], counts["unchanged"], counts["skipped"], counts["failed"]) == (len(CORPUS), 0, 2, 0)
    skipped = {p["path"]: p["reason"] for p in report["problems"] if p["status"] == "skipped"}
    assert skipped == {
        "readonly.txt": "read-only (mode 0444); --force stamps it anyway",
        "readonly.png": "read-only (mode 0444); --force stamps it anyway",
    }

    for name, (before, where, codec) in CORPUS.items():
        path = corpus / name
        after = path.read_bytes()
        if where == "sidecar":
            assert after == before, name  # never modified
            assert sidecar_path(path).exists(), name
            assert find_stamp(after, file_name=name) is None
            continue
        assert not sidecar_path(path).exists(), name
        assert strip_stamp(after, file_name=name) == before, name  # exactly the original bytes plus the stamp
        stamp_found = find_stamp(after, file_name=name)
        assert stamp_found is not None, name
        assert stamp_found.hash == hash_bytes(before), name
        text = after.decode(codec)  # still text in its own encoding
        added = [line for line in text.splitlines() if line not in before.decode(codec).splitlines()]
        assert len(added) == 1, (name, added)
        assert "ONEX:uid=" in added[0]
        end = text.index(added[0]) + len(added[0])
        assert text.startswith("\r\n" if "\r\n" in before.decode(codec) else "\n", end), name  # its line endings
    for name, content in READ_ONLY.items():
        assert (corpus / name).read_bytes() == content
        assert not sidecar_path(corpus / name).exists()
        assert stat.S_IMODE((corpus / name).stat().st_mode) == 0o444

    checked = verify(corpus)
    by_path = {f["path"]: f["status"] for f in checked["files"]}
    assert {p: s for p, s in by_path.items() if p not in READ_ONLY} == dict.fromkeys(CORPUS, "valid")
    assert {p: by_path[p] for p in READ_ONLY} == dict.fromkeys(READ_ONLY, "unstamped")

    # Restamping unchanged content changes no byte of any file or sidecar.
    before_second = snapshot(corpus)
    again = stamp(corpus)
    assert (again["counts"]["stamped"], again["counts"]["unchanged"]) == (0, len(CORPUS))
    assert snapshot(corpus) == before_second

    # --force stamps the read-only files too, keeping their mode; verify then says valid for everything.
    forced = stamp(corpus, "--force")
    assert (forced["counts"]["stamped"], forced["counts"]["skipped"]) == (2, 0)
    assert strip_stamp((corpus / "readonly.txt").read_bytes(), file_name="readonly.txt") == READ_ONLY["readonly.txt"]
    assert stat.S_IMODE((corpus / "readonly.txt").stat().st_mode) == 0o444
    assert (corpus / "readonly.png").read_bytes() == PNG
    assert verify(corpus)["counts"] == {
        "valid": len(CORPUS) + 2,
        "modified": 0,
        "unstamped": 0,
        "error": 0,
        "skipped": 0,
    }


def test_stamp_and_verify_agree_on_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not mine\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "mine.txt").write_bytes(b"mine\n")
    (root / "out.txt").symlink_to(outside)
    (root / "out_relative.txt").symlink_to("../outside.txt")

    report = stamp(root)
    assert report["counts"]["stamped"] == 1
    assert {p["path"]: p["status"] for p in report["problems"]} == {
        "out.txt": "skipped",
        "out_relative.txt": "skipped",
    }
    assert outside.read_bytes() == b"not mine\n"
    checked = onex("verify", ".", "--all", "-o", "json", cwd=root)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # not "broken symlink", not exit 1
    verdicts = {f["path"]: (f["status"], f["error"]) for f in json.loads(checked.stdout)["files"]}
    assert verdicts.pop("mine.txt") == ("valid", None)
    assert {path: status for path, (status, _) in verdicts.items()} == {
        "out.txt": "skipped",
        "out_relative.txt": "skipped",
    }
    assert all("outside" in error and "not followed" in error for _, error in verdicts.values()), verdicts

    (root / "loop_a").symlink_to("loop_b")
    (root / "loop_b").symlink_to("loop_a")
    looped = onex("stamp", ".", "--store", f"sqlite:///{tmp_path / 'onex.db'}", "-o", "json", cwd=root)
    assert looped.returncode == 1
    stamp_problems = {p["path"]: p["status"] for p in json.loads(looped.stdout)["problems"]}
    assert (stamp_problems["loop_a"], stamp_problems["loop_b"]) == ("failed", "failed")
    verified = onex("verify", ".", "-o", "json", cwd=root)
    assert verified.returncode == 1
    verify_problems = {f["path"]: (f["status"], f["error"]) for f in json.loads(verified.stdout)["files"]}
    assert {p: v for p, v in verify_problems.items() if v[0] != "skipped"} == {
        "loop_a": ("error", "symlink loop"),
        "loop_b": ("error", "symlink loop"),
    }
