"""CLI commands over the storage layer: reading through a nydusd config, prefetch, cache GC
and blob upload. Errors stay one line with exit 1; usage errors exit 2."""

from __future__ import annotations

import json

from tests.helpers.cli import assert_one_line_error, cli


def _config(tmp_path, blobs, **cache) -> str:
    doc = {
        "version": 2,
        "backend": {"type": "localfs", "localfs": {"dir": str(blobs)}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(tmp_path / "cache")}, **cache},
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_prefetch_all_fills_the_cache_then_check_reads_through_the_config(built_cli, tmp_path):
    boot, blobs, _, _ = built_cli
    cfg = _config(tmp_path, blobs)
    out = json.loads(cli("prefetch", "-B", boot, "-C", cfg, "--all", "--no-progress", check=0).stdout)
    assert out["data_all_ready"] is True and out["errors"] == []
    assert out["prefetch_unmerged_chunks"] >= 3
    assert "chunks verified" in cli("check", "-B", boot, "-C", cfg, check=0).stdout


def test_prefetch_of_a_missing_path_is_a_one_line_error(built_cli, tmp_path):
    boot, blobs, _, _ = built_cli
    assert_one_line_error(cli("prefetch", "-B", boot, "-C", _config(tmp_path, blobs), "/no/such"), "not found")


def test_cache_gc_by_size(built_cli, tmp_path):
    boot, blobs, _, _ = built_cli
    cfg = _config(tmp_path, blobs)
    cli("prefetch", "-B", boot, "-C", cfg, "--all", "--no-progress", check=0)
    assert any((tmp_path / "cache").glob("*.blob.data"))
    report = json.loads(cli("cache-gc", "--work-dir", tmp_path / "cache", "--max-size", "0", check=0).stdout)
    assert len(report["removed"]) == 1 and report["freed_bytes"] > 0
    assert not any((tmp_path / "cache").iterdir())


def test_cache_gc_bad_age_is_usage_error(tmp_path):
    p = cli("cache-gc", "--work-dir", tmp_path, "--max-age", "soon")
    assert p.returncode == 2 and "invalid age" in p.stderr


def test_config_and_blob_dir_conflict(built_cli, tmp_path):
    boot, blobs, _, _ = built_cli
    p = cli("check", "-B", boot, "-D", blobs, "-C", _config(tmp_path, blobs))
    assert p.returncode == 2 and "not both" in p.stderr


def test_bad_config_names_the_field(built_cli, tmp_path):
    boot, _, _, _ = built_cli
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 2, "backend": {"type": "registry", "registry": {"repo": "x"}}}))
    assert_one_line_error(cli("check", "-B", boot, "-C", bad), "backend.registry.host: required")


def test_push_blob_needs_a_registry_backend(built_cli, tmp_path):
    _, blobs, _, _ = built_cli
    blob = next(blobs.iterdir())
    assert_one_line_error(cli("push-blob", "-C", _config(tmp_path, blobs), blob), "registry backend")
