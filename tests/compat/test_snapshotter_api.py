"""Our snapshotter's gRPC service against containerd's snapshotter contract (the generic
suite's cases, spec A9 and B8's list), through a real server process and real overlay and
bind mounts: Basic, StatActive/StatCommitted, Transitivity, the same-key failures, Update,
Remove, Walk with filters, LayerFileUpdate, RemoveDirectoryInLowerLayer,
DeletedFilesInChildSnapshot, ViewReadonly, 128 layers; the remote-layer protocol (a Nydus
data layer answers ALREADY_EXISTS and is committed); bad input leaves nothing behind; and
the state survives a restart."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import grpc
import pytest

from nydus_hybrid.snapshotter import wire
from tests.helpers.snapshots import NAMESPACE, Mounted, SnapshotterProcess, commit_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay and bind mounts need root")

KIND = {1: "view", 2: "active", 3: "committed"}


@pytest.fixture
def server(tmp_path):
    s = SnapshotterProcess(tmp_path / "root").start()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = server.client()
    yield c
    c.close()


def code(excinfo) -> grpc.StatusCode:
    got: grpc.StatusCode = excinfo.value.code()
    return got


def test_basic_prepare_commit_and_a_child_over_it(client, tmp_path):
    mounts = client.prepare("base-active")
    assert [(m.type, list(m.options)) for m in mounts] == [("bind", ["rw", "rbind"])]
    assert KIND[client.stat("base-active").kind] == "active"
    commit_layer(client, tmp_path, "base-active2", "base", files={"a/b": b"base", "keep": b"k"})
    info = client.stat("base")
    assert KIND[info.kind] == "committed" and info.parent == ""
    assert client.usage("base").size > 0 and client.usage("base").inodes >= 3

    mounts = client.prepare("child", "base")
    (m,) = mounts
    assert m.type == "overlay" and any(o.startswith("lowerdir=") for o in m.options)
    with Mounted(mounts, tmp_path / "mnt-child") as mnt:
        assert (mnt / "a/b").read_bytes() == b"base"
        (mnt / "a/b").write_bytes(b"changed")  # LayerFileUpdate
        (mnt / "keep").unlink()  # DeletedFilesInChildSnapshot
    client.commit("child-c", "child")
    assert client.stat("child-c").parent == "base"
    with Mounted(client.view("look", "child-c"), tmp_path / "mnt-view") as mnt:
        assert (mnt / "a/b").read_bytes() == b"changed" and not (mnt / "keep").exists()
        with pytest.raises(OSError):  # ViewReadonly
            (mnt / "new").write_bytes(b"x")
    with Mounted(client.view("look-base", "base"), tmp_path / "mnt-view2") as mnt:
        assert (mnt / "a/b").read_bytes() == b"base", "the lower layer did not change"


def test_same_key_missing_parent_and_uncommitted_parent_fail(client):
    client.prepare("k")
    for call in (lambda: client.prepare("k"), lambda: client.view("k")):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert code(e) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("orphan", "no-such-parent")
    assert code(e) == grpc.StatusCode.NOT_FOUND and "missing parent" in str(e.value.details())
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("over-active", "k")
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_commit_and_remove_follow_containerds_rules(client, server, tmp_path):
    commit_layer(client, tmp_path, "p", "parent")
    client.prepare("c", "parent")
    with pytest.raises(grpc.RpcError) as e:
        client.remove("parent")
    assert code(e) == grpc.StatusCode.FAILED_PRECONDITION, "a snapshot with a child stays"
    with pytest.raises(grpc.RpcError) as e:
        client.commit("parent", "c")
    assert code(e) == grpc.StatusCode.ALREADY_EXISTS
    client.view("v", "parent")
    with pytest.raises(grpc.RpcError) as e:
        client.commit("from-view", "v")
    assert code(e) == grpc.StatusCode.FAILED_PRECONDITION
    for call in (lambda: client.remove("nope"), lambda: client.stat("nope"), lambda: client.commit("x", "nope")):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert code(e) == grpc.StatusCode.NOT_FOUND
    client.remove("c")
    client.remove("v")
    client.remove("parent")
    assert client.list() == []
    assert os.listdir(server.root / "snapshots") == [], "the directories went with the records"


def test_update_labels_and_immutable_fields(client):
    client.prepare("k", labels={"a": "1", "b": "2"})
    info = client.update("k", {"a": "9", "c": "3"}, ["labels.a", "labels.b"])
    assert dict(info.labels) == {"a": "9"}, "labels.b was absent from the request, so it is dropped"
    info = client.update("k", {"x": "y"})
    assert dict(info.labels) == {"x": "y"}, "an empty mask replaces every label"
    with pytest.raises(grpc.RpcError) as e:
        client.update("k", {}, ["parent"])
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_walk_with_containerd_filters(client, tmp_path):
    commit_layer(client, tmp_path, "a-key", "a")
    client.prepare("b", "a", labels={"containerd.io/gc.root": "yes"})
    client.view("c", "a", labels={"team": "x"})
    names = lambda *f: sorted(i.name for i in client.list(*f))  # noqa: E731
    assert names() == ["a", "b", "c"]
    assert names("kind==committed") == ["a"]
    assert names('labels."containerd.io/gc.root"==yes') == ["b"]
    assert names("labels.team", "kind==committed") == ["a", "c"], "filters are alternatives"
    assert names("parent==a,kind==view") == ["c"], "selectors in one filter all hold"
    assert names("name~=^[ab]$") == ["a", "b"]
    with pytest.raises(grpc.RpcError) as e:
        client.list("kind==")
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_directory_removed_in_a_child_stays_in_the_lower_layer(client, tmp_path):
    commit_layer(client, tmp_path, "l1", "lower", files={"dir/f": b"1"})
    commit_layer(client, tmp_path, "l2", "upper", parent="lower", remove=["dir/f", "dir"])
    with Mounted(client.view("v-up", "upper"), tmp_path / "v-up") as m:
        assert not (m / "dir").exists()
    with Mounted(client.view("v-low", "lower"), tmp_path / "v-low") as m:
        assert (m / "dir/f").read_bytes() == b"1"


def test_128_layers_mount(client, tmp_path):
    parent = ""
    for i in range(128):
        commit_layer(client, tmp_path, f"k{i}", f"layer{i}", parent=parent, files={f"f{i}": str(i).encode()})
        parent = f"layer{i}"
    (m,) = client.prepare("top", parent)
    lower = next(o for o in m.options if o.startswith("lowerdir="))
    assert lower.count(":") == 127, "nearest parent first, all 128"
    with Mounted([m], tmp_path / "top") as mnt:
        assert all((mnt / f"f{i}").read_bytes() == str(i).encode() for i in range(128))


def test_a_nydus_data_layer_is_committed_without_a_download(client):
    labels = {
        "containerd.io/snapshot.ref": "sha256:chain1",
        "containerd.io/snapshot/nydus-blob": "true",
        "containerd.io/snapshot/cri.layer-digest": "sha256:" + "a" * 64,
    }
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("extract-1 sha256:chain1", labels=labels)
    assert code(e) == grpc.StatusCode.ALREADY_EXISTS
    info = client.stat("sha256:chain1")
    assert KIND[info.kind] == "committed" and dict(info.labels) == labels
    with pytest.raises(grpc.RpcError) as e:
        client.view("look", "sha256:chain1")
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT, "a data layer's directory is empty; it is not viewed"
    # The bootstrap layer is an ordinary layer: containerd unpacks it.
    boot = {"containerd.io/snapshot.ref": "sha256:chain2", "containerd.io/snapshot/nydus-bootstrap": "true"}
    (m,) = client.prepare("extract-2 sha256:chain2", "sha256:chain1", labels=boot)
    assert m.type == "overlay" and any(o.startswith("upperdir=") for o in m.options), "a writable layer to unpack into"


def test_bad_input_leaves_nothing_behind(client, server):
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("big", labels={"k": "v" * 5000})
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("")
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.list() == []
    assert os.listdir(server.root / "snapshots") == [], "no directory was left"


def test_state_survives_a_restart_and_cleanup_removes_orphans(server, tmp_path):
    c = server.client()
    commit_layer(c, tmp_path, "a", "base", files={"f": b"x"})
    c.prepare("active", "base")
    c.close()
    assert server.stop() == 0
    (server.root / "snapshots" / "999").mkdir()  # what a crash could leave
    server.start()
    c = server.client()
    try:
        assert KIND[c.stat("base").kind] == "committed" and KIND[c.stat("active").kind] == "active"
        c.cleanup()
        assert "999" not in os.listdir(server.root / "snapshots")
        assert len(os.listdir(server.root / "snapshots")) == 2
    finally:
        c.close()


UIDMAP = "containerd.io/snapshot/uidmapping"
GIDMAP = "containerd.io/snapshot/gidmapping"


def test_remap_ids_shift_the_lower_layers_and_own_the_upper_dir(client, server, tmp_path):
    """remap-ids on the native path: the active snapshot's lower layers are idmapped binds
    (an owner k on disk is seen as 100000+k), its upper and work dirs belong to the
    container's root, and removing it drops the binds without touching the layer."""
    commit_layer(client, tmp_path, "a", "base", files={"etc/owned": b"x", "bin/tool": b"y"})
    base_file = next((server.root / "snapshots").glob("*/fs/etc/owned"))
    os.lchown(base_file, 5, 7)
    mapping = {UIDMAP: "0:100000:65536", GIDMAP: "0:200000:65536"}
    mounts = client.prepare("ctr", "base", labels=mapping)
    opts = dict(o.split("=", 1) for o in mounts[0].options)
    lower, upper = opts["lowerdir"], Path(opts["upperdir"])
    assert "/lower/" in lower and (upper.stat().st_uid, upper.stat().st_gid) == (100000, 200000)
    with Mounted(mounts, tmp_path / "rootfs") as root:
        st = (root / "etc/owned").stat()
        assert (st.st_uid, st.st_gid) == (100005, 200007)
        assert (root / "bin").stat().st_uid == 100000, "root's files are the container root's"
        (root / "new").write_text("z")
    assert (base_file.stat().st_uid, base_file.stat().st_gid) == (5, 7), "the layer on disk is unchanged"
    assert client.mounts("ctr") == mounts, "Mounts again reuses the binds"
    client.remove("ctr")
    assert lower not in Path("/proc/self/mountinfo").read_text()
    assert base_file.read_bytes() == b"x", "removal went through no bind into the layer"


