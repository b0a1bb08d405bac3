"""The snapshots themselves: containerd's overlayfs snapshotter semantics (the native path
every plain OCI layer takes), plus the remote-snapshot protocol for Nydus data layers.

Layout (spec A4): `<root>/metadata.db` (the metastore) and `<root>/snapshots/<id>/fs`, the
upper dir, with `work` next to it for active snapshots. A snapshot's directory is made
under a temporary name and renamed to its id inside the metastore transaction, so a failed
call leaves neither a record nor a directory.

During a pull containerd prepares each layer with `containerd.io/snapshot.ref` (the chain
id it will commit). A Nydus data layer (`containerd.io/snapshot/nydus-blob`) is then
committed at once under that name and answered with ALREADY_EXISTS: containerd skips its
download (A2.3, A9.2). The bootstrap layer is unpacked natively."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from nydus_hybrid import log
from nydus_hybrid.errors import NydusError
from nydus_hybrid.mounts import idmap as idmapped
from nydus_hybrid.mounts import mountinfo, syscall
from nydus_hybrid.snapshotter import labels
from nydus_hybrid.snapshotter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from nydus_hybrid.snapshotter.metastore import Info, Kind, MetaStore, Snapshot, Usage
from nydus_hybrid.snapshotter.queries import MetastoreQueries
from nydus_hybrid.snapshotter.remote import BOOTSTRAP, USERNS, RemoteFs, meta_ancestor


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: Tuple[str, ...]
    target: str = ""


def disk_usage(path: Path) -> Usage:
    """Bytes allocated and inodes under `path`, each hard-linked inode once (containerd's
    fs.DiskUsage)."""
    seen = set()
    size = 0

    def count(p: str) -> None:
        nonlocal size
        st = os.lstat(p)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512

    count(str(path))
    for dirpath, dirnames, filenames in os.walk(path):  # symlinks to directories are not followed
        for name in (*dirnames, *filenames):
            count(os.path.join(dirpath, name))
    return Usage(size, len(seen))


class Snapshotter(MetastoreQueries):
    def __init__(self, root: str, remote: Optional[RemoteFs] = None) -> None:
        self.root = Path(root)
        self.remote = remote
        self.snapshots = self.root / "snapshots"
        self.snapshots.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.ms = MetaStore(str(self.root / "metadata.db"))

    def close(self) -> None:
        self.ms.close()
        if self.remote is not None:
            self.remote.close()

    def upper(self, id_: str) -> Path:
        return self.snapshots / id_ / "fs"

    def work(self, id_: str) -> Path:
        return self.snapshots / id_ / "work"

    # -- creating

    def _create(self, kind: Kind, key: str, parent: str, lbls: Dict[str, str]) -> Snapshot:
        """Record and directory of a new active or view snapshot, in one transaction."""
        tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self.snapshots))
        try:
            with self.ms.transaction():
                os.mkdir(tmp / "fs", 0o755)
                if kind == Kind.ACTIVE:
                    os.mkdir(tmp / "work", 0o711)
                s = self.ms.create(kind, key, parent, lbls)
                if s.parent_ids:
                    # The new upper dir belongs to whoever owns the parent's (a rootless
                    # container's layers are not root's).
                    st = os.stat(self.upper(s.parent_ids[0]))
                    os.lchown(tmp / "fs", st.st_uid, st.st_gid)
                os.rename(tmp, self.snapshots / s.id)
            return s
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def prepare(self, key: str, parent: str, lbls: Dict[str, str]) -> List[Mount]:
        s = self._create(Kind.ACTIVE, key, parent, lbls)
        target = lbls.get(labels.TARGET_SNAPSHOT_REF)
        if target and labels.is_nydus_data_layer(lbls):
            # Nothing to download: commit it now under the name containerd will look for.
            try:
                self.commit(target, key, lbls)
            except AlreadyExists:
                pass
            raise AlreadyExists(f"target snapshot {target!r}: already exists (a remote Nydus layer)")
        if target:
            return self._native(s)  # any other layer of a pull is unpacked by containerd
        return self._mounts_or_undo(key, s)

    def view(self, key: str, parent: str, lbls: Dict[str, str]) -> List[Mount]:
        above = self.lookup(parent) if parent else None
        if above is not None and labels.is_nydus_data_layer(above.labels):
            # Its directory is empty: the data is in the image, read through the meta layer.
            raise InvalidArgument(f"a Nydus data layer cannot be viewed: {parent}")
        return self._mounts_or_undo(key, self._create(Kind.VIEW, key, parent, lbls))

    def _mounts_or_undo(self, key: str, s: Snapshot) -> List[Mount]:
        """The new snapshot's mounts; if they cannot be made (the image does not mount),
        the snapshot goes again, so a failed call leaves nothing behind."""
        try:
            return self._mounts(key, s)
        except BaseException:
            self.remove(key)
            raise

    def mounts(self, key: str) -> List[Mount]:
        return self._mounts(key, self.ms.snapshot(key))

    def _mounts(self, key: str, s: Snapshot) -> List[Mount]:
        """Remote mounts over a Nydus image (an ancestor is its meta layer), else native.
        An active snapshot with id-mapping labels (remap-ids) gets its lower layers shifted
        to the container's host ids and its upper dir owned by the container's root."""
        chain = [info for _, info in self.ms.chain(key)]
        idmap = labels.id_mapping(self.ms.info(key)[1].labels) if s.kind == Kind.ACTIVE else None
        if idmap is not None:
            self._own_upper(s, idmap)
        meta = meta_ancestor(chain) if self.remote else None
        if meta is None or self.remote is None:
            return self._native(s, idmap)
        meta_id = self.ms.info(meta.name)[0]
        bootstrap = self.upper(meta_id) / BOOTSTRAP
        if not bootstrap.is_file():
            raise FailedPrecondition(f"Nydus meta layer {meta.name} holds no {BOOTSTRAP}: was it unpacked?")
        mountpoint = self.remote.mount(meta_id, str(bootstrap), meta.labels, idmap)
        if s.kind == Kind.VIEW:
            return [Mount("overlay", "overlay", (f"lowerdir={mountpoint}:{self.upper(s.id)}",))]
        opts = (f"workdir={self.work(s.id)}", f"upperdir={self.upper(s.id)}", f"lowerdir={mountpoint}")
        return [Mount("overlay", "overlay", opts)]

    def _own_upper(self, s: Snapshot, idmap: labels.IdMapping) -> None:
        root = idmap.host_root()
        if root is not None:
            for d in (self.upper(s.id), self.work(s.id)):
                os.lchown(d, *root)

    def _idmapped(self, s: Snapshot, idmap: labels.IdMapping) -> List[str]:
        """The parents' upper dirs as idmapped read-only binds under the snapshot's own
        directory (`lower/<n>`), made once; they go with the snapshot."""
        paths = []
        for n, parent in enumerate(s.parent_ids):
            target = self.snapshots / s.id / "lower" / str(n)
            if not mountinfo.is_mountpoint(str(target)):
                target.mkdir(parents=True, exist_ok=True)
                try:
                    idmapped.bind(str(self.upper(parent)), str(target), idmap.uid, idmap.gid)
                except NydusError as e:
                    raise FailedPrecondition(f"remap-ids: {e}") from None
            paths.append(str(target))
        return paths

    def _native(self, s: Snapshot, idmap: Optional[labels.IdMapping] = None) -> List[Mount]:
        """containerd's overlay snapshotter's mount shapes (A9.4, native)."""
        if not s.parent_ids:
            ro = "ro" if s.kind == Kind.VIEW else "rw"
            return [Mount("bind", str(self.upper(s.id)), (ro, "rbind"))]
        lowers = self._idmapped(s, idmap) if idmap is not None else [str(self.upper(p)) for p in s.parent_ids]
        lower = "lowerdir=" + ":".join(lowers)
        if s.kind == Kind.ACTIVE:
            opts = (f"workdir={self.work(s.id)}", f"upperdir={self.upper(s.id)}", lower)
            return [Mount("overlay", "overlay", opts)]
        if len(s.parent_ids) == 1:
            return [Mount("bind", str(self.upper(s.parent_ids[0])), ("ro", "rbind"))]
        return [Mount("overlay", "overlay", (lower,))]

    # -- changing

    def commit(self, name: str, key: str, lbls: Dict[str, str]) -> None:
        with self.ms.transaction():
            id_, info, _ = self.ms.info(key)
            usage = disk_usage(self.upper(id_)) if info.kind == Kind.ACTIVE else Usage()
            self.ms.commit(key, name, usage, lbls)

    def remove(self, key: str) -> None:
        with self.ms.transaction():
            info = self.ms.info(key)[1]
            id_, _ = self.ms.remove(key)
            if self.remote is not None and labels.is_nydus_meta_layer(info.labels):
                self.remote.umount(id_)  # its mount lives in the directory about to go
            _umount_under(self.snapshots / id_)  # idmapped lower layers: never delete through them
            # Renamed away inside the transaction, removed after it: a failure leaves the
            # record, and a crash leaves only an orphan that Cleanup removes.
            doomed = self.snapshots / f"rm-{id_}"
            try:
                os.rename(self.snapshots / id_, doomed)
            except FileNotFoundError:
                pass
        shutil.rmtree(doomed, ignore_errors=True)

    def usage(self, key: str) -> Usage:
        """An active snapshot's upper dir; a committed one's stored usage, plus, for a Nydus
        data layer, what the blob cache holds of its blob (A9.8)."""
        id_, info, usage = self.ms.info(key)
        if info.kind == Kind.ACTIVE:
            return disk_usage(self.upper(id_))
        digest = info.labels.get(labels.CRI_LAYER_DIGEST, "")
        if self.remote is not None and labels.is_nydus_data_layer(info.labels) and digest.startswith("sha256:"):
            size, files = self.remote.cache_usage(digest[len("sha256:") :])
            return Usage(usage.size + size, usage.inodes + files)
        return usage

    def renew_credentials(self) -> List[str]:
        """Hand changed registry credentials to the running Nydus instances
        (`RemoteFs.renew_credentials`); the instances updated."""
        if self.remote is None:
            return []
        by_id = {}
        with self.ms.transaction():  # one consistent read, under the store's lock
            for key in self.ms.ids().values():
                id_, info, _ = self.ms.info(key)
                by_id[id_] = info.labels
        return self.remote.renew_credentials(by_id)

    def cleanup(self) -> List[str]:
        """Remove every directory under `snapshots/` that no snapshot owns (what a crash
        or a failed removal left), then the blob cache's files of blobs no Nydus data layer
        names any more (A9.9); returns what went."""
        live = set(self.ms.ids())
        removed = []
        for entry in os.listdir(self.snapshots):
            # `<id>-userns-…` holds the id-mapped instance of live meta layer <id>.
            if entry not in live and entry.partition(USERNS)[0] not in live:
                _umount_under(self.snapshots / entry)
                shutil.rmtree(self.snapshots / entry, ignore_errors=True)
                removed.append(entry)
        if self.remote is not None:
            used = self._used_blobs()
            if used is not None:
                removed += self.remote.gc_cache(used)
        return removed

    def _used_blobs(self) -> Optional[Set[str]]:
        """The blob ids the Nydus data layers name; None when one of them does not say
        which blob it is (then nothing may be collected: never delete what might be read)."""
        used = set()
        for _, info in list(self.ms.walk()):
            if not labels.is_nydus_data_layer(info.labels):
                continue
            digest = info.labels.get(labels.CRI_LAYER_DIGEST, "")
            if not digest.startswith("sha256:"):
                return None
            used.add(digest[len("sha256:") :])
        return used

    def lookup(self, key: str) -> Optional[Info]:
        try:
            return self.stat(key)
        except NotFound:
            return None


def _umount_under(path: Path) -> None:
    """Detach every mount under `path` (deepest first), so removing the tree removes only
    its own files."""
    for target in mountinfo.mounts_under(str(path)):
        try:
            syscall.umount(target, lazy=True)
        except OSError as e:
            log.event("umount_failed", path=target, error=e.strerror or str(e))
