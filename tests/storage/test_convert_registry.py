"""`nydus-hybrid convert` between real registries (Debian's docker-registry on 127.0.0.1):
a Debian base layer (mmdebstrap) plus layers that add, change and delete files and replace a
directory with an opaque whiteout, pushed with the real `skopeo`. The converted image is
checked by the real `nydus-image check` and mounted lazily by the real `nydusd` from the
registry, which must serve the flattened OCI rootfs. Then the faults: bad digests, a
registry cut off halfway, refused credentials, hostile documents and tars, missing blobs;
each ends in a one-line error and the target tag never appears."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from nydus_hybrid import Image, _core, errors, treecmp
from nydus_hybrid.convert import oci
from nydus_hybrid.convert.convert import ConvertOptions, convert
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.convert.registry import ACCEPT, client_config
from nydus_hybrid.convert.store import open_source, open_target
from tests.helpers import reference, servers
from tests.helpers.daemons import Daemon, v1_config
from tests.helpers.layers import debian_layers, flatten, tar_dir, write_layout

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the Debian layers and mounts need root")


def skopeo_copy(src: str, dst: str, *extra: str) -> None:
    servers.require_binary("/usr/bin/skopeo")
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", *extra, src, dst],
        check=True,
        timeout=600,
    )


def client(reg: servers.Registry, repo: str, creds: str | None = None) -> _core.RegistryClient:
    ref = parse_registry(f"{reg.host}/{repo}:x")
    return _core.RegistryClient(json.dumps(client_config(ref, plain_http=True, creds=creds)))


def tag_exists(reg: servers.Registry, repo: str, tag: str, creds: str | None = None) -> bool:
    try:
        client(reg, repo, creds).get_manifest(tag, ACCEPT)
        return True
    except errors.NotFoundError:
        return False


def cli(*args: str, input: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "convert", *args],
        capture_output=True,
        text=True,
        timeout=900,
        input=input.decode(),
    )


@pytest.fixture(scope="module")
def debian(tmp_path_factory) -> Iterator[Tuple[servers.Registry, Path, Path, Dict[str, Any], List[Path]]]:
    """The registry, holding `debian:oci` (4 layers: tar+gzip, tar+zstd, tar+gzip, tar),
    the flattened rootfs, the OCI layout it was pushed from, its config and layer tars."""
    servers.require_binary(servers.REGISTRY_BIN)
    tmp = tmp_path_factory.mktemp("debian")
    tars = debian_layers(tmp)
    layout = tmp / "oci"
    config = write_layout(layout, tars, ["gzip", "zstd", "gzip", "tar"])
    rootfs = tmp / "rootfs"
    flatten(tars, rootfs)
    reg = servers.Registry(tmp / "registry").start()
    try:
        skopeo_copy(f"oci:{layout}", f"docker://{reg.host}/debian:oci")
        yield reg, rootfs, layout, config, tars
    finally:
        reg.close()


def read_image(reg: servers.Registry, repo: str, tag: str, out: Path) -> Tuple[Dict[str, Any], Path]:
    """The Nydus manifest at a tag, and its bootstrap extracted to `out`."""
    c = client(reg, repo)
    _, _, body = c.get_manifest(tag, ACCEPT)
    m = json.loads(body)
    layer = out.with_suffix(".layer")
    c.fetch_blob(m["layers"][-1]["digest"], str(layer))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.read_bytes()))) as t:
        f = t.extractfile("image/image.boot")
        assert f is not None
        out.write_bytes(f.read())
    return m, out


def test_a_debian_image_converts_registry_to_registry_and_nydusd_serves_it_lazily(debian, tmp_path):
    reg, rootfs, _, config, _ = debian
    p = cli(f"{reg.host}/debian:oci", f"{reg.host}/debian:nydus", "--plain-http", "--no-cache")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["totals"]["layers"] == 4 and report["totals"]["layers_reused"] == 0
    m, boot = read_image(reg, "debian", "nydus", tmp_path / "image.boot")
    assert report["digest"] == oci.sha256_digest(client(reg, "debian").get_manifest("nydus", ACCEPT)[2])
    data = m["layers"][:-1]
    assert [d["mediaType"] for d in data] == [oci.NYDUS_BLOB] * 4
    assert m["layers"][-1]["annotations"][oci.ANNOTATION_NYDUS_BOOTSTRAP] == "true"
    assert m["layers"][-1]["annotations"][oci.ANNOTATION_FS_VERSION] == "6"
    cfg = json.loads(open_source(f"{reg.host}/debian:nydus", plain_http=True).document_bytes(m["config"]))
    assert cfg["rootfs"]["diff_ids"] == [d["annotations"][oci.ANNOTATION_UNCOMPRESSED] for d in m["layers"]]
    assert cfg["history"] == config["history"] and cfg["config"] == config["config"]

    # The real checker takes the merged bootstrap (blobs fetched for the check).
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for d in data:
        client(reg, "debian").fetch_blob(d["digest"], str(blobs / d["digest"][7:]))
    reference.check(boot, blobs)

    # The real nydusd, reading lazily from the registry, serves the flattened OCI rootfs.
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    cache.mkdir()
    nydusd_config = {
        "device": {
            "backend": {"type": "registry", "config": {"scheme": "http", "host": reg.host, "repo": "debian"}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}},
        },
        "mode": "direct",
        "digest_validate": False,
        "enable_xattr": True,
    }
    nydusd = reference.Nydusd(tmp_path / "nydusd", nydusd_config, boot, mnt)
    try:
        diff = treecmp.compare(str(rootfs), str(mnt))
        assert diff.entries > 3000
        real = [d for d in diff.differences if ": mtime 0 != " not in d]  # nydusd 2.2's mtime-0 quirk
        assert real == [], real[:10]
        assert not (mnt / "opt/app/remove-me").exists() and not (mnt / "usr/bin/tac").exists()
        assert sorted(os.listdir(mnt / "usr/share/doc")) == ["README"]
        assert (mnt / "etc/debian_version").read_bytes() == b"changed by the app layer\n"
    finally:
        nydusd.stop()


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "check", "--plain-http", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("how", ["reader", "daemon"])
def test_check_compares_the_nydus_image_with_its_oci_source(debian, tmp_path, how):
    reg, _, _, _, tars = debian
    src, dst = f"{reg.host}/debian:oci", f"{reg.host}/checked:nydus"
    convert(open_source(src, plain_http=True), open_target(dst, plain_http=True), ConvertOptions())
    mount = ["--mount"] if how == "daemon" else []
    p = check("--source", src, "--target", dst, *mount)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["read_by"] == how
    (plat,) = report["platforms"]
    assert plat["platform"] == "linux/amd64" and plat["entries"] > 3000 and plat["differences"] == []

    # A Nydus image of only the lower three layers is not the OCI image: check says where.
    short = tmp_path / "short"
    write_layout(short, tars[:3], ["gzip", "gzip", "gzip"])
    convert(open_source(f"oci:{short}"), open_target(f"{reg.host}/checked:short", plain_http=True), ConvertOptions())
    p = check("--source", src, "--target", f"{reg.host}/checked:short", *mount)
    assert p.returncode == 1, p.stderr
    diffs = json.loads(p.stdout)["platforms"][0]["differences"]
    assert "/opt/app/hello: missing" in diffs and "/opt/app/remove-me: unexpected" in diffs
    assert len(p.stderr.splitlines()) == 1 and "differences" in p.stderr


def test_the_prefetch_table_of_a_converted_image_is_fetched_before_the_first_read(debian, tmp_path):
    """`--prefetch-patterns` puts /opt/app in the merged bootstrap's prefetch table; our
    daemon, with fs_prefetch on, fills its 3 MiB from the registry before anything is read,
    so reading it then costs no backend read, while a file outside the table still does."""
    reg, rootfs, _, _, _ = debian
    p = cli(
        f"{reg.host}/debian:oci",
        f"{reg.host}/prefetch:nydus",
        "--plain-http",
        "--prefetch-patterns",
        input=b"/opt/app\n",
    )
    assert p.returncode == 0, p.stderr
    _, boot = read_image(reg, "prefetch", "nydus", tmp_path / "image.boot")
    assert Image.open(boot).inspect()["superblock"]["prefetch_table"][1] == 4, "one entry: /opt/app"
    cfg = v1_config(
        "/", "", tmp_path / "cache", type="registry", config={"scheme": "http", "host": reg.host, "repo": "prefetch"}
    )
    cfg["fs_prefetch"] = {"enable": True, "threads_count": 2}
    (tmp_path / "cache").mkdir()
    d = Daemon(tmp_path / "d", config=cfg, bootstrap=boot)
    try:
        c = d.client()
        deadline = time.monotonic() + 60
        while c.get("/api/v1/metrics/blobcache").body["prefetch_data_amount"] < 3 << 20:
            assert time.monotonic() < deadline, c.get("/api/v1/metrics/blobcache").body
            time.sleep(0.1)
        before = c.get("/api/v1/metrics/backend").body
        assert before["read_amount_total"] >= 3 << 20, before
        assert (d.mnt / "opt/app/data.bin").read_bytes() == (rootfs / "opt/app/data.bin").read_bytes()
        assert c.get("/api/v1/metrics/backend").body["read_count"] == before["read_count"], "it was prefetched"
        assert (d.mnt / "usr/bin/bash").read_bytes() == (rootfs / "usr/bin/bash").read_bytes()
        assert c.get("/api/v1/metrics/backend").body["read_count"] > before["read_count"], "bash was not listed"
    finally:
        d.cleanup()


def test_a_chunk_dictionary_stores_and_pushes_only_new_chunks(debian, tmp_path):
    """Image B's base is the same files as image A, packed again (other tar bytes, so no
    layer digest matches). With A's bootstrap as the chunk dictionary, B's blobs hold only
    what A lacks; B's manifest appends the A blobs it reads, and B reads back whole."""
    reg, rootfs, _, _, _ = debian
    a = convert(
        open_source(f"{reg.host}/debian:oci", plain_http=True),
        open_target(f"{reg.host}/dict:a", plain_http=True),
        ConvertOptions(),
    )
    _, a_boot = read_image(reg, "dict", "a", tmp_path / "a.boot")
    extra = tmp_path / "extra"
    (extra / "srv").mkdir(parents=True)
    (extra / "srv/new.bin").write_bytes(os.urandom(1 << 20))
    layers = [tar_dir(rootfs, tmp_path / "rebase.tar"), tar_dir(extra, tmp_path / "extra.tar")]
    write_layout(tmp_path / "b", layers, ["gzip", "gzip"])
    src = open_source(f"oci:{tmp_path / 'b'}")
    plain = convert(src, open_target(f"{reg.host}/dict:b-plain", plain_http=True), ConvertOptions())
    deduped = convert(src, open_target(f"{reg.host}/dict:b", plain_http=True), ConvertOptions(chunk_dict=a_boot))
    assert plain.totals["dict_chunks"] == 0 and deduped.totals["dict_chunks"] > 100
    assert deduped.totals["pushed_bytes"] < plain.totals["pushed_bytes"] / 4, (plain.totals, deduped.totals)
    m, b_boot = read_image(reg, "dict", "b", tmp_path / "b.boot")
    own = {lr.blob for lr in deduped.platforms[0].layers}
    appended = [d["digest"] for d in m["layers"][:-1] if d["digest"] not in own]
    assert appended and set(appended) <= {lr.blob for lr in a.platforms[0].layers}
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for d in m["layers"][:-1]:
        client(reg, "dict").fetch_blob(d["digest"], str(blobs / d["digest"][7:]))
    reference.check(b_boot, blobs)  # the real checker maps every chunk to a listed blob
    p = check("--source", f"oci:{tmp_path / 'b'}", "--target", f"{reg.host}/dict:b")
    assert p.returncode == 0, p.stderr


