"""containerd's generic snapshotter suite (spec B8's list) against the devmapper snapshotter's
gRPC server (`nydus-hybrid devmapper serve`), on a real thin pool in the VM: every case
goes through the Snapshots API and real mounts of the thin devices, so what it checks is
what containerd would see. One server and pool for the module; each case uses its own keys."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Dict, Iterator, List

import grpc
import pytest

from tests.helpers.snapshots import Mounted, SnapshotsClient, commit_layer
from tests.vm.guest.test_devmapper_kernel import Pool, start_server

LAYERS = int(os.environ.get("NYDUS_DEVMAPPER_SUITE_LAYERS", "128"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnapshotsClient]:
    tmp = tmp_path_factory.mktemp("suite")
    pool = Pool(tmp, data=1 << 30)
    cfg = tmp / "devmapper.toml"
    cfg.write_text(f'root_path = "{tmp / "dm"}"\npool_name = "{pool.name}"\nbase_image_size = "16MB"\n')
    server = start_server(cfg, tmp / "dm.sock", tmp / "dm.log")
    c = SnapshotsClient(str(tmp / "dm.sock"), timeout=600)
    try:
        yield c
    finally:
        c.close()
        server.terminate()
        server.wait(timeout=60)
        pool.remove()


@pytest.fixture
def k() -> str:
    """A prefix that keeps each case's keys apart."""
    return uuid.uuid4().hex[:6]


def read_tree(root: Path) -> Dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def code(e) -> grpc.StatusCode:
    got: grpc.StatusCode = e.value.code()
    return got


