"""The real `nydusctl` (nydus-rs 2.2.0) against our daemon: every subcommand, on a shared
daemon with instances mounted through nydusctl itself and on a dedicated one. nydusctl
deserializes parts of the answers strictly (a `null` where nydusd sends a string makes it
panic), so each call must exit 0 and print what it was sent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.helpers import reference
from tests.helpers.daemons import BuiltImage, Daemon, v1_config

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="the daemon mounts FUSE: needs root and /dev/fuse"
)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> BuiltImage:
    return BuiltImage(tmp_path_factory.mktemp("nydusctl-image"), tag="ctl")


def nydusctl(sock: str, *args: str) -> str:
    p = subprocess.run([reference.tool("nydusctl"), "--sock", sock, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"nydusctl {' '.join(args)}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "panicked" not in p.stderr, p.stderr
    return p.stdout


def instance_mountpoints(info_text: str) -> List[str]:
    lines = [ln.strip() for ln in info_text.splitlines()]
    return [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Instance Mountpoint")]


def v2_config(image: BuiltImage, cache: Path) -> Dict[str, Any]:
    return {
        "version": 2,
        "id": "",
        "backend": {"type": "localfs", "localfs": {"dir": str(image.blobs)}},
        "cache": {
            "type": "filecache",
            "filecache": {"work_dir": str(cache)},
            "prefetch": {"enable": True, "threads": 2, "batch_size": 262144},
        },
        "rafs": {"mode": "direct", "enable_xattr": True, "prefetch": {"enable": True}},
    }


def metrics_of_the_one_instance(sock: str) -> None:
    """nydusd answers an id-less metrics query only while exactly one instance has that kind
    of counter, so these run with one instance mounted."""
    backend = nydusctl(sock, "metrics", "backend")
    assert "Read Count" in backend and "Backend Type" in backend, backend
    cache = nydusctl(sock, "metrics", "cache")
    assert "Directory" in cache, cache
    fs = nydusctl(sock, "metrics", "fsstats")
    assert fs.strip(), fs


def test_every_subcommand_on_a_shared_daemon(image, tmp_path):
    d = Daemon(tmp_path / "d")
    try:
        empty = nydusctl(d.sock, "info")
        assert "RUNNING" in empty and instance_mountpoints(empty) == []
        v1 = tmp_path / "v1.json"
        v1.write_text(json.dumps(v1_config("/img1", image.blobs, tmp_path / "cache1")))
        v2 = tmp_path / "v2.json"
        v2.write_text(json.dumps(v2_config(image, tmp_path / "cache2")))
        nydusctl(d.sock, "mount", "-s", str(image.boot), "-c", str(v1), "-m", "/img1", "-t", "rafs")
        for rel, data in image.files.items():
            assert (d.mnt / "img1" / rel).read_bytes() == data
        info = nydusctl(d.sock, "info")
        assert instance_mountpoints(info) == ["/img1"], info
        assert "Mode:  direct" in info and "Prefetch:  false" in info, info
        metrics_of_the_one_instance(d.sock)
        nydusctl(d.sock, "set", "log-level", "debug")
        lines = [ln for ln in d.log.read_text().splitlines() if "log_level" in ln]
        assert lines and "debug" in lines[-1], d.log_text()

        nydusctl(d.sock, "mount", "-s", str(image.boot), "-c", str(v2), "-m", "/img2", "-t", "rafs")
        for rel, data in image.files.items():
            assert (d.mnt / "img2" / rel).read_bytes() == data
        info = nydusctl(d.sock, "info")
        assert sorted(instance_mountpoints(info)) == ["/img1", "/img2"], info
        assert "Prefetch:  true" in info and "Prefetch Merging Size:  262144" in info, info
        raw = json.loads(nydusctl(d.sock, "--raw", "info"))
        assert set(raw["backend_collection"]) == {"/img1", "/img2"}
        echo = raw["backend_collection"]["/img2"]["config"]
        assert echo["cache"]["filecache"]["work_dir"] == str(tmp_path / "cache2")
        assert echo["backend"]["localfs"]["blob_file"] == "" and echo["backend"]["registry"] is None
        assert raw["backend_collection"]["/img1"]["config"]["id"] == "/img1"

        # nydusctl 2.2 takes the mountpoint as a positional argument (its usage line says -m)
        nydusctl(d.sock, "umount", "/img1")
        after = nydusctl(d.sock, "info")
        assert instance_mountpoints(after) == ["/img2"], after
        assert not (d.mnt / "img1" / "hello.txt").exists()
        assert (d.mnt / "img2" / "hello.txt").read_bytes() == image.files["hello.txt"]
        metrics_of_the_one_instance(d.sock)
    finally:
        d.cleanup()


def test_info_on_a_dedicated_daemon(image, tmp_path):
    cfg = v1_config("/", image.blobs, tmp_path / "cache")
    d = Daemon(
        tmp_path / "d",
        config=cfg,
        bootstrap=image.boot,
        extra=["--id", "dedicated-1", "--supervisor", str(tmp_path / "sup.sock")],
    )
    try:
        info = nydusctl(d.sock, "info")
        assert instance_mountpoints(info) == ["/"], info
        raw = json.loads(nydusctl(d.sock, "--raw", "info"))
        assert raw["id"] == "dedicated-1"
        assert raw["backend_collection"]["/"]["config"]["id"] == "/"
        metrics_of_the_one_instance(d.sock)
    finally:
        d.cleanup()