def test_the_layer_cache_reuses_every_layer_and_the_result_is_the_same(debian, tmp_path):
    reg, _, _, _, _ = debian
    opts = ConvertOptions(cache=tmp_path / "cache")
    src = open_source(f"{reg.host}/debian:oci", plain_http=True)
    first = convert(src, open_target(f"{reg.host}/cached:one", plain_http=True), opts)
    second = convert(src, open_target(f"{reg.host}/cached:two", plain_http=True), opts)
    assert first.totals["layers_reused"] == 0 and second.totals["layers_reused"] == 4
    assert second.digest == first.digest, "the same layers and options give the same image"
    assert second.totals["pushed_bytes"] == 0, "the target had every blob already"
    # A damaged cache entry is dropped and the layer built again.
    victim = next((tmp_path / "cache").rglob("blob"))
    victim.write_bytes(b"damaged")
    third = convert(src, open_target(f"{reg.host}/cached:three", plain_http=True), opts)
    assert third.totals["layers_reused"] == 3 and third.digest == first.digest


def test_a_docker_archive_and_a_layout_convert_to_the_same_image(debian, tmp_path):
    _, _, _, _, tars = debian
    layout = tmp_path / "gzip"  # a docker archive cannot carry zstd layers
    write_layout(layout, tars, ["gzip", "gzip", "gzip", "tar"])
    archive = tmp_path / "debian.tar"
    skopeo_copy(f"oci:{layout}", f"docker-archive:{archive}:debian:latest")
    opts = ConvertOptions()
    from_archive = convert(open_source(f"docker-archive:{archive}"), open_target(f"oci:{tmp_path / 'a'}"), opts)
    from_layout = convert(open_source(f"oci:{layout}"), open_target(f"oci:{tmp_path / 'b'}"), opts)
    blobs = lambda r: [lr.blob for lr in r.platforms[0].layers]  # noqa: E731
    assert blobs(from_archive) == blobs(from_layout), "the same layer bytes give the same blobs"


