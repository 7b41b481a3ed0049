"""File-type detection and the directory walk: ignore files, symlinks, and problems reported per path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from onex.files import (
    FILE_TYPES,
    STALE_TEMP_AGE,
    WalkEntry,
    WalkProblemKind,
    detect_file_type,
    is_ignored,
    is_read_only,
    is_stale_temp,
    is_temp,
    iter_files,
    parse_ignore,
    remove_stale_temps,
    temp_prefix,
    within,
)

# --- detection ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("x.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image"),
        ("x", b"\xff\xd8\xff\xe0\x00\x10JFIF", "image"),
        ("x", b"GIF89a\x01\x00", "image"),
        ("x", b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image"),
        ("x", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "document"),
        ("x", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "document"),
        ("x", b"PK\x03\x04\x14\x00", "archive"),
        ("report.docx", b"PK\x03\x04\x14\x00", "document"),  # a zip, but the extension says what it holds
        ("x", b"\x1f\x8b\x08\x00", "archive"),
        ("x", b"BZh91AY&SY", "archive"),
        ("x", b"\xfd7zXZ\x00\x00", "archive"),
        ("x", bytes(257) + b"ustar\x0000", "archive"),
        ("x", b"ID3\x04\x00\x00\x00\x00", "audio"),
        ("x", b"\xff\xfb\x90\x00", "audio"),
        ("x", b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio"),
        ("x", b"OggS\x00\x02", "audio"),
        ("x", b"fLaC\x00\x00\x00\x22", "audio"),
        ("x", b"\x00\x00\x00\x20ftypM4A \x00", "audio"),
        ("x", b"\x00\x00\x00\x18ftypmp42\x00", "video"),
        ("x", b"RIFF\x24\x00\x00\x00AVI LIST", "video"),
        ("x", b"\x1a\x45\xdf\xa3\x9f\x42", "video"),
        ("x", b"\x7fELF\x02\x01\x01", "binary"),
        ("x", b"SQLite format 3\x00", "data"),
        ("a.py", b"print(1)\n", "code"),
        ("a.go", b"", "code"),
        ("a.md", b"# Title\n", "text"),
        ("a.json", b"{}", "data"),
        ("a.yaml", b"a: 1\n", "data"),
        ("Makefile", b"all:\n", "code"),
        ("README", b"hello\n", "text"),
        ("a.py", b"\x89PNG\r\n\x1a\n\x00", "image"),  # magic bytes win over the extension
        ("a.py", b"x = 1\x00", "binary"),  # no stamped text format contains NUL
        ("unknown.zzz", b"plain words\n", "text"),
        ("tool", b"#!/bin/sh\necho\n", "code"),
        ("blob", b"\xe9\xe8 latin-1", "binary"),
        ("blob", b"", "text"),
        ("about.txt", b"ID3 tags are metadata in MP3 files\n", "text"),  # not fooled by ASCII look-alikes
        ("about.txt", b"RIFF is a container format\n", "text"),
    ],
)
def test_detect_file_type(name: str, head: bytes, expected: str) -> None:
    assert expected in FILE_TYPES
    assert detect_file_type(name, head) == expected


def test_a_character_cut_by_the_sniff_window_is_still_text() -> None:
    head = (b"a" * (64 * 1024 - 1) + "é".encode())[: 64 * 1024]  # ends in half of "é"
    assert detect_file_type("blob", head) == "text"
    assert detect_file_type("blob", b"abc\xc3") == "binary"  # the whole file, and it ends mid-character


# --- ignore patterns ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.log", "a.log", False, True),
        ("*.log", "deep/er/a.log", False, True),
        ("*.log", "a.log.txt", False, False),
        ("build/", "build", True, True),
        ("build/", "build", False, False),  # a trailing slash matches directories only
        ("build/", "src/build", True, True),
        ("/top.txt", "top.txt", False, True),
        ("/top.txt", "sub/top.txt", False, False),  # a leading slash anchors
        ("doc/*.txt", "doc/a.txt", False, True),
        ("doc/*.txt", "doc/sub/a.txt", False, False),  # "*" never crosses "/"
        ("doc/*.txt", "x/doc/a.txt", False, False),  # a middle slash anchors too
        ("**/cache", "a/b/cache", True, True),
        ("**/cache", "cache", True, True),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("out/**", "out/x/y", False, True),
        ("fil?.py", "file.py", False, True),
        ("fil?.py", "fil/.py", False, False),
        ("[ab].py", "a.py", False, True),
        ("[!ab].py", "a.py", False, False),
        ("[!ab].py", "c.py", False, True),
        ("\\#hash", "#hash", False, True),
        ("# comment", "# comment", False, False),
        ("trailing   ", "trailing", False, True),
    ],
)
def test_ignore_patterns(pattern: str, path: str, is_dir: bool, ignored: bool) -> None:
    assert is_ignored(parse_ignore([pattern]), path, is_dir=is_dir) is ignored


def test_negation_and_last_match_wins() -> None:
    rules = parse_ignore(["*.log", "!keep.log", "keep.log.*"])
    assert is_ignored(rules, "a.log", is_dir=False)
    assert not is_ignored(rules, "keep.log", is_dir=False)
    assert is_ignored(rules, "keep.log.1", is_dir=False)
    assert is_ignored(parse_ignore(["!keep.log", "*.log"]), "keep.log", is_dir=False)


def test_rules_of_a_nested_ignore_file_apply_below_it_only() -> None:
    rules = parse_ignore(["/local.txt", "*.tmp"], base="sub")
    assert is_ignored(rules, "sub/local.txt", is_dir=False)
    assert not is_ignored(rules, "local.txt", is_dir=False)
    assert is_ignored(rules, "sub/deep/x.tmp", is_dir=False)
    assert not is_ignored(rules, "x.tmp", is_dir=False)
    assert not is_ignored(rules, "subway/x.tmp", is_dir=False)


# --- the walk -------------------------------------------------------------------------------------------------


def tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def walk(*roots: Path, excludes: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """Relative paths of files yielded, and problems by path (relative to the first root when inside it)."""
    files: list[str] = []
    problems: dict[str, str] = {}
    base = roots[0]
    for entry in iter_files(roots, excludes=excludes):
        assert isinstance(entry, WalkEntry)
        rel = os.path.relpath(entry.path, base)
        if entry.problem is None:
            files.append(rel)
        else:
            problems[rel] = entry.problem
    return files, problems


def test_the_walk_honours_gitignore_and_onexignore(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            ".gitignore": "*.log\nbuild/\n/only-top.txt\n!important.log\n",
            ".onexignore": "secrets/\n",
            "a.py": "",
            "x.log": "",
            "important.log": "",
            "only-top.txt": "",
            "build/out.py": "",
            "secrets/key.txt": "",
            "sub/only-top.txt": "",
            "sub/.gitignore": "*.md\n!keep.log\n",
            "sub/readme.md": "",
            "sub/keep.log": "",
            "sub/drop.log": "",
            "other/readme.md": "",
            ".git/config": "",
            "a.py.onex.yaml": "",
            ".a.py.xyz.onex-tmp": "",
        },
    )
    files, problems = walk(tmp_path)
    assert problems == {}
    assert files == [
        ".gitignore",
        ".onexignore",
        "a.py",
        "important.log",
        "other/readme.md",
        "sub/.gitignore",
        "sub/keep.log",
        "sub/only-top.txt",
    ]


def test_excludes_apply_from_the_root_and_override_ignore_files(tmp_path: Path) -> None:
    tree(tmp_path, {".gitignore": "!*.py\n", "a.py": "", "b.txt": "", "sub/c.py": "", "sub/.gitignore": "!c.py\n"})
    files, _ = walk(tmp_path, excludes=("*.py", ".gitignore"))
    assert files == ["b.txt"]
    files, _ = walk(tmp_path, excludes=("/sub/",))
    assert files == [".gitignore", "a.py", "b.txt"]


def test_a_symlink_out_of_the_root_is_reported_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    tree(outside, {"secret.py": "", "dir/x.py": ""})
    tree(root, {"a.py": ""})
    (root / "to-file.py").symlink_to(outside / "secret.py")
    (root / "to-dir").symlink_to(outside / "dir")
    (root / "dots").symlink_to("../outside/dir")
    files, problems = walk(root)
    assert files == ["a.py"]
    assert set(problems) == {"to-file.py", "to-dir", "dots"}
    assert all("outside" in reason and "not followed" in reason for reason in problems.values())


def test_symlinks_inside_the_root_are_followed_once(tmp_path: Path) -> None:
    tree(tmp_path, {"real/a.py": "", "b.py": ""})
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "c.py").symlink_to(tmp_path / "b.py")
    files, problems = walk(tmp_path)
    assert problems == {}
    assert files == ["alias/a.py", "b.py"]  # "c.py" and "real/a.py" are the same files again


def test_symlink_loops_are_reported_per_path(tmp_path: Path) -> None:
    tree(tmp_path, {"a/b/x.py": "", "z.py": ""})
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a")
    (tmp_path / "p.py").symlink_to(tmp_path / "q.py")
    (tmp_path / "q.py").symlink_to(tmp_path / "p.py")
    (tmp_path / "dangling.py").symlink_to(tmp_path / "nowhere")
    files, problems = walk(tmp_path)
    assert files == ["a/b/x.py", "z.py"]
    assert problems["a/b/up"].startswith("symlink loop")
    assert problems["p.py"] == problems["q.py"] == "symlink loop"
    assert problems["dangling.py"] == "broken symlink"


def test_roots_may_be_files_and_problems_do_not_stop_the_walk(tmp_path: Path) -> None:
    tree(tmp_path, {"a.py": "", "d/b.py": "", "c.json.onex.yaml": ""})
    os.mkfifo(tmp_path / "d" / "fifo")
    files, problems = walk(
        tmp_path / "a.py", tmp_path / "missing", tmp_path / "d", tmp_path / "c.json.onex.yaml", tmp_path / "a.py"
    )
    assert files == [".", "../d/b.py"]  # relative to the first root, a file; and a.py only once
    assert problems == {
        "../missing": "no such file (deleted while running?)",
        "../d/fifo": "not a regular file",
        "../c.json.onex.yaml": "is an onex sidecar; sidecars are never stamped",
    }


def test_an_unreadable_directory_is_reported_and_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree(tmp_path, {"locked/a.py": "", "open/b.py": ""})
    real_scandir = os.scandir

    # chmod 000 does not stop root, so the refusal is stood in for where the kernel would give it.
    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, problems = walk(tmp_path)
    assert files == ["open/b.py"]
    assert problems == {"locked": "permission denied"}


def kinds(*roots: Path) -> dict[str, WalkProblemKind | None]:
    """The kind of every problem the walk reports, by path relative to the first root."""
    return {os.path.relpath(e.path, roots[0]): e.kind for e in iter_files(roots) if e.problem is not None}


def test_every_problem_carries_its_kind_and_only_the_rules_omissions_are_omissions(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    tree(outside, {"secret.py": ""})
    tree(root, {"a.py": "", "loopdir/x.py": "", "c.json.onex.yaml": "", "unreadable-rules/.gitignore/x": ""})
    (root / "escape.py").symlink_to(outside / "secret.py")
    (root / "loopdir" / "up").symlink_to("..")
    (root / "chain_a").symlink_to("chain_b")
    (root / "chain_b").symlink_to("chain_a")
    (root / "dangling.py").symlink_to(root / "nowhere")
    os.mkfifo(root / "fifo")
    temp = root / f"{temp_prefix('a.py')}abcd1234"
    temp.write_text("")

    found = kinds(root, root / "c.json.onex.yaml", temp, root / "missing")

    assert found == {
        "escape.py": WalkProblemKind.OUTSIDE_ROOT,
        "loopdir/up": WalkProblemKind.SYMLINK_LOOP,
        "chain_a": WalkProblemKind.SYMLINK_LOOP,
        "chain_b": WalkProblemKind.SYMLINK_LOOP,
        "dangling.py": WalkProblemKind.BROKEN_SYMLINK,
        "fifo": WalkProblemKind.NOT_REGULAR,
        "unreadable-rules/.gitignore": WalkProblemKind.IGNORE_FILE,  # a directory: its rules cannot be read
        "c.json.onex.yaml": WalkProblemKind.SIDECAR,
        temp.name: WalkProblemKind.TEMPORARY,
        "missing": WalkProblemKind.UNREADABLE,
    }
    # What the rules leave out on purpose; everything else is a path that should have been walked and was not.
    assert {kind for kind in WalkProblemKind if kind.omission} == {
        WalkProblemKind.OUTSIDE_ROOT,
        WalkProblemKind.SIDECAR,
        WalkProblemKind.TEMPORARY,
        WalkProblemKind.NOT_REGULAR,
        WalkProblemKind.READ_ONLY,
    }


def test_a_walk_entry_has_a_problem_and_its_kind_or_neither(tmp_path: Path) -> None:
    assert WalkEntry(tmp_path).kind is None
    with pytest.raises(ValueError, match="kind"):
        WalkEntry(tmp_path, "broken symlink")
    with pytest.raises(ValueError, match="kind"):
        WalkEntry(tmp_path, None, WalkProblemKind.BROKEN_SYMLINK)


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists directories whatever their mode")
def test_an_unreadable_directory_really_is_reported(tmp_path: Path) -> None:
    tree(tmp_path, {"locked/a.py": "", "open/b.py": ""})
    (tmp_path / "locked").chmod(0)
    try:
        files, problems = walk(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert files == ["open/b.py"]
    assert problems == {"locked": "permission denied"}


# --- onex temporary files -------------------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped, as a killed stamper's is by the time anyone looks."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def leftover(directory: Path, name: str, pid: int, *, age: float = 0.0) -> Path:
    """A temporary file as a stamper with ``pid`` leaves it for file ``name``, last written ``age`` seconds ago."""
    path = directory / f"{temp_prefix(name, pid)}abcd1234"
    path.write_bytes(b"half a file")
    if age:
        when = time.time() - age
        os.utime(path, (when, when))
    return path


def test_temporary_names_are_recognised_and_fit_in_a_file_name() -> None:
    assert temp_prefix("a.py", 42) == ".a.py.onex-tmp.42."
    assert is_temp(".a.py.onex-tmp.42.x1_y2z3w")
    assert is_temp("dir/.a.py.1y2z3x4w.onex-tmp")  # as written before the pid was in the name
    assert not is_temp("a.py")
    assert not is_temp(".a.py.onex-tmp.notapid.x")
    long = "é" * 127 + ".py"  # 257 bytes: longer than most file systems allow a name to be, once prefixed
    assert len(os.fsencode(temp_prefix(long, 4_194_304) + "abcdefgh")) <= 255
    assert is_temp(temp_prefix(long, 7) + "abcdefgh")


def test_a_temporary_file_is_stale_when_its_writer_is_gone_or_it_is_old(tmp_path: Path) -> None:
    assert is_stale_temp(leftover(tmp_path, "a.py", dead_pid()))
    assert not is_stale_temp(leftover(tmp_path, "b.py", os.getpid()))  # a live writer's
    assert is_stale_temp(leftover(tmp_path, "c.py", os.getpid(), age=STALE_TEMP_AGE + 60))  # a pid reused since
    legacy = tmp_path / ".d.py.1y2z3x4w.onex-tmp"
    legacy.write_bytes(b"")
    assert not is_stale_temp(legacy)  # no pid to ask: only its age tells
    os.utime(legacy, (time.time() - STALE_TEMP_AGE - 60,) * 2)
    assert is_stale_temp(legacy)
    assert not is_stale_temp(tmp_path / "a.py")
    lookalike = tmp_path / "notes.onex-tmp"  # never stamped, but not of a shape onex writes: never deleted either
    lookalike.write_bytes(b"")
    os.utime(lookalike, (time.time() - STALE_TEMP_AGE - 60,) * 2)
    assert is_temp(lookalike)
    assert not is_stale_temp(lookalike)


def test_the_walk_never_yields_temporary_files_and_removes_stale_ones_only_when_asked(tmp_path: Path) -> None:
    tree(tmp_path, {"a.py": "", "sub/b.py": "", ".gitignore": ".*\n!.gitignore\n"})  # hides dot files, not ours
    gone = dead_pid()
    stale = [leftover(tmp_path, "a.py", gone), leftover(tmp_path / "sub", "b.py", gone)]
    old_legacy = tmp_path / "sub" / ".b.py.1y2z3x4w.onex-tmp"
    old_legacy.write_bytes(b"")
    os.utime(old_legacy, (time.time() - STALE_TEMP_AGE - 60,) * 2)
    live = leftover(tmp_path, "a.py", os.getpid())
    (tmp_path / f"{temp_prefix('x.py', gone)}linked00").symlink_to(tmp_path / "a.py")  # never followed or removed

    files, problems = walk(tmp_path)  # as onex verify walks: nothing is removed
    assert (files, problems) == ([".gitignore", "a.py", "sub/b.py"], {})
    assert all(p.exists() for p in [*stale, old_legacy, live])

    entries = list(iter_files([tmp_path], remove_stale_temps=True))
    assert sorted(os.path.relpath(e.path, tmp_path) for e in entries) == [".gitignore", "a.py", "sub/b.py"]
    assert not any(p.exists() for p in [*stale, old_legacy])
    assert live.exists()
    assert (tmp_path / f"{temp_prefix('x.py', gone)}linked00").is_symlink()


def test_a_file_given_as_a_root_loses_its_own_stale_temporary_files_only(tmp_path: Path) -> None:
    tree(tmp_path, {"a.py": "", "b.py": ""})
    gone = dead_pid()
    mine, other = leftover(tmp_path, "a.py", gone), leftover(tmp_path, "b.py", gone)
    prefix_clash = leftover(tmp_path, "a.py.bak", gone)  # ".a.py.bak.onex-tmp...": not a.py's

    files, problems = walk(tmp_path / "a.py")
    assert (files, problems) == (["."], {})
    assert mine.exists()

    assert [e.problem for e in iter_files([tmp_path / "a.py"], remove_stale_temps=True)] == [None]
    assert not mine.exists()
    assert other.exists()
    assert prefix_clash.exists()
    assert remove_stale_temps(tmp_path / "b.py") == [other]
    assert not other.exists()
    assert [e.problem for e in iter_files([prefix_clash])] == ["is an onex temporary file; never stamped"]


def test_within_compares_whole_path_components() -> None:
    assert within("/srv/data/a.py", ["/srv/data"])
    assert within("/srv/data", ["/srv/data"])
    assert within("/srv/data/a.py", ["/", "/elsewhere"])
    assert not within("/srv/database/a.py", ["/srv/data"])
    assert not within("/srv/data/a.py", [])


def test_read_only_files_are_reported_by_their_mode_bits_even_for_root(tmp_path: Path) -> None:
    tree(tmp_path, {"ro.py": "x = 1\n", "rw.py": "y = 2\n", "sub/ro.txt": "z\n"})
    for name in ("ro.py", "sub/ro.txt"):
        (tmp_path / name).chmod(0o444)
    (tmp_path / "a_link.py").symlink_to(tmp_path / "ro.py")  # the same file: reported once, by its first path
    entries = {os.path.relpath(e.path, tmp_path): e for e in iter_files([tmp_path], skip_read_only=True)}
    assert {rel: e.kind for rel, e in entries.items()} == {
        "a_link.py": WalkProblemKind.READ_ONLY,  # a link is judged by its target's mode
        "rw.py": None,
        "sub/ro.txt": WalkProblemKind.READ_ONLY,
    }
    assert entries["sub/ro.txt"].problem == "read-only (mode 0444); --force stamps it anyway"
    assert WalkProblemKind.READ_ONLY.omission  # onex stamp counts it skipped, not failed
    # A file given as a root is judged the same way; without skip_read_only nothing is held back.
    assert [e.kind for e in iter_files([tmp_path / "ro.py"], skip_read_only=True)] == [WalkProblemKind.READ_ONLY]
    assert [e.kind for e in iter_files([tmp_path / "ro.py"])] == [None]


def test_is_read_only_reads_the_bits_that_apply_to_the_user(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    for mode, expected in ((0o644, False), (0o444, True), (0o400, True), (0o200, False)):
        path.chmod(mode)
        assert is_read_only(path.stat()) is expected, oct(mode)
    if os.geteuid() == 0:
        # Root may write anything, so only a file with no write bit at all is read-only for root.
        path.chmod(0o464)
        assert is_read_only(path.stat()) is False
    else:
        path.chmod(0o466)  # writable by group and others, not by its owner: the owner's bit is what applies
        assert is_read_only(path.stat()) is True
