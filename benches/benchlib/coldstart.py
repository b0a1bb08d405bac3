"""Container cold start (benches/test_coldstart.py): a Debian bookworm rootfs with python3,
python3-requests and nodejs (mmdebstrap, cached), as a one-layer OCI image and as its
Nydus conversion, in a docker-registry. Each contender gets a fresh containerd root, a
fresh snapshotter root (an empty blob cache) and dropped page caches, then:

* `oci`: `ctr images pull` (every byte, then unpack) on containerd's overlayfs snapshotter;
* `nydus-ref`: `nydus-hybrid pull` through our snapshotter driving the real `nydusd`;
* `ours`: the same with our daemon;
* `nydus-ref-fscache`, `ours-fscache`: the same on the snapshotter's `fscache` fs driver
  (EROFS over /dev/cachefiles; only on a kernel with cachefiles on-demand, which
  `benches/vm_coldstart.py` boots).

and runs two containers, `python3 -c "import requests"` then a `node -e` one-liner,
timing `ctr run` to each first line of output. The registry's access log gives the
requests and bytes each contender fetched.

Two links: loopback, and a veth pair into a network namespace where the registry runs,
with `tbf` at 100 Mbit/s on both ends (this kernel has tbf but not netem)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchlib.env import bench_dir

ROOTFS = Path(os.path.expanduser("~/.cache/nydus-hybrid/debian-py-node.tar"))
NYDUSD = Path(os.path.expanduser("~/.cache/nydus-hybrid/nydus-ref/bin/nydusd"))
NETNS = "nhbench"
HOST_IP, REG_IP = "10.231.0.1", "10.231.0.2"
PY = ["python3", "-c", "import requests; print('requests', requests.__version__)"]
NODE = ["node", "-e", "console.log('node', process.version)"]
# The Nydus image's chunk size and the daemons' `amplify_io` (bytes of adjacent missing
# chunks fetched with a missed one; ours adapts below it to the link), the same for both
# lazy contenders. nydus-image and nydusd default to 1 MiB for both; 128 KiB chunks fetch
# far fewer bytes nobody reads, which is what a thin link pays for (benches/README.md).
CHUNK_SIZE = int(os.environ.get("NYDUS_BENCH_COLDSTART_CHUNK", str(128 << 10)), 0)
AMPLIFY_IO = int(os.environ.get("NYDUS_BENCH_COLDSTART_AMPLIFY", str(1 << 20)), 0)
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')


def missing() -> Optional[str]:
    for tool in ("mmdebstrap", "skopeo", "containerd", "ctr", "runc", "ip", "tc"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    if not os.access("/usr/bin/docker-registry", os.X_OK):
        return "no docker-registry"
    if os.geteuid() != 0:
        return "containers need root"
    return None


def rootfs_tar() -> Path:
    if not ROOTFS.exists():
        part = ROOTFS.with_suffix(".part.tar")
        subprocess.run(
            [
                *("mmdebstrap", "--variant=minbase", "--mode=root", "-q"),
                *("--include=python3,python3-requests,nodejs", "bookworm", str(part)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        part.rename(ROOTFS)
    return ROOTFS


class Link:
    """Where the registry runs: on loopback, or in a network namespace behind a veth pair
    shaped to `rate` by tbf."""

    def __init__(self, name: str, rate: Optional[str]) -> None:
        self.name, self.rate = name, rate
        self.ip = "127.0.0.1" if rate is None else REG_IP

    def up(self) -> None:
        if self.rate is None:
            return
        self.down()
        sh = lambda *a: subprocess.run(a, check=True)  # noqa: E731
        sh("ip", "netns", "add", NETNS)
        sh("ip", "link", "add", "nhb-host", "type", "veth", "peer", "name", "nhb-reg")
        sh("ip", "link", "set", "nhb-reg", "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", "nhb-host")
        sh("ip", "link", "set", "nhb-host", "up")
        sh("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{REG_IP}/24", "dev", "nhb-reg")
        sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "nhb-reg", "up")
        sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        tbf = ["tbf", "rate", self.rate, "burst", "128kb", "latency", "50ms"]
        sh("tc", "qdisc", "add", "dev", "nhb-host", "root", *tbf)
        sh("ip", "netns", "exec", NETNS, "tc", "qdisc", "add", "dev", "nhb-reg", "root", *tbf)

    def down(self) -> None:
        if self.rate is None:
            return
        subprocess.run(["ip", "link", "del", "nhb-host"], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)

    def prefix(self) -> List[str]:
        return [] if self.rate is None else ["ip", "netns", "exec", NETNS]


class Registry:
    def __init__(self, work: Path, link: Link, port: int = 5000) -> None:
        self.dir = work / f"registry-{link.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = f"{link.ip}:{port if link.rate else _free_port()}"
        self.log = self.dir / "access.log"
        cfg = self.dir / "config.yml"
        cfg.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "warn", "accesslog": {"disabled": False}},
                    "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}},
                    "http": {"addr": self.host},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "OTEL_"))}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*link.prefix(), "/usr/bin/docker-registry", "serve", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-sf", f"http://{self.host}/v2/"], capture_output=True).returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)

    def served(self) -> List[tuple[str, str, int, int]]:
        text = self.log.read_text(errors="replace")
        return [(m[1], m[2], int(m[3]), 0 if m[4] == "-" else int(m[4])) for m in _ACCESS.finditer(text)]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def publish(registry: Registry, work: Path) -> Dict[str, Any]:
    """The OCI image (skopeo from a layout) and its Nydus conversion in `registry`."""
    from nydus_hybrid.convert.convert import ConvertOptions, convert
    from nydus_hybrid.convert.store import open_source, open_target
    from tests.helpers.layers import write_layout

    layout = work / "oci-py-node"
    if not (layout / "index.json").exists():
        shutil.rmtree(layout, ignore_errors=True)
        write_layout(layout, [rootfs_tar()], ["gzip"])
    oci_ref, nydus_ref = f"{registry.host}/pynode:oci", f"{registry.host}/pynode:nydus"
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}", f"docker://{oci_ref}"], check=True
    )
    opts = ConvertOptions(chunk_size=CHUNK_SIZE)
    convert(open_source(f"oci:{layout}"), open_target(nydus_ref, plain_http=True), opts)
    sizes = {}
    for ref in (oci_ref, nydus_ref):
        m = json.loads(open_source(ref, plain_http=True).root()[1])
        sizes[ref] = sum(int(d["size"]) for d in m["layers"])
    return {"oci": oci_ref, "nydus": nydus_ref, "sizes": sizes}


@dataclass
class Start:
    contender: str
    link: str
    pull_s: float = 0.0
    python_first_output_s: float = 0.0
    node_first_output_s: float = 0.0
    requests: int = 0
    fetched_bytes: int = 0
    image_bytes: int = 0
    outputs: List[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        """Pull, then the first container's first output: what a user waits for."""
        return self.pull_s + self.python_first_output_s


