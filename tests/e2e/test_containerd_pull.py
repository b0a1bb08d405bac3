"""The product's main job, end to end on real parts: a Debian image converted to Nydus and
pushed to a real registry (Debian's docker-registry), pulled lazily into a real containerd
by `nydus-hybrid pull` (no data blob downloaded), and run by `ctr run` on runc over our
snapshotter. The container's output is right, the registry saw only ranged reads of the
data blobs, and the bytes fetched are a small part of the image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from nydus_hybrid.containerd.client import ContainerdError
from nydus_hybrid.containerd.cri import CriImages
from nydus_hybrid.convert.store import open_source
from tests.helpers import servers
from tests.helpers.containerd import SNAPSHOTTER, Containerd
from tests.helpers.layers import debian_base, push_debian_nydus, write_layout
from tests.helpers.snapshots import SnapshotterProcess, allocated_bytes, daemon_pids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd and mounts need root")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pull")
    servers.require_binary(servers.REGISTRY_BIN)
    registry = servers.Registry(tmp / "registry").start()
    snap = SnapshotterProcess(tmp / "snroot", extra=["--plain-http-registry", registry.host]).start()
    ctd = Containerd(tmp / "containerd", snap.address)
    try:
        ctd.start()
        image = push_debian_nydus(tmp, f"{registry.host}/debian:nydus")
        yield registry, snap, ctd, image, tmp
    finally:
        ctd.stop()
        snap.stop()
        snap.reap_daemons()
        registry.close()


def pull(ctd: Containerd, image: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "nydus_hybrid", "pull", "-a", str(ctd.address), "-n", "test", "--plain-http"),
            *("--snapshotter", SNAPSHOTTER, "--json", *extra, image),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def push_oci_image(registry: servers.Registry, tmp: Path) -> str:
    """The Debian base as an ordinary OCI image in the registry (pushed once)."""
    image = f"{registry.host}/debian:oci"
    layout = tmp / "oci-plain"
    if not layout.exists():
        write_layout(layout, [debian_base()], ["gzip"])
        subprocess.run(
            ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}", f"docker://{image}"], check=True
        )
    return image


def debian_version() -> str:
    with tarfile.open(debian_base()) as t:
        f = t.extractfile("./etc/debian_version")
        assert f is not None
        return f.read().decode().strip()


def test_a_lazy_pull_then_ctr_run(stack):
    registry, snap, ctd, image, _ = stack
    manifest = json.loads(open_source(image, plain_http=True).root()[1])
    data_blobs = [d["digest"] for d in manifest["layers"][:-1]]
    start = len(registry.request_log())

    p = pull(ctd, image)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["lazy_layers"] == len(data_blobs) and len(report["layers"]) == len(manifest["layers"])
    assert report["fetched_bytes"] < report["image_bytes"] / 10, report
    time.sleep(0.2)  # the access log line follows its response
    fetched = [path for meth, path, _ in registry.request_log()[start:] if meth == "GET"]
    assert not [x for x in fetched if any(b in x for b in data_blobs)], "the pull downloaded no data blob"
    # containerd knows the image, and sees it unpacked on our snapshotter.
    assert image in ctd.ctr("images", "ls", "-q").stdout.split()
    listed = ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    assert report["chain_id"] in listed

    before = len(registry.request_log())
    run = ctd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        image,
        "lazy1",
        "/bin/sh",
        "-c",
        "cat /etc/debian_version; echo written > /tmp/x; cat /tmp/x; ls /usr/bin | wc -l",
    )
    version, written, count = run.stdout.split()
    assert (version, written) == (debian_version(), "written") and int(count) > 50, run.stdout
    time.sleep(0.2)
    gets = [(path, s) for meth, path, s in registry.request_log()[before:] if meth == "GET" and "/blobs/" in path]
    assert gets and all(s == 206 for _, s in gets), f"data blobs are read by range only: {gets}"
    # What the container read came into the blob cache (uncompressed, whole 1 MiB chunks):
    # a small part of the image's 170 MB rootfs.
    cached = allocated_bytes(snap.root / "cache")
    rootfs = debian_base().stat().st_size
    assert 0 < cached < rootfs / 5, (cached, rootfs)

    # A second pull of the same image finds it unpacked and fetches only the documents.
    again = json.loads(pull(ctd, image).stdout)
    assert again["lazy_layers"] == 0 and again["fetched_bytes"] < 64 << 10

    # Removing the image: containerd's garbage collector removes its snapshots and calls
    # our Cleanup, which drops the blob cache's files of blobs no layer names any more
    # (A13's "the cache dir holds no files after all images are removed").
    ctd.ctr("images", "rm", "--sync", image)
    deadline = time.monotonic() + 30
    while allocated_bytes(snap.root / "cache") > 0 or [p for p in (snap.root / "cache").iterdir()]:
        assert time.monotonic() < deadline, sorted(p.name for p in (snap.root / "cache").iterdir())
        time.sleep(0.2)
    assert report["chain_id"] not in ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout


def test_an_oci_image_pulls_through_the_same_snapshotter(stack):
    """The fallback: every layer of an ordinary image is fetched, applied and committed."""
    registry, _, ctd, _, tmp = stack
    image = push_oci_image(registry, tmp)
    p = pull(ctd, image)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["lazy_layers"] == 0 and report["fetched_bytes"] >= report["image_bytes"] - (64 << 10)
    run = ctd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, "oci1", "cat", "/etc/debian_version")
    assert run.stdout.strip() == debian_version()


def test_bad_pulls_fail_with_one_line_and_leave_nothing(stack):
    registry, _, ctd, image, tmp = stack
    before = ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    for ref, why in [
        (f"{registry.host}/missing:1", "not found"),
        ("127.0.0.1:1/x:1", "connect"),
    ]:
        p = pull(ctd, ref)
        assert p.returncode == 1, p
        line = p.stderr.strip().splitlines()[-1]
        assert line.startswith("nydus-hybrid: error:") and why in line.lower(), p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "pull", "-a", str(tmp / "nowhere.sock"), image],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "containerd socket" in p.stderr, p.stderr
    assert ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout == before


def test_the_cri_pull_image_path(stack, tmp_path):
    """containerd's CRI plugin, configured with our snapshotter and the snapshot annotations
    on, pulls through `ImageService/PullImage` (our CRI client): the data layers are not
    downloaded, and a container runs from the image in the k8s.io namespace."""
    registry, _, _, image, _ = stack
    snap = SnapshotterProcess(tmp_path / "snroot", extra=["--plain-http-registry", registry.host]).start()
    ctd = Containerd(tmp_path / "containerd", snap.address, cri_registry=registry.host)
    try:
        ctd.start()
        manifest = json.loads(open_source(image, plain_http=True).root()[1])
        data_blobs = [d["digest"] for d in manifest["layers"][:-1]]
        start = len(registry.request_log())
        with CriImages(str(ctd.address)) as cri:
            image_id = cri.pull(image)
        assert image_id.startswith("sha256:")
        time.sleep(0.2)
        fetched = [path for meth, path, _ in registry.request_log()[start:] if meth == "GET"]
        assert not [x for x in fetched if any(b in x for b in data_blobs)], fetched
        # The CRI labels reached our snapshotter: the meta layer knows its image.
        listed = ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls", namespace="k8s.io").stdout
        assert len(listed.splitlines()) == 1 + len(manifest["layers"]), listed
        run = ctd.ctr(
            "run", "--rm", "--snapshotter", SNAPSHOTTER, image, "cri1", "cat", "/etc/debian_version", namespace="k8s.io"
        )
        assert run.stdout.strip() == debian_version()
    finally:
        ctd.stop()
        snap.stop()
        snap.reap_daemons()


def test_cri_credentials_reach_the_image_daemon(tmp_path):
    """`enable_cri_keychain`: the CRI client pulls through the snapshotter's socket (the
    kubelet's image endpoint), which forwards to containerd and keeps the pull's
    credentials; the image's daemon then reads the password-protected registry with them.
    Nothing else holds them (no config.json), so without the capture the container's reads
    would fail."""
    registry = servers.Registry(tmp_path / "registry", auth="htpasswd").start()
    root = Path(os.path.realpath(tmp_path))
    ctd_sock = root / "ctd" / "containerd.sock"
    config = root / "snapshotter.toml"
    config.write_text(
        "version = 1\n[remote]\n"
        f'plain_http_registries = ["{registry.host}"]\n'
        "[remote.auth]\nenable_cri_keychain = true\n"
        f'image_service_address = "{ctd_sock}"\n'
    )
    creds = f"{registry.user}:{registry.password}"
    snap = SnapshotterProcess(root / "sn", extra=["--config", str(config)]).start()
    ctd = Containerd(root / "ctd", snap.address, cri_registry=registry.host)
    try:
        ctd.start()
        image = push_debian_nydus(tmp_path, f"{registry.host}/private:nydus", creds)
        with CriImages(str(snap.address)) as cri:  # the snapshotter's socket, not containerd's
            with pytest.raises(ContainerdError):
                cri.pull(image)  # no credentials: the registry refuses, and the proxy says so
            assert cri.pull(image, creds).startswith("sha256:")
        run = ctd.ctr(
            "run",
            "--rm",
            "--snapshotter",
            SNAPSHOTTER,
            image,
            "auth1",
            "cat",
            "/etc/debian_version",
            namespace="k8s.io",
        )
        assert run.stdout.strip() == debian_version()
        assert "cri_credentials_captured" in snap.log.read_text()
    finally:
        ctd.stop()
        snap.stop()
        snap.reap_daemons()
        registry.close()


REMAP = ("--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536", "--remap-labels")
# Inside a user namespace the container's root sees its image's files as its own, and
# writes where it may: the owners below are as the container sees them.
IN_USERNS = "id -u; stat -c %u:%g /etc/passwd /usr/bin; echo new > /tmp/y && stat -c %u /tmp/y; cat /etc/debian_version"


@pytest.mark.parametrize("kind", ["nydus", "oci"])
def test_remap_ids_runs_a_container_in_a_user_namespace(stack, kind):
    """`ctr run --uidmap … --remap-labels` (capability remap-ids): the container's snapshot
    carries containerd's uidmapping/gidmapping labels, and its rootfs shows the image's
    files owned by the container's host ids. A Nydus image gets an id-mapped instance
    of its own (the daemon shifts the owners it reports); an OCI image's lower layers
    are idmapped binds. Without the shift root in the container would own nothing."""
    registry, snap, ctd, image, tmp = stack
    if kind == "oci":
        image = push_oci_image(registry, tmp)
    p = pull(ctd, image)
    assert p.returncode == 0, p.stderr
    name = f"remap-{kind}"
    run = ctd.ctr("run", "--rm", *REMAP, "--snapshotter", SNAPSHOTTER, image, name, "/bin/sh", "-c", IN_USERNS)
    uid, passwd, usr_bin, new, version = run.stdout.split()
    assert (uid, passwd, usr_bin, new, version) == ("0", "0:0", "0:0", "0", debian_version()), run.stdout
    # Seen from the host, the container's snapshot kept root's files at root and its own
    # writes went to the upper dir as host uid 100000; the shift lives only in its mounts.
    listed = ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    assert name not in listed, "the container's snapshot went with it"
    leftovers = [
        m
        for m in Path("/proc/self/mountinfo").read_text().splitlines()
        if f"{snap.root}/snapshots/" in m and "/lower/" in m
    ]
    assert not leftovers, leftovers


def test_a_container_over_an_unreachable_registry_is_one_clear_error(stack):
    """The image is pulled (its meta layer unpacked), then its registry goes down: the
    container's Prepare is refused with the registry named, before any daemon starts, and
    leaves no snapshot, instance or daemon; with the registry back the same run works."""
    registry, snap, ctd, image, _ = stack
    if image in ctd.ctr("images", "ls", "-q").stdout.split():
        ctd.ctr("images", "rm", "--sync", image)  # a fresh meta layer: no instance yet
    assert pull(ctd, image).returncode == 0
    snapshots = ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    daemons = daemon_pids(snap.root)
    registry.stop()
    try:
        run = ctd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, "down1", "true", check=False)
        assert run.returncode != 0 and "registry cannot be reached" in run.stderr, run.stderr
        assert registry.host in run.stderr, "the error names the registry"
        assert ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout == snapshots
        assert daemon_pids(snap.root) == daemons, "no daemon was started for it"
    finally:
        registry.start()
    run = ctd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image, "down2", "cat", "/etc/debian_version")
    assert run.stdout.strip() == debian_version()


def docker_config(path: Path, host: str, user: str, password: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"auths": {host: {"username": user, "password": password}}}))


def image_file_digest(name: str) -> str:
    import hashlib

    with tarfile.open(debian_base()) as t:
        f = t.extractfile(f"./{name}")
        assert f is not None
        return hashlib.sha256(f.read()).hexdigest()


def test_credential_renewal_follows_a_password_change(tmp_path):
    """`[remote.auth] credential_renewal_interval`: the registry's password changes while an
    image's daemon is serving a container. Reads of data not yet cached then fail (the
    daemon still holds the old password), until docker's config.json has the new one: the
    next renewal hands it to the running daemon (rewriting its config and PUT
    /api/v1/config), and the same reads succeed, with no restart of anything."""
    registry = servers.Registry(tmp_path / "registry", auth="htpasswd").start()
    assert registry.user is not None and registry.password is not None
    root = Path(os.path.realpath(tmp_path))
    docker_dir = root / "docker"
    docker_config(docker_dir, registry.host, registry.user, registry.password)
    config = root / "snapshotter.toml"
    config.write_text(
        f'version = 1\n[remote]\nplain_http_registries = ["{registry.host}"]\n'
        '[remote.auth]\ncredential_renewal_interval = "500ms"\n'
    )
    snap = SnapshotterProcess(root / "sn", extra=["--config", str(config)], env={"DOCKER_CONFIG": str(docker_dir)})
    snap.start()
    ctd = Containerd(root / "ctd", snap.address)
    try:
        ctd.start()
        creds = f"{registry.user}:{registry.password}"
        image = push_debian_nydus(tmp_path, f"{registry.host}/private:nydus", creds)
        assert pull(ctd, image, "--creds", creds).returncode == 0
        base = ["run", "--rm", "--snapshotter", SNAPSHOTTER, image]
        assert ctd.ctr(*base, "renew-1", "cat", "/etc/debian_version").stdout.strip() == debian_version()

        registry.change_password("rotated-pass")
        # Large files no container has read: most of their chunks are not in the blob cache.
        first, second = "usr/bin/perl", "usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"
        refused = ctd.ctr(*base, "renew-2", "sha256sum", f"/{first}", check=False)
        assert refused.returncode != 0, "the old password still read new data"

        updates = snap.log.read_text().count("instance_auth_updated")
        docker_config(docker_dir, registry.host, registry.user, "rotated-pass")
        deadline = time.monotonic() + 30
        while snap.log.read_text().count("instance_auth_updated") == updates:
            assert time.monotonic() < deadline, snap.log.read_text()[-3000:]
            time.sleep(0.2)
        for i, name in enumerate((first, second)):
            out = ctd.ctr(*base, f"renew-3-{i}", "sha256sum", f"/{name}").stdout
            assert out.split()[0] == image_file_digest(name), out
    finally:
        ctd.stop()
        snap.stop()
        snap.reap_daemons()
        registry.close()
