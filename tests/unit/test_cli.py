"""The nydus-hybrid command line, run as a subprocess: exit codes, one-line errors, and the
JSON it prints or writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

import nydus_hybrid
from tests.helpers.cli import B_SIZE, assert_one_line_error, cli
from tests.helpers.images import FIXTURE_BLOB_ID, FIXTURE_INLINE_ID, FIXTURES

# --- version and usage ---------------------------------------------------------------------


def test_version():
    p = cli("--version", check=0)
    lines = p.stdout.splitlines()
    assert any(line.startswith("Git Commit:") for line in lines), p.stdout
    assert any(nydus_hybrid.__version__ in line for line in lines), p.stdout


def test_no_command_is_usage_error():
    p = cli()
    assert p.returncode == 2
    assert "usage" in p.stderr.lower()


def test_unknown_command_is_usage_error():
    assert cli("frobnicate").returncode == 2


# --- build ---------------------------------------------------------------------------------


def test_build_report(built_cli, small_src):
    boot, blobs, report_path, p = built_cli
    printed = json.loads(p.stdout)
    written = json.loads(report_path.read_text())
    assert printed == written
    for key in (
        "blob_id",
        "blob_path",
        "blob_size",
        "bootstrap_size",
        "inodes",
        "files",
        "bytes_in",
        "chunks",
        "deduped_chunks",
        "uncompressed_size",
        "dedup_ratio",
        "bootstrap",
    ):
        assert key in written, key
    blob = blobs / written["blob_id"]
    assert blob.is_file()
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == written["blob_id"]
    assert written["blob_size"] == blob.stat().st_size
    assert written["bootstrap_size"] == boot.stat().st_size
    assert written["bytes_in"] == 6000 * 2 + B_SIZE
    assert written["files"] == 3
    assert written["chunks"] == 4 and written["deduped_chunks"] == 1
    assert written["dedup_ratio"] > 1
    assert p.stderr == ""  # no progress bar when not on a terminal


def test_create_alias_same_image(built_cli, small_src, tmp_path):
    boot, _blobs, _, p_build = built_cli
    p = cli(
        "create",
        small_src,
        "-B",
        tmp_path / "boot",
        "-D",
        tmp_path / "blobs",
        "--no-progress",
        "-t",
        "dir-rafs",
        "-v",
        "6",
        "--features",
        "blob-toc",
        check=0,
    )
    assert json.loads(p.stdout)["blob_id"] == json.loads(p_build.stdout)["blob_id"]
    assert (tmp_path / "boot").read_bytes() == boot.read_bytes()


@pytest.mark.parametrize("size,expected", [("4K", 0x1000), ("0x4000", 0x4000), ("64KiB", 0x10000), ("2M", 0x200000)])
def test_build_chunk_size_accepted(small_src, tmp_path, size, expected):
    cli("build", small_src, "-B", tmp_path / "boot", "-D", tmp_path / "blobs", "-S", size, check=0)
    im = nydus_hybrid.Image.open(tmp_path / "boot", tmp_path / "blobs")
    assert im.inspect()["superblock"]["chunk_size"] == expected
    assert im.read("/sub/b.bin") == (small_src / "sub" / "b.bin").read_bytes()


@pytest.mark.parametrize("size", ["abc", "1.5M", "-4K", "4G"])
def test_build_bad_chunk_size_syntax(small_src, tmp_path, size):
    p = cli("build", small_src, "-B", tmp_path / "boot", "-D", tmp_path / "blobs", "-S", size)
    assert p.returncode == 2, p.stderr
    assert "chunk-size" in p.stderr or "chunk size" in p.stderr
    assert not (tmp_path / "boot").exists()


@pytest.mark.parametrize("size", ["3K", "0", "32M", "2K"])
def test_build_bad_chunk_size_value(small_src, tmp_path, size):
    p = cli("build", small_src, "-B", tmp_path / "boot", "-D", tmp_path / "blobs", "-S", size)
    assert p.returncode == 2, p.stderr
    assert "chunk" in p.stderr
    assert not (tmp_path / "boot").exists()


def test_build_bad_chunk_size_value_is_one_line(small_src, tmp_path):
    """Whatever the exit code, the message is one line and nothing is left behind."""
    p = cli("build", small_src, "-B", tmp_path / "boot", "-D", tmp_path / "blobs", "-S", "3K")
    assert p.returncode in (1, 2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "chunk size" in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "boot").exists()


def test_build_missing_source(tmp_path):
    p = cli("build", tmp_path / "nope", "-B", tmp_path / "boot", "-D", tmp_path / "blobs")
    assert_one_line_error(p, "nope")
    assert not (tmp_path / "boot").exists()


def test_build_bad_choices(small_src, tmp_path):
    assert cli("build", small_src, "-B", tmp_path / "b", "-D", tmp_path / "d", "-c", "gzip").returncode == 2
    assert cli("build", small_src, "-B", tmp_path / "b", "-D", tmp_path / "d", "-d", "md5").returncode == 2
    assert cli("build", small_src, "-B", tmp_path / "b", "-D", tmp_path / "d", "--features", "bogus").returncode == 2
    assert cli("build", small_src, "-B", tmp_path / "b", "-D", tmp_path / "d", "-t", "tar-rafs").returncode == 2
    assert cli("build", small_src, "-D", tmp_path / "d").returncode == 2  # -B is required
    assert not (tmp_path / "b").exists()


# --- inspect / check -----------------------------------------------------------------------


def test_inspect_json(built_cli):
    boot, _, report_path, _ = built_cli
    doc = json.loads(cli("inspect", "-B", boot, check=0).stdout)
    assert {"superblock", "blobs", "counts"} <= set(doc)
    report = json.loads(report_path.read_text())
    assert [b["blob_id"] for b in doc["blobs"]] == [report["blob_id"]]
    assert doc["superblock"]["root_nid"] > 0
    assert doc["superblock"]["chunk_size"] == 0x100000
    assert doc["counts"]["regular_files"] == 3
    assert doc["counts"]["symlinks"] == 1
    assert doc["counts"]["file_bytes"] == report["bytes_in"]


def test_inspect_fixture():
    doc = json.loads(cli("inspect", "-B", FIXTURES / "rafs-v6-2.2.boot", check=0).stdout)
    assert doc["superblock"]["root_nid"] == 128
    assert doc["superblock"]["inodes"] == 3
    assert doc["blobs"][0]["blob_id"] == FIXTURE_BLOB_ID
    assert doc["blobs"][0]["chunk_count"] == 2
    assert doc["counts"]["regular_files"] == 2


def test_inspect_inline_blob():
    doc = json.loads(cli("inspect", "--blob", FIXTURES / FIXTURE_INLINE_ID, check=0).stdout)
    assert doc["counts"]["regular_files"] == 3
    assert doc["blobs"][0]["blob_id"] == FIXTURE_INLINE_ID


def test_check_ok(built_cli, tmp_path):
    boot, blobs, _, _ = built_cli
    p = cli("check", "-B", boot, "-D", blobs, "-J", tmp_path / "check.json", check=0)
    assert p.stdout.startswith("ok: ")
    assert "4 chunks verified" in p.stdout
    rep = json.loads((tmp_path / "check.json").read_text())
    assert rep["chunks_verified"] == 4 and rep["regular_files"] == 3
    p = cli("check", "-B", boot, check=0)
    assert p.stdout.startswith("ok: ") and "bootstrap only" in p.stdout


def test_check_fixture_and_inline_blob():
    p = cli("check", "-B", FIXTURES / "rafs-v6-2.2.boot", "-D", FIXTURES, check=0)
    assert p.stdout.startswith("ok: ") and "2 chunks verified" in p.stdout
    p = cli("check", "--blob", FIXTURES / FIXTURE_INLINE_ID, check=0)
    assert p.stdout.startswith("ok: ") and "3 chunks verified" in p.stdout


@pytest.mark.parametrize("cmd", ["inspect", "check"])
def test_missing_bootstrap_file(cmd, tmp_path):
    p = cli(cmd, "-B", tmp_path / "missing.boot")
    assert_one_line_error(p, "missing.boot")


def test_missing_bootstrap_option():
    p = cli("check")
    assert p.returncode == 2
    assert "--bootstrap" in p.stderr


def test_check_missing_blob(built_cli, tmp_path):
    boot, _, report_path, _ = built_cli
    p = cli("check", "-B", boot, "-D", tmp_path)
    assert_one_line_error(p, json.loads(report_path.read_text())["blob_id"])


def test_check_corrupt_blob(built_cli, tmp_path):
    boot, blobs, report_path, _ = built_cli
    blob_id = json.loads(report_path.read_text())["blob_id"]
    bad = tmp_path / "blobs"
    bad.mkdir()
    data = bytearray((blobs / blob_id).read_bytes())
    data[100] ^= 0xFF  # inside the first compressed chunk
    (bad / blob_id).write_bytes(bytes(data))
    assert_one_line_error(cli("check", "-B", boot, "-D", bad))


def test_not_a_bootstrap(tmp_path):
    junk = tmp_path / "junk.boot"
    junk.write_bytes(b"\0" * 8192)
    assert_one_line_error(cli("inspect", "-B", junk))
    junk.write_bytes(b"")
    assert_one_line_error(cli("check", "-B", junk))


# --- unpack / export -----------------------------------------------------------------------


def test_unpack_tar_and_dir(built_cli, small_src, tmp_path):
    boot, blobs, _, _ = built_cli
    p = cli("unpack", "-B", boot, "-D", blobs, "-o", tmp_path / "out.tar", check=0)
    rep = json.loads(p.stdout)
    assert rep["entries"] == 6 and rep["skipped_sockets"] == 0
    assert (tmp_path / "out.tar").stat().st_size > 0
    p = cli("unpack", "-B", boot, "-D", blobs, "--output-dir", tmp_path / "out", check=0)
    assert json.loads(p.stdout)["bytes"] == 6000 * 2 + B_SIZE
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == (small_src / "sub" / "b.bin").read_bytes()
    assert os.readlink(tmp_path / "out" / "link") == "a.txt"
    # a second unpack into the now non-empty directory fails cleanly
    assert_one_line_error(cli("unpack", "-B", boot, "-D", blobs, "--output-dir", tmp_path / "out"), "not empty")


def test_unpack_needs_exactly_one_output(built_cli, tmp_path):
    boot, blobs, _, _ = built_cli
    assert cli("unpack", "-B", boot, "-D", blobs).returncode == 2
    p = cli("unpack", "-B", boot, "-D", blobs, "-o", tmp_path / "t.tar", "--output-dir", tmp_path / "d")
    assert p.returncode == 2
    assert not (tmp_path / "t.tar").exists() and not (tmp_path / "d").exists()


def test_export(built_cli, tmp_path):
    boot, blobs, _, _ = built_cli
    p = cli("export", "--block", "-B", boot, "-D", blobs, "-o", tmp_path / "img.erofs", check=0)
    assert json.loads(p.stdout)["output"] == str(tmp_path / "img.erofs")
    assert (tmp_path / "img.erofs").read_bytes()[1024:1028] == bytes.fromhex("e2e1f5e0")  # EROFS magic, LE
    p = cli("export", "--flat-blob", "0", "-B", boot, "-D", blobs, "-o", tmp_path / "flat", check=0)
    im = nydus_hybrid.Image.open(boot, blobs)
    assert (tmp_path / "flat").stat().st_size == im.inspect()["blobs"][0]["uncompressed_size"]
    assert cli("export", "-B", boot, "-D", blobs, "-o", tmp_path / "x").returncode == 2  # no mode
    assert cli("export", "--block", "--flat-blob", "0", "-B", boot, "-o", tmp_path / "x").returncode == 2
    assert_one_line_error(cli("export", "--flat-blob", "7", "-B", boot, "-D", blobs, "-o", tmp_path / "x"))


def test_export_missing_blob(built_cli, tmp_path):
    boot, _, _, _ = built_cli
    assert_one_line_error(cli("export", "--block", "-B", boot, "-D", tmp_path, "-o", tmp_path / "x"))


def test_build_blob_file_option(small_src, tmp_path):
    """nydus-image's -b FILE: the blob lands at FILE, keeps its id (sha256 of its bytes),
    and no temporary directory is left next to it."""
    blob = tmp_path / "out" / "layer.blob"
    blob.parent.mkdir()
    p = cli(
        "build", small_src, "-B", tmp_path / "boot", "-b", blob, "--prefetch-policy", "fs", "--no-progress", check=0
    )
    report = json.loads(p.stdout)
    assert report["blob_path"] == str(blob)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == report["blob_id"]
    assert sorted(os.listdir(blob.parent)) == ["layer.blob"]
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    os.rename(blob, blobs / report["blob_id"])
    cli("check", "-B", tmp_path / "boot", "-D", blobs, check=0)


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((), "--blob-dir"),
        (("-D", "blobs", "--blob-inline-meta"), "--blob-inline-meta"),
        (("-D", "blobs", "--prefetch-policy", "blob"), "prefetch-policy"),
    ],
)
def test_build_usage_errors_are_one_line(small_src, tmp_path, args, fragment):
    p = cli("build", small_src, "-B", tmp_path / "boot", *args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], p.stderr
    assert not (tmp_path / "boot").exists()


def test_ctrl_c_cancels_a_build_cleanly(tmp_path):
    """SIGINT during a build stops it (exit 130, one line) and leaves no bootstrap and no
    temporary blob behind."""
    import signal
    import time

    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):  # 96 MiB of incompressible data: about a second of work
        (src / f"f{i}").write_bytes(os.urandom(4 << 20))
    blobs = tmp_path / "blobs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nydus_hybrid",
            "build",
            str(src),
            "-B",
            str(tmp_path / "boot"),
            "-D",
            str(blobs),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (blobs.exists() and os.listdir(blobs)) and time.monotonic() < deadline:
        time.sleep(0.01)  # the temporary blob exists once the build is under way
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines() == ["nydus-hybrid: interrupted; partial outputs were removed"], err
    assert not (tmp_path / "boot").exists()
    assert os.listdir(blobs) == []
    assert sorted(os.listdir(tmp_path)) == ["blobs", "src"]  # no temporary bootstrap either
