"""containerd filter expressions (`snapshotter.filters`): the forms containerd clients send,
and any input either parses or is refused with InvalidArgument."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nydus_hybrid.snapshotter import filters
from nydus_hybrid.snapshotter.errors import InvalidArgument

FIELDS = {"name": "app", "kind": "committed", "labels.containerd.io/gc.root": "2026", "labels.team": "a,b"}


def field(path):
    return FIELDS.get(".".join(path))


@pytest.mark.parametrize(
    "expr, want",
    [
        ("name==app", True),
        ("name!=app", False),
        ("kind==committed,name==app", True),
        ("kind==committed,name==other", False),
        ('labels."containerd.io/gc.root"', True),
        ('labels."containerd.io/gc.root"==2026', True),
        ("labels.missing", False),
        ('labels.team=="a,b"', True),
        ("name~=^a.p$", True),
        ("name ~= ^x", False),
    ],
)
def test_the_forms_containerd_sends(expr, want):
    assert filters.matches([filters.parse(expr)], field) is want


def test_filters_are_alternatives_and_none_matches_all():
    assert filters.matches([], field)
    assert filters.matches([filters.parse("name==x"), filters.parse("kind==committed")], field)


@pytest.mark.parametrize("expr", ["", "==x", "name==", "name=x", "a..b", 'name=="open', "name~=(", "a,,b"])
def test_malformed_filters_are_refused(expr):
    with pytest.raises(InvalidArgument):
        filters.parse(expr)


@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused(text):
    try:
        f = filters.parse(text)
    except InvalidArgument:
        return
    assert f and all(sel.path for sel in f)
    filters.matches([f], field)  # and matching never raises
