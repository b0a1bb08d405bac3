"""The build tools compared (nydus-hybrid zstd / lz4_block, mkfs.erofs -zlz4, tar | zstd),
one measured build into a fresh directory (`run_tool`), and the per-tool `Summary` of the
rounds (medians, peak RSS, cores used, output ratio)."""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchlib.corpus import dir_bytes, fresh_dir
from benchlib.measure import Run, run_measured
from benchlib.report import MiB

RSS_GOAL_MIB = 100


@dataclass
class Tool:
    name: str
    make: Callable[[str, str], List[List[str]]]  # (source dir, fresh output dir) -> pipeline
    ours: bool = False
    env: Optional[Dict[str, str]] = None


def nydus_cmd(src: str, out: str, compressor: str = "zstd", digester: str = "blake3") -> List[List[str]]:
    return [
        [
            sys.executable,
            "-m",
            "nydus_hybrid",
            "build",
            src,
            "-B",
            os.path.join(out, "image.boot"),
            "-D",
            os.path.join(out, "blobs"),
            "-c",
            compressor,
            "-d",
            digester,
            "--no-progress",
        ]
    ]


def erofs_cmd(src: str, out: str) -> List[List[str]]:
    return [["mkfs.erofs", "-zlz4", "--quiet", os.path.join(out, "out.img"), src]]


def tar_zstd_cmd(src: str, out: str) -> List[List[str]]:
    return [["tar", "-C", src, "-cf", "-", "."], ["zstd", "-T0", "-3", "-q", "-o", os.path.join(out, "out.tar.zst")]]


TOOLS: Dict[str, Tool] = {
    "nydus-hybrid zstd": Tool("nydus-hybrid zstd", lambda s, o: nydus_cmd(s, o, "zstd"), ours=True),
    "nydus-hybrid lz4_block": Tool("nydus-hybrid lz4_block", lambda s, o: nydus_cmd(s, o, "lz4_block"), ours=True),
    "mkfs.erofs -zlz4": Tool("mkfs.erofs -zlz4", erofs_cmd),
    "tar | zstd -T0 -3": Tool("tar | zstd -T0 -3", tar_zstd_cmd),
}


BASELINE = "mkfs.erofs -zlz4"


def run_tool(tool: Tool, src: str, out: str, *, sample_rss: bool = False) -> Tuple[Run, int]:
    """Run one build into a fresh `out`; returns the measurement and the output size."""
    fresh_dir(out)
    env = None
    if tool.env:
        env = dict(os.environ, **tool.env)
    r = run_measured(tool.make(src, out), sample_rss=sample_rss, env=env)
    return r, dir_bytes(out)


def python_baseline_rss_kib() -> int:
    """Peak RSS of a bare `python -c 'import nydus_hybrid'` (the floor for our CLI builds)."""
    return run_measured([[sys.executable, "-c", "import nydus_hybrid, nydus_hybrid.cli"]]).maxrss_kib


@dataclass
class Summary:
    name: str
    input_bytes: int
    walls: List[float]
    rss_kib: List[int]
    cpus: List[float]
    output_bytes: int
    sys_cpus: List[float] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def mib_s(self) -> float:
        return self.input_bytes / MiB / self.wall

    @property
    def peak_rss_mib(self) -> float:
        return max(self.rss_kib) / 1024

    @property
    def cores_used(self) -> float:
        return statistics.median(c / w for c, w in zip(self.cpus, self.walls))

    @property
    def sys_share(self) -> float:
        """Median fraction of the CPU time spent in the kernel."""
        return statistics.median(s / c if c else 0.0 for s, c in zip(self.sys_cpus, self.cpus))

    @property
    def out_ratio(self) -> float:
        return self.output_bytes / self.input_bytes if self.input_bytes else 0.0


def summarize(name: str, input_bytes: int, runs: Sequence[Tuple[Run, int]]) -> Summary:
    return Summary(
        name,
        input_bytes,
        [r.wall for r, _ in runs],
        [r.maxrss_kib for r, _ in runs],
        [r.cpu for r, _ in runs],
        runs[-1][1],
        [r.sys_cpu for r, _ in runs],
    )
