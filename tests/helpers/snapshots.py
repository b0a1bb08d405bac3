"""A containerd-like client of our snapshotter's gRPC service, and the real server process.

`SnapshotsClient` calls the `containerd.services.snapshots.v1.Snapshots` methods over the
unix socket with the namespace in the `containerd-namespace` metadata, as containerd does;
failures raise `grpc.RpcError` (check `.code()`). `SnapshotterProcess` runs
`python -m nydus_hybrid.snapshotter` and waits until the socket answers. `mount_all` does
what containerd's mount code does with the mounts a snapshot returns (including its
chdir trick for overlay options longer than a page)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import grpc

from nydus_hybrid.snapshotter import wire
from nydus_hybrid.waits import scaled

NAMESPACE = ("containerd-namespace", "default")


class SnapshotsClient:
    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self.timeout = timeout
        self._calls: Dict[str, Any] = {}
        for name, (req, resp, streaming) in wire.METHODS.items():
            make = self.channel.unary_stream if streaming else self.channel.unary_unary
            self._calls[name] = make(
                f"/{wire.SERVICE}/{name}",
                request_serializer=wire.message(req).SerializeToString,
                response_deserializer=wire.message(resp).FromString,
            )

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, **fields: Any) -> Any:
        req_type = wire.message(wire.METHODS[method][0])
        return self._calls[method](req_type(snapshotter="nydus", **fields), timeout=self.timeout, metadata=[NAMESPACE])

    def start(self, method: str, timeout: Optional[float] = None, **fields: Any) -> Any:
        """A unary call left running: its future (cancel it to disconnect mid-call)."""
        req_type = wire.message(wire.METHODS[method][0])
        req = req_type(snapshotter="nydus", **fields)
        return self._calls[method].future(req, timeout=timeout or self.timeout, metadata=[NAMESPACE])

    def prepare(self, key: str, parent: str = "", labels: Optional[Dict[str, str]] = None) -> List[Any]:
        return list(self.call("Prepare", key=key, parent=parent, labels=labels or {}).mounts)

    def view(self, key: str, parent: str = "", labels: Optional[Dict[str, str]] = None) -> List[Any]:
        return list(self.call("View", key=key, parent=parent, labels=labels or {}).mounts)

    def mounts(self, key: str) -> List[Any]:
        return list(self.call("Mounts", key=key).mounts)

    def commit(self, name: str, key: str, labels: Optional[Dict[str, str]] = None) -> None:
        self.call("Commit", name=name, key=key, labels=labels or {})

    def remove(self, key: str) -> None:
        self.call("Remove", key=key)

    def stat(self, key: str) -> Any:
        return self.call("Stat", key=key).info

    def update(self, name: str, labels: Dict[str, str], paths: Sequence[str] = ()) -> Any:
        info = wire.message("Info")(name=name, labels=labels)
        req = wire.message("UpdateSnapshotRequest")(snapshotter="nydus", info=info)
        req.update_mask.paths.extend(paths)
        return self._calls["Update"](req, timeout=self.timeout, metadata=[NAMESPACE]).info

    def list(self, *filters: str) -> List[Any]:
        return [i for reply in self.call("List", filters=list(filters)) for i in reply.info]

    def usage(self, key: str) -> Any:
        return self.call("Usage", key=key)

    def cleanup(self) -> None:
        self.call("Cleanup")


class SnapshotterProcess:
    def __init__(
        self,
        root: Path,
        address: Optional[Path] = None,
        extra: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.root = root
        self.env = {**os.environ, **env} if env else None  # added to ours; its daemons inherit it
        self.address = address or root.parent / f"{root.name}.sock"
        self.log = root.parent / f"{root.name}.log"
        self.extra = list(extra)
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> SnapshotterProcess:
        argv = [
            sys.executable,
            "-m",
            "nydus_hybrid.snapshotter",
            "--root",
            str(self.root),
            "--address",
            str(self.address),
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*argv, *self.extra], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + scaled(30)
        while True:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            if self.address.exists():
                try:
                    c = SnapshotsClient(str(self.address), timeout=2)
                    c.list()
                    c.close()
                    return self
                except grpc.RpcError:
                    pass
            assert time.monotonic() < deadline, f"the snapshotter did not answer within {scaled(30):.0f} s"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: what a crash leaves (the daemons it started keep serving)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the snapshotter ignored SIGTERM for 30 s: {self.log.read_text()[-3000:]}") from None
        finally:
            self.proc = None
        return rc

    def client(self) -> SnapshotsClient:
        return SnapshotsClient(str(self.address))

    def reap_daemons(self) -> None:
        """Kill the daemons started under this root and lazily unmount what they served
        (daemons outlive the snapshotter by design; a failed test must not leave them)."""
        from nydus_hybrid.demo_stack import reap

        reap(str(self.root))


def mount_all(mounts: Sequence[Any], target: Path) -> None:
    """Mount what a snapshot returned at `target`, as containerd would."""
    for m in mounts:
        opts = list(m.options)
        data = ",".join(opts)
        cwd = None
        if m.type == "overlay" and len(data) >= os.sysconf("SC_PAGE_SIZE") - 512:
            # containerd's trick: lower/upper/work paths relative to their common parent.
            paths = [o.split("=", 1)[1] for o in opts if o.startswith(("lowerdir=", "upperdir=", "workdir="))]
            dirs = [p for o in paths for p in o.split(":")]
            cwd = os.path.commonpath(dirs)
            opts = [_relative(o, cwd) for o in opts]
            data = ",".join(opts)
        args = ["mount", "-t", m.type, m.source, str(target)]
        if m.type == "bind":
            args = ["mount", "--bind", m.source, str(target)]
            if "ro" in opts:
                subprocess.run(args, check=True)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
                continue
        else:
            args += ["-o", data]
        subprocess.run(args, check=True, cwd=cwd)


def _relative(opt: str, base: str) -> str:
    if not opt.startswith(("lowerdir=", "upperdir=", "workdir=")):
        return opt
    k, v = opt.split("=", 1)
    return f"{k}=" + ":".join(os.path.relpath(p, base) for p in v.split(":"))


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True)


def allocated_bytes(root: Path) -> int:
    """Bytes allocated on disk by the files under `root` (sparse cache files count only
    what was filled)."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def daemon_pids(root: Path) -> List[int]:
    """The pids of the daemons the snapshotter's manager keeps (its store, read directly)."""
    from nydus_hybrid.manager.store import Store

    store = Store(str(root / "nydus.db"))
    try:
        return [int(d["pid"]) for d in store.daemons()]
    finally:
        store.close()


