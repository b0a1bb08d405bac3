"""BlobCacheEntry checks of the singleton daemon (spec §5.7, §7.4): the legacy ``config``
the snapshotter sends becomes ``config_v2``; anything malformed is a 400 or a 500 with a
message, never an exception of another kind."""

from __future__ import annotations

import json
from typing import Any, Dict

from hypothesis import given, settings
from hypothesis import strategies as st

from nydus_hybrid.daemon.errors import BadRequest, DaemonError
from nydus_hybrid.daemon.fscache_service import check_entry, legacy_to_v2


def snapshotter_entry(tmp_path) -> Dict[str, Any]:
    boot = tmp_path / "boot"
    boot.write_bytes(b"x")
    (tmp_path / "w").mkdir(exist_ok=True)
    return {
        "type": "bootstrap",
        "id": "f",
        "domain_id": "d",
        "config": {
            "id": "f",
            "backend_type": "registry",
            "backend_config": {"host": "h", "repo": "r", "proxy": {"fallback": False}},
            "cache_type": "fscache",
            "cache_config": {"work_dir": str(tmp_path / "w")},
            "prefetch_config": {
                "enable": True,
                "threads_count": 8,
                "merging_size": 1048576,
                "bandwidth_rate": 0,
                "prefetch_all": False,
            },
            "metadata_path": str(boot),
        },
    }


def test_the_snapshotters_entry_converts(tmp_path):
    e = check_entry(snapshotter_entry(tmp_path))
    v2 = e["config_v2"]
    assert v2["version"] == 2 and v2["backend"] == {
        "type": "registry",
        "registry": {"host": "h", "repo": "r", "proxy": {"fallback": False}},
    }
    assert v2["cache"]["type"] == "fscache" and v2["cache"]["fscache"]["work_dir"].endswith("/w")
    assert v2["cache"]["prefetch"] == {
        "enable": True,
        "threads": 8,
        "batch_size": 1048576,
        "bandwidth_limit": 0,
        "prefetch_all": True,
    }
    assert v2["metadata_path"] == str(tmp_path / "boot")


def test_prefetch_config_needs_all_four_fields():
    try:
        legacy_to_v2(
            {
                "backend_type": "localfs",
                "backend_config": {},
                "cache_type": "fscache",
                "cache_config": {},
                "prefetch_config": {"enable": True, "threads_count": 1},
            }
        )
    except BadRequest as e:
        assert "prefetch_config" in e.message
    else:
        raise AssertionError("accepted a partial prefetch_config")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["type", "id", "domain_id", "config", "config_v2", "x"]), json_values, max_size=6)
)
def test_any_document_is_refused_cleanly_or_accepted_whole(doc):
    try:
        e = check_entry(doc)
    except DaemonError as err:  # BadRequest is a DaemonError: a 400 or a 500, with a message
        assert err.message and err.status in (400, 500)
    else:
        assert e["type"] == "bootstrap" and isinstance(e["config_v2"], dict)
        json.dumps(e)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["backend_type", "backend_config", "cache_type", "cache_config", "prefetch_config", "id", "metadata_path"]
        ),
        json_values,
        max_size=7,
    )
)
def test_any_legacy_config_converts_or_is_a_400(cfg):
    try:
        v2 = legacy_to_v2(cfg)
    except BadRequest as err:
        assert err.status == 400
    else:
        assert v2["version"] == 2 and v2["backend"]["type"] == cfg["backend_type"]


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_a_bad_cache_section_is_refused(tmp_path_factory, section):
    tmp = tmp_path_factory.mktemp("e")
    e = snapshotter_entry(tmp)
    legacy = e.pop("config")
    e["config_v2"] = {
        "version": 2,
        "backend": {"type": "localfs", "localfs": {}},
        "metadata_path": legacy["metadata_path"],
        "cache": {"type": "fscache", "fscache": section},
    }
    try:
        check_entry(e)
    except DaemonError as err:
        assert err.status in (400, 500)