@pytest.mark.parametrize(
    "labels",
    [
        {UIDMAP: "0:100000:65536"},  # one without the other
        {UIDMAP: "0:100000", GIDMAP: "0:100000:65536"},
        {UIDMAP: "0:100000:0", GIDMAP: "0:100000:0"},
        {UIDMAP: "0:4294967295:2", GIDMAP: "0:1:2"},
        {UIDMAP: "x:y:z", GIDMAP: "0:1:2"},
    ],
)
def test_bad_id_mappings_are_refused_and_leave_nothing(client, server, tmp_path, labels):
    commit_layer(client, tmp_path, "a", "base")
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("ctr", "base", labels=labels)
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert [i.name for i in client.list()] == ["base"]
    assert len(os.listdir(server.root / "snapshots")) == 1


def _many_files(root: Path, n: int) -> None:
    for i in range(n // 500):
        d = root / f"d{i}"
        d.mkdir()
        for j in range(500):
            (d / f"f{j}").write_bytes(b"x")


def test_a_client_that_disconnects_mid_call_leaves_a_whole_state(client, server, tmp_path):
    """A Commit whose client goes away while the server is still walking the layer (its
    usage is counted file by file), by cancelling or by a deadline that passes. The call's
    transaction ends one way or the other: the snapshot is either still active under its
    key or committed under its name, never both or neither, and the server goes on."""
    for n, leave in enumerate(["cancel", "deadline"]):
        key, name = f"big{n}", f"layer{n}"
        with Mounted(client.prepare(key), tmp_path / f"m{n}") as m:
            _many_files(m, 20000)
        call = client.start("Commit", timeout=0.05 if leave == "deadline" else None, name=name, key=key)
        if leave == "cancel":
            time.sleep(0.02)
            call.cancel()
        with pytest.raises(grpc.FutureCancelledError if leave == "cancel" else grpc.RpcError):
            call.result()
        deadline = time.monotonic() + 30
        while True:  # the server may still be finishing the commit it started
            names = {i.name: KIND[i.kind] for i in client.list()}
            if names.get(name) == "committed" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (names.get(key), names.get(name)) in [("active", None), (None, "committed")], names
    client.cleanup()
    live = {i.name for i in client.list()}
    assert len(os.listdir(server.root / "snapshots")) == len(live), "no directory without its record"


def test_broken_connections_do_not_disturb_the_server(client, server):
    """Half an HTTP/2 request, then a hang-up; bytes that are not HTTP/2; a listing stream
    abandoned after its first reply. The server answers the next call each time."""
    for i in range(60):
        client.prepare(f"s{i}")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    half_headers = b"\x00\x00\x40\x01\x04\x00\x00\x00\x01" + b"\x82" * 10  # says 64 bytes, sends 10
    for payload in (preface + settings + half_headers, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096)):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(server.address))
            s.sendall(payload)
        assert len(client.list()) == 60
    stream = client._calls["List"](
        wire.message("ListSnapshotsRequest")(snapshotter="nydus"), timeout=30, metadata=[NAMESPACE]
    )
    next(stream)
    stream.cancel()
    assert KIND[client.stat("s0").kind] == "active" and len(client.list()) == 60