def _first_line(argv: List[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    dt = time.perf_counter() - t0
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0 and line, f"{argv}: {err[-1500:]}"
    return dt, line


def cold_start(contender: str, link: Link, registry: Registry, images: Dict[str, Any], work: Path) -> Start:
    """One cold start of `contender` (see the module's list) from `registry`."""
    from tests.helpers.containerd import Containerd
    from tests.helpers.snapshots import SnapshotterProcess

    run_dir = work / f"run-{contender}-{link.name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    extra = ["--plain-http-registry", registry.host, "--nydusd-config", str(daemon_template(run_dir))]
    if contender.startswith("nydus-ref"):
        extra += ["--nydusd", str(nydusd_wrapper(work))]
    if contender.endswith("-fscache"):
        extra += ["--fs-driver", "fscache"]
    snap = SnapshotterProcess(run_dir / "sn", extra=extra).start()
    ctd = Containerd(run_dir / "ctd", snap.address).start()
    ref = images["oci" if contender == "oci" else "nydus"]
    snapshotter = "overlayfs" if contender == "oci" else "nydus"
    result = Start(contender, link.name, image_bytes=images["sizes"][ref])
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
        before = len(registry.served())
        t0 = time.perf_counter()
        if contender == "oci":
            ctd.ctr("images", "pull", "--plain-http", "--snapshotter", snapshotter, ref, timeout=1800)
        else:
            subprocess.run(
                [
                    *(sys.executable, "-m", "nydus_hybrid", "pull", "-a", str(ctd.address), "-n", "test"),
                    *("--plain-http", "--snapshotter", snapshotter, ref),
                ],
                check=True,
                capture_output=True,
                timeout=1800,
            )
        result.pull_s = time.perf_counter() - t0
        base = [*ctd_cmd(ctd), "run", "--rm", "--snapshotter", snapshotter, ref]
        result.python_first_output_s, out1 = _first_line([*base, f"py-{contender}-{link.name}", *PY])
        result.node_first_output_s, out2 = _first_line([*base, f"node-{contender}-{link.name}", *NODE])
        result.outputs = [out1, out2]
        time.sleep(0.3)
        served = registry.served()[before:]
        result.requests = len(served)
        result.fetched_bytes = sum(n for *_, n in served)
    finally:
        ctd.stop()
        snap.stop()
        snap.reap_daemons()
    shutil.rmtree(run_dir, ignore_errors=True)  # kept when the run failed, with its logs
    return result


def daemon_template(run_dir: Path) -> Path:
    """The snapshotter's built-in daemon config with the bench's `amplify_io`."""
    from nydus_hybrid.snapshotter.backend import DEFAULT_TEMPLATE

    path = run_dir / "nydusd-template.json"
    path.write_text(json.dumps({**DEFAULT_TEMPLATE, "amplify_io": AMPLIFY_IO}))
    return path


def nydusd_wrapper(work: Path) -> Path:
    """The real nydusd as the snapshotter runs it, keeping the open-file limit: its default
    raise to 1,000,000 needs CAP_SYS_RESOURCE, which this container's root lacks."""
    w = work / "nydusd"
    w.write_text(f'#!/bin/sh\nexec {NYDUSD} "$@" --rlimit-nofile 0\n')
    w.chmod(0o755)
    return w


def ctd_cmd(ctd: Any) -> List[str]:
    return ["/usr/bin/ctr", "-a", str(ctd.address), "-n", "test"]


def work_dir() -> Path:
    # Short: the snapshotter's root must fit daemon socket paths (70 bytes).
    d = Path("/tmp/nhcold") if len(str(bench_dir())) > 30 else Path(bench_dir()) / "cold"
    d.mkdir(parents=True, exist_ok=True)
    return d