def test_multi_platform_index_each_platform_and_merge_platform(debian, tmp_path):
    reg, _, layout, config, _ = debian
    # An index of two platforms over the same layers (only the configs differ).
    index_layout = tmp_path / "multi"
    shutil.copytree(layout, index_layout)
    blobs = index_layout / "blobs/sha256"
    entry = json.loads((index_layout / "index.json").read_text())["manifests"][0]
    amd = json.loads((blobs / entry["digest"][7:]).read_bytes())
    arm_cfg = oci.canonical({**config, "architecture": "arm64", "variant": "v8"})
    (blobs / oci.sha256_digest(arm_cfg)[7:]).write_bytes(arm_cfg)
    arm = oci.canonical({**amd, "config": oci.descriptor(oci.CONFIG, arm_cfg)})
    (blobs / oci.sha256_digest(arm)[7:]).write_bytes(arm)
    # And an attestation, as buildx lists one: a manifest for unknown/unknown, not an image.
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    (blobs / oci.sha256_digest(statement)[7:]).write_bytes(statement)
    empty = b"{}"
    (blobs / oci.sha256_digest(empty)[7:]).write_bytes(empty)
    att = oci.canonical(
        {
            "schemaVersion": 2,
            "mediaType": oci.MANIFEST,
            "config": oci.descriptor(oci.CONFIG, empty),
            "layers": [oci.descriptor("application/vnd.in-toto+json", statement)],
        }
    )
    (blobs / oci.sha256_digest(att)[7:]).write_bytes(att)
    att_entry = oci.descriptor(
        oci.MANIFEST,
        att,
        {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": entry["digest"]},
        platform={"os": "unknown", "architecture": "unknown"},
    )
    index = oci.canonical(
        {
            "schemaVersion": 2,
            "mediaType": oci.INDEX,
            "manifests": [
                entry,
                oci.descriptor(oci.MANIFEST, arm, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
                att_entry,
            ],
        }
    )
    (blobs / oci.sha256_digest(index)[7:]).write_bytes(index)
    (index_layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [oci.descriptor(oci.INDEX, index)]})
    )
    skopeo_copy(f"oci:{index_layout}", f"docker://{reg.host}/multi:oci", "--all")

    r = convert(
        open_source(f"{reg.host}/multi:oci", plain_http=True),
        open_target(f"{reg.host}/multi:nydus", plain_http=True),
        ConvertOptions(),
    )
    assert r.media_type == oci.INDEX and [p.platform for p in r.platforms] == ["linux/amd64", "linux/arm64/v8"]
    assert r.totals["layers"] == 4, "a layer both platforms share is converted once"
    out = json.loads(client(reg, "multi").get_manifest("nydus", ACCEPT)[2])
    assert [m["platform"]["architecture"] for m in out["manifests"]] == ["amd64", "arm64"]

    one = convert(
        open_source(f"{reg.host}/multi:oci", plain_http=True),
        open_target(f"{reg.host}/multi:arm", plain_http=True),
        ConvertOptions(platform="linux/arm64"),
    )
    assert one.media_type == oci.MANIFEST and one.digest == r.platforms[1].manifest

    merged = convert(
        open_source(f"{reg.host}/multi:oci", plain_http=True),
        open_target(f"{reg.host}/elsewhere:merged", plain_http=True),
        ConvertOptions(merge_platform=True),
    )
    doc = json.loads(client(reg, "elsewhere").get_manifest("merged", ACCEPT)[2])
    features = [m["platform"].get("os.features", []) for m in doc["manifests"]]
    assert features == [[], [], [], [oci.NYDUS_OS_FEATURE], [oci.NYDUS_OS_FEATURE]], "the attestation is kept"
    assert merged.digest == oci.sha256_digest(oci.canonical(doc))
    # Every manifest the merged index names is in the new repository, with its blobs.
    c = client(reg, "elsewhere")
    for m in doc["manifests"]:
        image = json.loads(c.get_manifest(m["digest"], ACCEPT)[2])
        assert all(c.blob_exists(d["digest"]) for d in [image["config"], *image["layers"]])


