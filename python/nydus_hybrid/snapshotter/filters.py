"""containerd's filter expressions, as `List` takes them (`ctr snapshots ls`, GC): a filter
is selectors joined by `,` (all must hold); a request's filters are alternatives (any may
hold). A selector is a field path, optionally followed by `==`, `!=` or `~=` (a regular
expression) and a value; a bare path asks that the field be present. Paths are `.`-joined
names or double-quoted strings (`labels."containerd.io/gc.root"`); values are bare words
or quoted strings. A snapshot offers `name`, `parent`, `kind` and `labels.<key>`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from nydus_hybrid.snapshotter.errors import InvalidArgument

MAX_FILTER = 4096

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_BARE = re.compile(r"[^\s,\"]+")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}

# A field's value for a path, or None when the object has no such field.
Adaptor = Callable[[Sequence[str]], Optional[str]]


@dataclass(frozen=True)
class Selector:
    path: Sequence[str]
    op: Optional[str]  # None: present
    value: str
    regex: Optional[re.Pattern[str]]

    def match(self, field: Adaptor) -> bool:
        got = field(self.path)
        if self.op is None:
            return got is not None
        if self.op == "==":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        assert self.regex is not None
        return got is not None and self.regex.search(got) is not None


Filter = List[Selector]


def _unquote(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"filter {self.text!r}: {what} at offset {self.pos}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def take(self, pattern: re.Pattern[str]) -> Optional[re.Match[str]]:
        m = pattern.match(self.text, self.pos)
        if m:
            self.pos = m.end()
        return m

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def token(self, bare: re.Pattern[str], what: str) -> str:
        """A quoted string, or a bare token matching `bare`."""
        m = self.take(_STRING)
        if m:
            return _unquote(m.group(1))
        m = self.take(bare)
        if not m:
            raise self.fail(f"expected {what}")
        return m.group(0)


def parse(text: str) -> Filter:
    if len(text) > MAX_FILTER:
        raise InvalidArgument(f"a filter of {len(text)} bytes is longer than {MAX_FILTER}")
    s = _Scanner(text)
    out: Filter = []
    while True:
        s.skip_space()
        path = [s.token(_NAME, "a field name")]
        while s.peek("."):
            s.pos += 1
            path.append(s.token(_NAME, "a field name"))
        s.skip_space()
        op = next((o for o in ("==", "!=", "~=") if s.peek(o)), None)
        value, regex = "", None
        if op:
            s.pos += 2
            s.skip_space()
            value = s.token(_BARE, "a value")
            if op == "~=":
                try:
                    regex = re.compile(value)
                except re.error as e:
                    raise s.fail(f"bad regular expression ({e})") from None
        out.append(Selector(tuple(path), op, value, regex))
        s.skip_space()
        if s.pos == len(text):
            return out
        if not s.peek(","):
            raise s.fail("expected ','")
        s.pos += 1


def parse_all(texts: Sequence[str]) -> List[Filter]:
    return [parse(t) for t in texts if t.strip()]


def matches(filters: Sequence[Filter], field: Adaptor) -> bool:
    """No filters match everything; otherwise any filter whose every selector holds."""
    return not filters or any(all(sel.match(field) for sel in f) for f in filters)