class CheckingReader:
    """A thread reading every file of `want` (relative path -> bytes) under `root` in a loop,
    the page cache dropped before each pass so the reads reach the daemon; it records any
    error or wrong byte. Used as a context manager around daemon kills."""

    def __init__(self, root: Path, want: Dict[Any, bytes]) -> None:
        self.root, self.want = root, want
        self.errors: List[str] = []
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checking-reader")

    def _run(self) -> None:
        while not self._stop.is_set():
            Path("/proc/sys/vm/drop_caches").write_text("3")
            for rel, data in self.want.items():
                try:
                    if (self.root / rel).read_bytes() != data:
                        self.errors.append(f"{rel}: wrong bytes")
                except OSError as e:
                    self.errors.append(f"{rel}: {e}")
            self.passes += 1

    def __enter__(self) -> CheckingReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def wait_passes(self, n: int, timeout: float) -> None:
        """Until `n` more whole passes are done."""
        target, deadline = self.passes + n, time.monotonic() + timeout
        while self.passes < target:
            assert time.monotonic() < deadline, "reads stopped"
            time.sleep(0.05)


def kill_daemon_and_wait(root: Path, timeout: float = 60) -> None:
    """SIGKILL the snapshotter's one image daemon, and wait until another has taken over."""
    (pid,) = daemon_pids(root)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while daemon_pids(root) in ([pid], []):
        assert time.monotonic() < deadline, "no successor took over"
        time.sleep(0.1)


class Mounted:
    """A snapshot's mounts at `target` for the length of a `with` block."""

    def __init__(self, mounts: Sequence[Any], target: Path) -> None:
        self.target = target
        target.mkdir(parents=True, exist_ok=True)
        mount_all(mounts, target)

    def __enter__(self) -> Path:
        return self.target

    def __exit__(self, *exc: object) -> None:
        umount(self.target)


def commit_layer(
    client: SnapshotsClient,
    tmp: Path,
    key: str,
    name: str,
    parent: str = "",
    files: Optional[Dict[str, bytes]] = None,
    remove: Sequence[str] = (),
) -> None:
    """Prepare `key` over `parent`, write `files` and delete `remove` through its mounts
    (at `tmp/mnt-<key>`), and commit it as `name`: one layer, as an unpacker makes it."""
    with Mounted(client.prepare(key, parent), tmp / f"mnt-{key}") as m:
        for rel, data in (files or {}).items():
            (m / rel).parent.mkdir(parents=True, exist_ok=True)
            (m / rel).write_bytes(data)
        for rel in remove:
            p = m / rel
            p.rmdir() if p.is_dir() else p.unlink()
    client.commit(name, key)