def test_credentials_from_docker_config_and_a_refused_password(tmp_path, make_registry, debian):
    _, _, layout, _, _ = debian
    private = make_registry(auth="htpasswd")
    good = f"{private.user}:{private.password}"
    skopeo_copy(f"oci:{layout}", f"docker://{private.host}/debian:oci", f"--dest-creds={good}")
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(
        json.dumps({"auths": {private.host: {"auth": base64.b64encode(good.encode()).decode()}}})
    )
    env = {**os.environ, "DOCKER_CONFIG": str(docker)}
    argv = [sys.executable, "-m", "nydus_hybrid", "convert", "--plain-http", "--no-cache"]
    p = subprocess.run(
        [*argv, f"{private.host}/debian:oci", f"{private.host}/debian:nydus"], env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert tag_exists(private, "debian", "nydus", good)

    p = subprocess.run(
        [
            *argv,
            "--source-creds",
            f"{private.user}:expired",
            f"{private.host}/debian:oci",
            f"{private.host}/debian:bad",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert "authentication failed" in p.stderr and "refused our credentials" in p.stderr
    assert not tag_exists(private, "debian", "bad", good)


@pytest.fixture
def copy_of_debian(debian, make_registry):
    """A registry of its own holding `debian:oci`, free to damage, and its manifest."""
    _, _, layout, _, _ = debian
    reg = make_registry()
    skopeo_copy(f"oci:{layout}", f"docker://{reg.host}/debian:oci")
    m = json.loads(client(reg, "debian").get_manifest("oci", ACCEPT)[2])
    return reg, m


def run_fails(reg: servers.Registry, source: str, why: str) -> str:
    p = cli(source, f"{reg.host}/out:nydus", "--plain-http", "--no-cache")
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert why in p.stderr, p.stderr
    assert not tag_exists(reg, "out", "nydus")
    return p.stderr


def test_a_layer_whose_bytes_do_not_match_its_digest(copy_of_debian):
    reg, m = copy_of_debian
    victim = reg.blob_path(m["layers"][2]["digest"])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    run_fails(reg, f"{reg.host}/debian:oci", "hash to")


def test_a_missing_blob(copy_of_debian):
    reg, m = copy_of_debian
    shutil.rmtree(reg.blob_path(m["layers"][1]["digest"]).parent)
    run_fails(reg, f"{reg.host}/debian:oci", m["layers"][1]["digest"])


def test_a_registry_that_fails_halfway(copy_of_debian):
    reg, _ = copy_of_debian
    with servers.CuttingFront(reg.url, cut_after=200_000) as front:
        p = cli(f"{front.host}/debian:oci", f"{reg.host}/out:nydus", "--plain-http", "--no-cache")
        assert front.cuts >= 1
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert "ended early" in p.stderr or "error decoding response body" in p.stderr, p.stderr
    assert not tag_exists(reg, "out", "nydus")


def put_manifest(reg: servers.Registry, tag: str, m: Dict[str, Any]) -> None:
    client(reg, "debian").put_manifest(tag, oci.MANIFEST, oci.canonical(m))


def test_malformed_and_oversized_documents(copy_of_debian, tmp_path):
    reg, m = copy_of_debian
    c = client(reg, "debian")
    # A config that is not JSON, and one beyond the 4 MiB a document may have.
    for name, blob in [("notjson", b"{not json"), ("huge", b'{"a":"' + b"x" * (5 << 20) + b'"}')]:
        path = tmp_path / name
        path.write_bytes(blob)
        c.push_blob(str(path))
        put_manifest(reg, name, {**m, "config": oci.descriptor(oci.CONFIG, blob)})
    run_fails(reg, f"{reg.host}/debian:notjson", "not JSON")
    run_fails(reg, f"{reg.host}/debian:huge", "more than the 4194304")
    # What the registry refuses to store comes from a layout: a layer list that is not a
    # list, and a descriptor with a path for a digest.
    run_fails(reg, layout_with(tmp_path / "l1", {**m, "layers": {"a": 1}}), "no layer list")
    padded = {**m, "annotations": {"pad": "x" * (5 << 20)}}
    run_fails(reg, layout_with(tmp_path / "l0", padded), "more than the 4194304")
    hostile = [{**m["layers"][0], "digest": "sha256:../../etc/passwd"}]
    run_fails(reg, layout_with(tmp_path / "l2", {**m, "layers": hostile}), "malformed digest")
    foreign = {**m["layers"][0], "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}
    put_manifest(reg, "foreign", {**m, "layers": [foreign]})
    run_fails(reg, f"{reg.host}/debian:foreign", "cannot be converted")


def layout_with(root: Path, m: Dict[str, Any]) -> str:
    """`oci:ROOT`, a layout holding just the manifest `m` (its blobs are elsewhere)."""
    data = oci.canonical(m)
    (root / "blobs/sha256").mkdir(parents=True)
    (root / "blobs/sha256" / oci.sha256_digest(data)[7:]).write_bytes(data)
    (root / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [oci.descriptor(oci.MANIFEST, data)]})
    )
    return f"oci:{root}"


def test_a_hostile_layer_tar(copy_of_debian, tmp_path):
    reg, m = copy_of_debian
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        info = tarfile.TarInfo("../../escape")
        data = b"outside the root\n"
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    layer = tmp_path / "hostile.tar"
    layer.write_bytes(raw.getvalue())
    c = client(reg, "debian")
    c.push_blob(str(layer))
    bad = oci.descriptor(oci.LAYER_TAR, raw.getvalue())
    put_manifest(reg, "hostile", {**m, "layers": [*m["layers"], bad]})
    run_fails(reg, f"{reg.host}/debian:hostile", "unsafe input")
    assert not (Path("/") / "escape").exists()


def test_an_interrupted_layout_conversion_leaves_the_target_as_it_was(debian, tmp_path):
    _, _, layout, _, _ = debian
    target = tmp_path / "target"
    first = convert(open_source(f"oci:{layout}"), open_target(f"oci:{target}:v1"), ConvertOptions())
    before = (target / "index.json").read_bytes()
    victim = json.loads((layout / "index.json").read_text())["manifests"][0]
    bad = tmp_path / "bad"
    shutil.copytree(layout, bad)
    m = json.loads((bad / "blobs/sha256" / victim["digest"][7:]).read_bytes())
    (bad / "blobs/sha256" / m["layers"][3]["digest"][7:]).unlink()
    with pytest.raises(errors.BlobMissingError):
        convert(open_source(f"oci:{bad}"), open_target(f"oci:{target}:v2"), ConvertOptions())
    assert (target / "index.json").read_bytes() == before
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []
    assert first.digest in before.decode()
