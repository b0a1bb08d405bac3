"""Where a container's lazy reads go, from the snapshotter's configuration, under real
containerd and runc: a registry mirror from `[remote] mirrors_config.dir` (containerd's
hosts.toml), with fallback to the origin when the mirror is down, and the `http-proxy`
backend from a `[daemon] nydusd_config` template. The image's documents and bootstrap
layer always come from the origin (containerd pulls them); the data blobs' ranged reads
go where the config says, and the origin's log shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nydus_hybrid.convert.store import open_source
from tests.helpers import servers
from tests.helpers.containerd import SNAPSHOTTER, Containerd
from tests.helpers.layers import debian_base, push_debian_nydus
from tests.helpers.snapshots import SnapshotterProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd and mounts need root")


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    servers.require_binary(servers.REGISTRY_BIN)
    registry = servers.Registry(tmp / "origin").start()
    try:
        image = push_debian_nydus(tmp, f"{registry.host}/debian:nydus")
        manifest = json.loads(open_source(image, plain_http=True).root()[1])
        yield registry, image, [d["digest"] for d in manifest["layers"][:-1]], tmp
    finally:
        registry.close()


def run_container(workdir: Path, config: str, image: str, name: str) -> str:
    """Our snapshotter with `config`, a containerd over it, a lazy pull of `image` and one
    container reading a few files; its output."""
    workdir.mkdir()
    cfg = workdir / "snapshotter.toml"
    cfg.write_text(config)
    snap = SnapshotterProcess(workdir / "sn", extra=["--config", str(cfg)]).start()
    ctd = Containerd(workdir / "ctd", snap.address)
    try:
        ctd.start()
        p = subprocess.run(
            [
                *(sys.executable, "-m", "nydus_hybrid", "pull", "-a", str(ctd.address), "-n", "test"),
                *("--plain-http", "--snapshotter", SNAPSHOTTER, image),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        run = ctd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, name, "/bin/sh", "-c", READS)
        time.sleep(0.2)  # access log lines follow their responses
        return run.stdout
    finally:
        ctd.stop()
        snap.stop()
        snap.reap_daemons()


READS = "cat /etc/debian_version; ls /usr/bin | wc -l; head -c 100000 /usr/bin/perl | wc -c"


def blob_gets(registry: servers.Registry, since: int, blobs: list[str]) -> list[tuple[str, int]]:
    return [
        (path, status)
        for meth, path, status in registry.request_log()[since:]
        if meth == "GET" and any(b in path for b in blobs)
    ]


def debian_version() -> str:
    import tarfile

    with tarfile.open(debian_base()) as t:
        f = t.extractfile("./etc/debian_version")
        assert f is not None
        return f.read().decode().strip()


def test_data_comes_from_the_mirror_and_from_the_origin_when_it_is_down(origin, tmp_path):
    registry, image, blobs, _ = origin
    mirror = servers.Registry(tmp_path / "mirror").start()
    try:
        subprocess.run(
            [
                *("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false"),
                *(f"docker://{image}", f"docker://{mirror.host}/debian:nydus"),
            ],
            check=True,
        )
        certs = tmp_path / "certs.d"
        (certs / registry.host).mkdir(parents=True)
        (certs / registry.host / "hosts.toml").write_text(
            f'server = "http://{registry.host}"\n'
            f'[host."http://{mirror.host}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            f'  ping_url = "http://{mirror.host}/v2/"\n'
        )
        config = (
            f'version = 1\n[remote]\nplain_http_registries = ["{registry.host}"]\n'
            f'[remote.mirrors_config]\ndir = "{certs}"\n'
        )
        start, mstart = len(registry.request_log()), len(mirror.request_log())
        out = run_container(tmp_path / "up", config, image, "mirror-up")
        assert out.split()[0] == debian_version() and int(out.split()[2]) == 100000, out
        assert not blob_gets(registry, start, blobs), "with the mirror up the origin serves no data blob"
        via_mirror = blob_gets(mirror, mstart, blobs)
        assert via_mirror and all(s == 206 for _, s in via_mirror), via_mirror

        # The mirror goes away: the same container on a fresh snapshotter (empty cache)
        # still starts, reading from the origin.
        mirror.stop()
        start = len(registry.request_log())
        out = run_container(tmp_path / "down", config, image, "mirror-down")
        assert out.split()[0] == debian_version(), out
        via_origin = blob_gets(registry, start, blobs)
        assert via_origin and all(s == 206 for _, s in via_origin), via_origin
    finally:
        mirror.close()


def test_http_proxy_from_a_template(origin, tmp_path):
    """`[daemon] nydusd_config` naming a v2 document with the http-proxy backend."""
    registry, image, blobs, _ = origin
    # The proxy serves the registry's own blob files by id, as a caching proxy in front of
    # it would.
    proxy = servers.BlobFileServer(
        "blobs", resolve=lambda name: registry.blob_path(f"sha256:{name}") if len(name) == 64 else None
    ).start()
    try:
        template = tmp_path / "nydusd.json"
        template.write_text(
            json.dumps(
                {
                    "version": 2,
                    "backend": {"type": "http-proxy", "http-proxy": {"addr": proxy.addr, "path": "blobs"}},
                    "cache": {"type": "blobcache", "filecache": {"work_dir": "/unused"}},
                    "rafs": {"mode": "direct", "enable_xattr": True},
                }
            )
        )
        config = (
            f'version = 1\n[daemon]\nnydusd_config = "{template}"\n'
            f'[remote]\nplain_http_registries = ["{registry.host}"]\n'
        )
        start = len(registry.request_log())
        out = run_container(tmp_path / "p", config, image, "http-proxy")
        assert out.split()[0] == debian_version(), out
        assert not blob_gets(registry, start, blobs), "the data came through the proxy"
        assert proxy.paths and all(p.startswith("/blobs/") and p[7:] in " ".join(blobs) for p in proxy.paths)
        cache = tmp_path / "p" / "sn" / "cache"
        assert any(cache.iterdir()), "the reads were cached in the snapshotter's cache, not the template's"
    finally:
        proxy.close()
