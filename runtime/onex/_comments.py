"""Comment syntaxes: how a stamp is written as a comment in each kind of text file, and which kind a file is.

A file's syntax comes from its name (``Makefile``), its extension (``.py``) or, for a script without one, the
interpreter its shebang names; a file with none gets a sidecar (``onex.stamps``). A syntax also says which first
lines a stamp must stay below: a shebang, a PEP 263 coding line, Dockerfile parser directives, Markdown front
matter, an XML declaration or a CSS ``@charset``, and whether Go wants a blank line after it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Final

from onex.files import suffix_of

__all__ = ["Syntax", "syntax_for"]


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
            + rb",hash=([0-9a-f]{64}),ts=([0-9A-Za-z:.+-]{1,64})"
            + rb"((?:,[A-Za-z_][A-Za-z0-9_]*=[\x21-\x2b\x2d-\x7e]*)*)"
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
_MARKUP = Syntax(b"<!-- ", b" -->", declaration=re.compile(rb"<\?xml[^>\n]{0,1024}\?>"))
_MARKDOWN = Syntax(b"<!-- ", b" -->", front_matter=True)
_CSS = Syntax(b"/* ", b" */", declaration=re.compile(rb'@charset "[^"\n]{0,128}";'))


def _by(syntax: Syntax, keys: str) -> dict[str, Syntax]:
    return dict.fromkeys(keys.split(), syntax)


_SYNTAX_BY_EXT: Final = {
    **_by(_PYTHON, ".py .pyi .pyw"),
    **_by(_HASH, ".sh .bash .zsh .ksh .fish .rb .pl .pm .r .yaml .yml .toml .txt .mk .cmake .cfg .conf .env"),
    **_by(_DOCKER, ".dockerfile"),
    **_by(_SLASH, ".js .mjs .cjs .jsx .ts .mts .cts .tsx .rs .c .h .cc .cpp .cxx .hpp .hh .hxx .java .kt .kts"),
    **_by(_SLASH, ".scala .swift .cs .dart .groovy .gradle .proto .jsonc"),
    **_by(_GO, ".go"),
    **_by(_DASH, ".sql .lua .hs"),
    **_by(_MARKUP, ".html .htm .xhtml .xml .svg .vue .svelte .xsd .xsl .xslt"),
    **_by(_MARKDOWN, ".md .markdown"),
    **_by(_CSS, ".css .scss .less"),
}
_SYNTAX_BY_NAME: Final = {
    **_by(_HASH, "makefile gnumakefile vagrantfile gemfile rakefile justfile"),
    **_by(_HASH, ".gitignore .onexignore .dockerignore .gitattributes .env"),
    **_by(_DOCKER, "dockerfile containerfile"),
    **_by(_SLASH, "jenkinsfile"),
}
_SYNTAX_BY_INTERPRETER: Final = {
    **_by(_PYTHON, "python python2 python3 pypy pypy3"),
    **_by(_HASH, "sh bash zsh ksh dash fish ruby perl rscript"),
    **_by(_SLASH, "node nodejs deno bun"),
    **_by(_DASH, "lua luajit"),
}


def syntax_for(name: str, head: bytes) -> Syntax | None:
    """The comment syntax for a file, or ``None`` when it has none (it gets a sidecar)."""
    lowered = name.lower()
    if lowered in _SYNTAX_BY_NAME:
        return _SYNTAX_BY_NAME[lowered]
    suffix = suffix_of(lowered)
    if suffix:
        return _SYNTAX_BY_EXT.get(suffix)
    # A script's shebang stays first (it is the prefix), so the stamped file is recognised the same way.
    if head.startswith(b"#!") and not head.startswith(b"#!["):
        line = head[2 : head.find(b"\n") if b"\n" in head[:256] else 256].decode("ascii", "replace")
        words = [w for w in line.split() if not w.startswith("-")]
        if words and os.path.basename(words[0]) == "env":
            words = words[1:]
        if words:
            interpreter = os.path.basename(words[0]).lower()
            return _SYNTAX_BY_INTERPRETER.get(interpreter.rstrip("0123456789.") or interpreter)
    return None
