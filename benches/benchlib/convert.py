"""Image conversion side by side (benches/test_convert.py): the Debian-based four-layer
image of the conversion tests (tests/helpers/layers.py: mmdebstrap minbase plus three
layers; all gzip here, since nydus-image 2.2 reads no zstd tars), in a docker-registry on
127.0.0.1, pushed there by skopeo. Each contender runs under GNU time (wall, peak RSS):

* `skopeo copy` registry -> registry (a new repository each round) and registry -> OCI
  layout: the floor, moving the same bytes without converting them;
* ours, registry -> registry: `nydus-hybrid convert` (pull, convert 4 layers at once,
  merge, push), with the layer cache off;
* the reference tools on the same layers: skopeo's pull into a layout, then
  `nydus-image create -t targz-rafs` per layer (4 at once, as nydusify runs them) and
  `nydus-image merge`; they push nothing, so ours does more work than they do;
* ours and the reference again from a local OCI layout, without the network.

And the chunk dictionary: bytes stored and pushed for an image whose base is the first
image's files packed again, with and without the first image's bootstrap as dictionary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

from benchlib.env import bench_dir
from benchlib.measure import Run, run_measured

NYDUS_REF = Path(os.path.expanduser("~/.cache/nydus-hybrid/nydus-ref/bin"))
OURS = [sys.executable, "-m", "nydus_hybrid", "convert"]


def missing() -> str | None:
    for tool in ("skopeo", "mmdebstrap", "docker-registry"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/bin/{tool}"):
            return f"no {tool} (apt-get install {tool})"
    if not os.access(NYDUS_REF / "nydus-image", os.X_OK):
        return "no nydus-image: run scripts/install-nydus-reference.sh"
    if os.geteuid() != 0:
        return "the Debian layers need root"
    return None


@dataclass
class Setup:
    registry: Any  # tests.helpers.servers.Registry
    layout: Path  # the OCI layout the image was pushed from
    layers: List[Path]  # its layer files (gzip), lowest first
    tars: List[Path]  # the same layers uncompressed
    rootfs: Path  # the flattened rootfs
    work: Path

    @property
    def source(self) -> str:
        return f"{self.registry.host}/debian:oci"

    def close(self) -> None:
        self.registry.close()


def setup() -> Setup:
    from tests.helpers import servers
    from tests.helpers.layers import debian_layers, flatten, write_layout

    work = Path(bench_dir()) / "convert"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tars = debian_layers(work)
    layout = work / "oci"
    write_layout(layout, tars, ["gzip"] * len(tars))
    rootfs = work / "rootfs"
    flatten(tars, rootfs)
    index = json.loads((layout / "index.json").read_text())
    m = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    layers = [layout / "blobs/sha256" / d["digest"][7:] for d in m["layers"]]
    reg = servers.Registry(work / "registry").start()
    skopeo(f"oci:{layout}", f"docker://{reg.host}/debian:oci")
    return Setup(reg, layout, layers, tars, rootfs, work)


def skopeo(src: str, dst: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", src, dst], check=True)


def skopeo_cmd(src: str, dst: str) -> List[str]:
    return ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", src, dst]


def measure(argv: Sequence[str]) -> Run:
    return run_measured([list(argv)])


def reference_script(layers: Sequence[Path], out: Path, pull: str | None) -> List[str]:
    """One shell command: [skopeo pull into a layout,] nydus-image create per layer, 4 at
    once, then nydus-image merge. GNU time on it reports the largest process's peak."""
    ni = str(NYDUS_REF / "nydus-image")
    lines = ["set -e", f"rm -rf {out}", f"mkdir -p {out}"]
    if pull:
        lines.append(" ".join(skopeo_cmd(pull, f"oci:{out}/pulled")))
    jobs = []
    for i, layer in enumerate(layers):
        src = layer if not pull else f"{out}/pulled/blobs/sha256/{layer.name}"
        jobs.append(
            f"{ni} create -t targz-rafs --fs-version 6 --whiteout-spec none --compressor zstd --chunk-size 0x100000 "
            f"-B {out}/l{i}.boot -b {out}/l{i}.blob {src} >/dev/null 2>&1"
        )
    for start in range(0, len(jobs), 4):
        lines.append(" & ".join(jobs[start : start + 4]) + " & wait")
    boots = " ".join(f"{out}/l{i}.boot" for i in range(len(layers)))
    lines.append(f"{ni} merge -B {out}/image.boot {boots} >/dev/null 2>&1")
    return ["bash", "-c", "\n".join(lines)]


def ours_registry(s: Setup, repo: str, *extra: str) -> Run:
    return measure([*OURS, s.source, f"{s.registry.host}/{repo}:nydus", "--plain-http", "--no-cache", *extra])


def ours_layout(s: Setup, out: Path) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    return measure([*OURS, f"oci:{s.layout}", f"oci:{out}", "--no-cache"])


def report_of(run: Run) -> Dict[str, Any]:
    doc: Dict[str, Any] = json.loads(run.stdout)
    return doc


def dict_images(s: Setup) -> Path:
    """Image B: the first image's rootfs packed again as one base layer (no layer digest in
    common, every file in common) plus a 4 MiB layer of new data; an OCI layout."""
    from tests.helpers.layers import tar_dir, write_layout

    extra = s.work / "b-extra"
    (extra / "srv").mkdir(parents=True, exist_ok=True)
    (extra / "srv/new.bin").write_bytes(os.urandom(4 << 20))
    layout = s.work / "b-oci"
    shutil.rmtree(layout, ignore_errors=True)
    write_layout(
        layout, [tar_dir(s.rootfs, s.work / "b-base.tar"), tar_dir(extra, s.work / "b-extra.tar")], ["gzip"] * 2
    )
    return layout