def test_basic(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    commit_layer(client, tmp_path, f"{k}-a", f"{k}-base", files={"foo": b"foo\n", "dir/bar": b"bar\n"})
    with Mounted(client.prepare(f"{k}-b", f"{k}-base"), tmp_path / "b") as m:
        assert read_tree(m) == {"foo": b"foo\n", "dir/bar": b"bar\n"}
        (m / "baz").write_bytes(b"baz\n")
    client.commit(f"{k}-c", f"{k}-b")
    with Mounted(client.view(f"{k}-v", f"{k}-c"), tmp_path / "v") as m:
        assert read_tree(m) == {"foo": b"foo\n", "dir/bar": b"bar\n", "baz": b"baz\n"}


def test_stat_active_and_committed(client: SnapshotsClient, k: str) -> None:
    client.prepare(f"{k}-a")
    s = client.stat(f"{k}-a")
    assert (s.name, s.parent, s.kind) == (f"{k}-a", "", 2)
    client.commit(f"{k}-c", f"{k}-a")
    s = client.stat(f"{k}-c")
    assert (s.name, s.kind) == (f"{k}-c", 3)
    with pytest.raises(grpc.RpcError) as e:
        client.stat(f"{k}-a")
    assert code(e) == grpc.StatusCode.NOT_FOUND


def test_transitivity(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    commit_layer(client, tmp_path, f"{k}-1", f"{k}-l1", files={"a": b"1"})
    commit_layer(client, tmp_path, f"{k}-2", f"{k}-l2", f"{k}-l1", files={"a": b"2"})
    assert client.stat(f"{k}-l2").parent == f"{k}-l1"
    with Mounted(client.view(f"{k}-v", f"{k}-l2"), tmp_path / "v") as m:
        assert (m / "a").read_bytes() == b"2"


def test_same_key_failures(client: SnapshotsClient, k: str) -> None:
    client.prepare(f"{k}-a")
    for call in (client.prepare, client.view):
        with pytest.raises(grpc.RpcError) as e:
            call(f"{k}-a", "")
        assert code(e) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as e:
        client.prepare(f"{k}-b", f"{k}-missing")
    assert code(e) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        client.prepare(f"{k}-b", f"{k}-a")  # not committed
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_update_labels(client: SnapshotsClient, k: str) -> None:
    client.prepare(f"{k}-a", labels={"x": "1"})
    info = client.update(f"{k}-a", {"y": "2"}, ["labels.y"])
    assert info.labels["x"] == "1" and info.labels["y"] == "2"
    info = client.update(f"{k}-a", {"z": "3"})
    assert dict(info.labels).get("z") == "3" and "x" not in info.labels


def test_remove_and_remove_intermediate_fails(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    commit_layer(client, tmp_path, f"{k}-1", f"{k}-l1")
    commit_layer(client, tmp_path, f"{k}-2", f"{k}-l2", f"{k}-l1")
    with pytest.raises(grpc.RpcError) as e:
        client.remove(f"{k}-l1")
    assert code(e) == grpc.StatusCode.FAILED_PRECONDITION
    client.remove(f"{k}-l2")
    client.remove(f"{k}-l1")
    with pytest.raises(grpc.RpcError) as e:
        client.remove(f"{k}-l1")
    assert code(e) == grpc.StatusCode.NOT_FOUND


def test_walk_and_stat_in_walk(client: SnapshotsClient, k: str) -> None:
    client.prepare(f"{k}-a", labels={"suite": k})
    client.commit(f"{k}-c", f"{k}-a", labels={"suite": k})
    client.prepare(f"{k}-b", f"{k}-c", labels={"suite": k})
    infos = client.list(f"labels.suite=={k}")
    assert sorted(i.name for i in infos) == [f"{k}-b", f"{k}-c"]
    for i in infos:
        s = client.stat(i.name)
        assert (s.name, s.parent, s.kind) == (i.name, i.parent, i.kind)


def test_layer_file_update_and_deleted_files(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    commit_layer(client, tmp_path, f"{k}-1", f"{k}-l1", files={"f": b"old", "gone": b"x", "d/in": b"y"})
    commit_layer(client, tmp_path, f"{k}-2", f"{k}-l2", f"{k}-l1", files={"f": b"new"}, remove=["gone", "d/in", "d"])
    with Mounted(client.view(f"{k}-v", f"{k}-l2"), tmp_path / "v") as m:
        assert read_tree(m) == {"f": b"new"} and not (m / "d").exists()
    with Mounted(client.view(f"{k}-v1", f"{k}-l1"), tmp_path / "v1") as m:
        assert read_tree(m) == {"f": b"old", "gone": b"x", "d/in": b"y"}, "the lower layer is untouched"


def test_move_file_from_lower_layer(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    commit_layer(client, tmp_path, f"{k}-1", f"{k}-l1", files={"a/f": b"data"})
    with Mounted(client.prepare(f"{k}-2", f"{k}-l1"), tmp_path / "m") as m:
        os.rename(m / "a" / "f", m / "moved")
    client.commit(f"{k}-l2", f"{k}-2")
    with Mounted(client.view(f"{k}-v", f"{k}-l2"), tmp_path / "v") as m:
        assert read_tree(m) == {"moved": b"data"}


def test_chown_permissions_and_root(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    with Mounted(client.prepare(f"{k}-1"), tmp_path / "m") as m:
        assert stat.S_IMODE(m.stat().st_mode) == 0o755 and m.stat().st_uid == 0, "the root directory"
        (m / "owned").write_text("x")
        os.chown(m / "owned", 1234, 5678)
        (m / "dir").mkdir(mode=0o700)
        os.chmod(m / "dir", 0o1750)
    client.commit(f"{k}-l1", f"{k}-1")
    with Mounted(client.view(f"{k}-v", f"{k}-l1"), tmp_path / "v") as m:
        st = (m / "owned").stat()
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert stat.S_IMODE((m / "dir").stat().st_mode) == 0o1750


def test_view_is_read_only(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    commit_layer(client, tmp_path, f"{k}-1", f"{k}-l1", files={"f": b"x"})
    with Mounted(client.view(f"{k}-v", f"{k}-l1"), tmp_path / "v") as m:
        with pytest.raises(OSError):
            (m / "new").write_text("no")


def test_rename_a_directory(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    commit_layer(client, tmp_path, f"{k}-1", f"{k}-l1", files={"d1/f": b"x"})
    with Mounted(client.prepare(f"{k}-2", f"{k}-l1"), tmp_path / "m") as m:
        os.rename(m / "d1", m / "d2")
    client.commit(f"{k}-l2", f"{k}-2")
    with Mounted(client.view(f"{k}-v", f"{k}-l2"), tmp_path / "v") as m:
        assert read_tree(m) == {"d2/f": b"x"}


def test_close_twice_is_harmless(tmp_path: Path) -> None:
    from nydus_hybrid.devmapper.config import from_dict
    from nydus_hybrid.devmapper.snapshotter import DevmapperSnapshotter

    pool = Pool(tmp_path)
    try:
        cfg = from_dict({"root_path": str(tmp_path / "r"), "pool_name": pool.name, "base_image_size": "8MB"})
        sn = DevmapperSnapshotter(cfg)
        sn.close()
        sn.close()
    finally:
        pool.remove()


def test_many_layers_mount(client: SnapshotsClient, tmp_path: Path, k: str) -> None:
    parent = ""
    for n in range(LAYERS):
        name = f"{k}-l{n}"
        commit_layer(client, tmp_path, f"{k}-a{n}", name, parent, files={f"f{n}": str(n).encode()})
        parent = name
    with Mounted(client.view(f"{k}-v", parent), tmp_path / "v") as m:
        assert read_tree(m) == {f"f{n}": str(n).encode() for n in range(LAYERS)}
    names: List[str] = [f"{k}-v"] + [f"{k}-l{n}" for n in reversed(range(LAYERS))]
    for name in names:
        client.remove(name)
    subprocess.run(["sync"], check=True)
