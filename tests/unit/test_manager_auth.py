"""Where an instance config keeps its registry credentials, in each shape the manager
writes (a v1 or v2 nydusd document, an fscache BlobCacheEntry)."""

from __future__ import annotations

from nydus_hybrid.manager.manager import registry_section


def test_the_registry_section_of_each_config_shape():
    v1 = {"device": {"backend": {"type": "registry", "config": {"host": "h"}}}}
    v2 = {"version": 2, "backend": {"type": "registry", "registry": {"host": "h"}}}
    entry = {"type": "bootstrap", "config": {"backend_type": "registry", "backend_config": {"host": "h"}}}
    for cfg in (v1, v2, entry):
        section = registry_section(cfg)
        assert section == {"host": "h"}
        section["auth"] = "x"  # the section is the document's own: an edit lands in it
        assert registry_section(cfg) == {"host": "h", "auth": "x"}


def test_other_backends_have_no_registry_section():
    assert registry_section({"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}}) is None
    assert registry_section({"version": 2, "backend": {"type": "http-proxy", "http-proxy": {}}}) is None
    assert registry_section({"config": {"backend_type": "oss", "backend_config": {}}}) is None
    assert registry_section({}) is None
    assert registry_section({"device": {"backend": {"type": "registry", "config": "not a table"}}}) is None
