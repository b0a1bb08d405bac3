"""The services `nydus-hybrid demo` starts on 127.0.0.1 and stops again: a registry
(Debian's `docker-registry`, else our embedded one), our snapshotter, and a containerd with
the snapshotter declared as its proxy plugin. Each runs as a child process with its state
under one work directory, and `close()` leaves nothing running or mounted there."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, List, Optional, Tuple

from nydus_hybrid.errors import ConfigError, NotFoundError, NydusError
from nydus_hybrid.snapshotter.config import MAX_ROOT

REGISTRY_BIN = "/usr/bin/docker-registry"
SNAPSHOTTER_NAME = "nydus"
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise NotFoundError(errno.ENOENT, f"{binary} is missing (apt-get install {package})")
    return path


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise NydusError(errno.EIO, f"{what} exited ({proc.returncode}): {_last_line(log)}")
        if time.monotonic() > deadline:
            raise NydusError(errno.ETIMEDOUT, f"{what} did not become ready within {timeout:.0f} s; its log: {log}")
        time.sleep(0.05)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [x.strip() for x in f if x.strip()]
    except FileNotFoundError:
        return "(no log)"
    return lines[-1][-400:] if lines else "(empty log)"


def _stop(proc: Optional[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalRegistry:
    """An OCI registry on 127.0.0.1 over plain http, its storage and access log in `work`."""

    def __init__(self, work: str, kind: str = "auto") -> None:
        self.want = kind  # "auto" (docker-registry when installed), "docker-registry" or "embedded"
        self.dir = os.path.join(work, "registry")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = os.path.join(self.dir, "registry.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.embedded: Any = None
        self.kind = ""

    def start(self) -> LocalRegistry:
        if self.want == "docker-registry" and not os.access(REGISTRY_BIN, os.X_OK):
            raise NotFoundError(errno.ENOENT, f"{REGISTRY_BIN} is missing (apt-get install docker-registry)")
        if self.want != "embedded" and os.access(REGISTRY_BIN, os.X_OK):
            config = os.path.join(self.dir, "config.yml")
            with open(config, "w") as f:  # JSON is YAML
                json.dump(
                    {
                        "version": 0.1,
                        "log": {"level": "warn", "accesslog": {"disabled": False}},
                        "storage": {"filesystem": {"rootdirectory": os.path.join(self.dir, "data")}},
                        "http": {"addr": self.host},
                    },
                    f,
                )
            env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "OTEL_"))}
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [REGISTRY_BIN, "serve", config], stdout=log, stderr=subprocess.STDOUT, env=env
                )
            _wait("docker-registry", self._answers, self.proc, self.log)
            self.kind = "docker-registry"
        else:
            from nydus_hybrid.registry_server import EmbeddedRegistry

            self.embedded = EmbeddedRegistry(os.path.join(self.dir, "data"), self.port, self.log).start()
            self.kind = "embedded"
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def served(self) -> List[Tuple[str, str, int, int]]:
        """(method, path, status, bytes) of each request answered so far."""
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        return [(m[1], m[2], int(m[3]), 0 if m[4] == "-" else int(m[4])) for m in _ACCESS.finditer(text)]

    def close(self) -> None:
        _stop(self.proc)
        if self.embedded is not None:
            self.embedded.close()


class LocalSnapshotter:
    def __init__(self, work: str, plain_http: str) -> None:
        self.root = os.path.join(work, "snapshotter")
        if len(self.root.encode()) > MAX_ROOT:
            raise ConfigError(
                errno.ENAMETOOLONG,
                f"work directory {work}: too long for the snapshotter's root (at most {MAX_ROOT} bytes)",
            )
        self.address = os.path.join(work, "snapshotter.sock")
        self.log = os.path.join(work, "snapshotter.log")
        self.plain_http = plain_http
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> LocalSnapshotter:
        argv = [sys.executable, "-m", "nydus_hybrid.snapshotter", "--root", self.root, "--address", self.address]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*argv, "--plain-http-registry", self.plain_http], stdout=log, stderr=subprocess.STDOUT
            )
        _wait("the snapshotter", lambda: os.path.exists(self.address), self.proc, self.log)
        return self

    def close(self) -> None:
        _stop(self.proc)
        reap(self.root)


class LocalContainerd:
    def __init__(self, work: str, snapshotter_socket: str) -> None:
        self.dir = os.path.join(work, "containerd")
        os.makedirs(self.dir, exist_ok=True)
        self.address = os.path.join(self.dir, "containerd.sock")
        self.log = os.path.join(self.dir, "containerd.log")
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write(
                "\n".join(
                    [
                        "version = 2",
                        f'root = "{self.dir}/root"',
                        f'state = "{self.dir}/state"',
                        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                        "[grpc]",
                        f'  address = "{self.address}"',
                        f"[proxy_plugins.{SNAPSHOTTER_NAME}]",
                        '  type = "snapshot"',
                        f'  address = "{snapshotter_socket}"',
                        "",
                    ]
                )
            )
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> LocalContainerd:
        containerd = need("containerd", "containerd")
        need("runc", "runc")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([containerd, "--config", self.config], stdout=log, stderr=subprocess.STDOUT)
        _wait("containerd", lambda: os.path.exists(self.address), self.proc, self.log)
        return self

    def ctr(self, *args: str, namespace: str = "default") -> List[str]:
        return [need("ctr", "containerd"), "-a", self.address, "-n", namespace, *args]

    def close(self) -> None:
        _stop(self.proc)
        reap(self.dir)


def reap(root: str) -> None:
    """Kill the processes whose command line names a path under `root` (the image daemons,
    which outlive the snapshotter by design; containerd's shims) and lazily unmount what
    is mounted there, deepest first."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(root.encode()) for a in argv[1:]):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    with open("/proc/self/mounts") as f:
        mounted = [line.split()[1] for line in f]
    for m in reversed(mounted):
        if m == root or m.startswith(root.rstrip("/") + "/"):
            subprocess.run(["umount", "-l", m], capture_output=True)
