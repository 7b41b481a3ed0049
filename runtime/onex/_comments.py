"""Comment syntaxes: how a stamp is written as a comment in each kind of text file, and which kind a file is.

A file's syntax comes from its name (``Makefile``), its extension (``.py``) or, for a script without one, the
interpreter its shebang names; a file with none gets a sidecar (``onex.stamps``). A syntax also says which first
lines a stamp must stay below: a shebang, a PEP 263 coding line, Dockerfile parser directives, front matter
(``---`` YAML or ``+++`` TOML, in Markdown, markup and CSS: what static-site generators read on line 1), an XML
declaration or a CSS ``@charset``, and whether Go wants a blank line after it.

The syntaxes are grouped into the shipped file types (``GROUPS``: python, hash, docker, slash, go, dash, markup,
markdown, css), which ``onex.filetypes`` turns into its handlers; a lightweight stamp may omit ``ts=`` (the seed's
``ONEX:uid=...,hash=...`` form), and is then kept without one until its hash changes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Final

from onex.files import suffix_of

__all__ = ["GROUPS", "Syntax", "group_for", "interpreter_of", "syntax_for"]


@dataclass(frozen=True, slots=True)
class Syntax:
    open: bytes  # b"# " ... or the opener of a block comment, b"<!-- "
    close: bytes = b""  # b"" for line comments
    shebang: bool = False
    coding: bool = False
    directives: bool = False
    front_matter: bool = False
    declaration: re.Pattern[bytes] | None = None
    blank_after: bool = False
    lightweight: re.Pattern[bytes] = field(init=False)

    def __post_init__(self) -> None:
        pattern = (
            re.escape(self.open)
            + rb"ONEX:uid=([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})"
            + rb",hash=([0-9a-f]{64})(?:,ts=([0-9A-Za-z:.+-]{1,64}))?"
            # Printable ASCII but the comma in a value, a space included (the bridge writes an author as given).
            + rb"((?:,[A-Za-z_][A-Za-z0-9_]*=[\x20-\x2b\x2d-\x7e]*)*)"
            + re.escape(self.close)
        )
        object.__setattr__(self, "lightweight", re.compile(pattern))

    @property
    def forbidden(self) -> tuple[str, ...]:
        """What a block comment must not contain: ``--`` ends (or is illegal in) an XML comment."""
        return ("--",) if self.close == b" -->" else ("*/",) if self.close else ()


_HASH = Syntax(b"# ", shebang=True)
_PYTHON = Syntax(b"# ", shebang=True, coding=True)
_DOCKER = Syntax(b"# ", directives=True)
_SLASH = Syntax(b"// ", shebang=True)  # JS/TS/Rust/Kotlin/Swift scripts may start with a shebang
_GO = Syntax(b"// ", blank_after=True)
_DASH = Syntax(b"-- ", shebang=True)
_MARKUP = Syntax(b"<!-- ", b" -->", front_matter=True, declaration=re.compile(rb"<\?xml[^>\n]{0,1024}\?>"))
_MARKDOWN = Syntax(b"<!-- ", b" -->", front_matter=True)
_CSS = Syntax(b"/* ", b" */", front_matter=True, declaration=re.compile(rb'@charset "[^"\n]{0,128}";'))


# The shipped file types: (name, syntax, extensions, file names, interpreters of an extensionless script's shebang).
GROUPS: Final[tuple[tuple[str, Syntax, str, str, str], ...]] = (
    ("python", _PYTHON, ".py .pyi .pyw", "", "python python2 python3 pypy pypy3"),
    (
        "hash",
        _HASH,
        ".sh .bash .zsh .ksh .fish .rb .pl .pm .r .yaml .yml .toml .txt .mk .cmake .cfg .conf .env",
        "makefile gnumakefile vagrantfile gemfile rakefile justfile .gitignore .onexignore .dockerignore"
        " .gitattributes .env",
        "sh bash zsh ksh dash fish ruby perl rscript",
    ),
    ("docker", _DOCKER, ".dockerfile", "dockerfile containerfile", ""),
    (
        "slash",
        _SLASH,
        ".js .mjs .cjs .jsx .ts .mts .cts .tsx .rs .c .h .cc .cpp .cxx .hpp .hh .hxx .java .kt .kts"
        " .scala .swift .cs .dart .groovy .gradle .proto .jsonc",
        "jenkinsfile",
        "node nodejs deno bun",
    ),
    ("go", _GO, ".go", "", ""),
    ("dash", _DASH, ".sql .lua .hs", "", "lua luajit"),
    ("markup", _MARKUP, ".html .htm .xhtml .xml .svg .vue .svelte .xsd .xsl .xslt", "", ""),
    ("markdown", _MARKDOWN, ".md .markdown", "", ""),
    ("css", _CSS, ".css .scss .less", "", ""),
)


def _index(column: int) -> dict[str, str]:
    return {key: group[0] for group in GROUPS for key in str(group[column]).split()}


_BY_EXT: Final = _index(2)
_BY_NAME: Final = _index(3)
_BY_INTERPRETER: Final = _index(4)
_SYNTAX: Final = {group[0]: group[1] for group in GROUPS}


def interpreter_of(head: bytes) -> str | None:
    """The interpreter a script's shebang names (``env`` skipped, version digits dropped), or ``None``."""
    if not head.startswith(b"#!") or head.startswith(b"#!["):
        return None
    end = head.find(b"\n", 0, 256)
    line = head[2 : end if end >= 0 else 256].decode("ascii", "replace")
    words = [w for w in line.split() if not w.startswith("-")]
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
    if not words:
        return None
    interpreter = os.path.basename(words[0]).lower()
    return interpreter.rstrip("0123456789.") or interpreter


def group_for(name: str, head: bytes) -> str | None:
    """The shipped file type (a ``GROUPS`` name) of a file, or ``None`` when it has no comment syntax."""
    lowered = name.lower()
    if lowered in _BY_NAME:
        return _BY_NAME[lowered]
    suffix = suffix_of(lowered)
    if suffix:
        return _BY_EXT.get(suffix)
    # A script's shebang stays first (it is the prefix), so the stamped file is recognised the same way.
    interpreter = interpreter_of(head)
    return None if interpreter is None else _BY_INTERPRETER.get(interpreter)


def syntax_for(name: str, head: bytes) -> Syntax | None:
    """The comment syntax for a file, or ``None`` when it has none (it gets a sidecar)."""
    group = group_for(name, head)
    return None if group is None else _SYNTAX[group]
