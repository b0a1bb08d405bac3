"""The environment of a run: the size and round knobs (environment variables, smaller
defaults when CI is set), where the cached inputs live, and what machine and build of
nydus-hybrid is measured.

Sizes: NYDUS_BENCH_MB (corpus, MiB), NYDUS_BENCH_BIGFILE_GB (big file, GiB),
NYDUS_BENCH_ROUNDS (timed rounds per tool), NYDUS_BENCH_DIR (where the cached inputs
live); the storage, daemon and API knobs below. Defaults are smaller when the CI
environment variable is set.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict

IN_CI = bool(os.environ.get("CI"))


def bench_mb() -> int:
    return int(os.environ.get("NYDUS_BENCH_MB", "64" if IN_CI else "200"))


def bigfile_gb() -> float:
    return float(os.environ.get("NYDUS_BENCH_BIGFILE_GB", "0.5" if IN_CI else "2"))


@functools.cache
def daemon_python() -> str:
    """The interpreter our daemon runs under: NYDUS_BENCH_PYTHON, or by default a venv of the
    running interpreter made once under bench_dir(). Its one .pth names this checkout's
    package and the running interpreter's site-packages, so it runs the same code with the
    same dependencies, as a `pip install nydus-hybrid` into a venv does, but without the
    host's own start-up hooks: this sandbox's site-packages holds a .pth that imports
    certifi at every interpreter start (about 30 ms), which no user's venv runs."""
    chosen = os.environ.get("NYDUS_BENCH_PYTHON")
    if chosen:
        return chosen
    import site

    import nydus_hybrid

    venv = os.path.join(bench_dir(), "daemon-venv")
    python = os.path.join(venv, "bin", "python")
    paths = [os.path.dirname(os.path.dirname(nydus_hybrid.__file__)), *site.getsitepackages()]
    pth = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages", "bench.pth")
    want = "".join(p + "\n" for p in paths)
    try:
        with open(pth) as f:
            if f.read() == want and os.path.exists(python):
                return python
    except OSError:
        pass
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", venv], check=True)
    with open(pth, "w") as f:
        f.write(want)
    return python


def compile_package() -> None:
    """Write the package's bytecode, as `pip install` of a wheel does. A source checkout run
    with PYTHONDONTWRITEBYTECODE (this host sets it) would otherwise compile every module at
    every daemon start, which no installed daemon does."""
    import nydus_hybrid

    pkg = os.path.dirname(nydus_hybrid.__file__)
    subprocess.run([daemon_python(), "-m", "compileall", "-q", pkg], check=True, stdout=subprocess.DEVNULL)


def bench_rounds() -> int:
    return max(1, int(os.environ.get("NYDUS_BENCH_ROUNDS", "3")))


def bench_dir() -> str:
    d = os.environ.get("NYDUS_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "nydus-bench")
    os.makedirs(d, exist_ok=True)
    return d


def storage_mb() -> int:
    """Size of the image for cold / warm throughput (MiB)."""
    return int(os.environ.get("NYDUS_BENCH_STORAGE_MB", "64" if IN_CI else "256"))


def partial_mb() -> int:
    """Size of the many-file image of which a fraction is read (MiB)."""
    return int(os.environ.get("NYDUS_BENCH_PARTIAL_MB", "60" if IN_CI else "500"))


def partial_fraction() -> float:
    return float(os.environ.get("NYDUS_BENCH_PARTIAL_FRACTION", "0.05"))


def daemon_rounds() -> int:
    """Start-ups per row (NYDUS_BENCH_DAEMON_ROUNDS; default 20, 10 with CI)."""
    return max(1, int(os.environ.get("NYDUS_BENCH_DAEMON_ROUNDS", "10" if IN_CI else "20")))


def daemon_api_rounds() -> int:
    """Bursts per state (idle / loaded) for the API latency (NYDUS_BENCH_DAEMON_API_ROUNDS)."""
    return max(1, int(os.environ.get("NYDUS_BENCH_DAEMON_API_ROUNDS", "10" if IN_CI else "20")))


def daemon_mb() -> int:
    """Size of the tree the reader processes read through the daemon (NYDUS_BENCH_DAEMON_MB)."""
    return int(os.environ.get("NYDUS_BENCH_DAEMON_MB", "32" if IN_CI else "64"))


def build_identity() -> Dict[str, str]:
    """Which nydus-hybrid is measured: git HEAD of the checkout and the extension module's
    sha256 prefix and mtime (run_all.py warns when the module changes during a run)."""
    import hashlib
    import importlib.util

    ident: Dict[str, str] = {}
    spec = importlib.util.find_spec("nydus_hybrid._core")
    if spec and spec.origin:
        with open(spec.origin, "rb") as f:
            ident["core_sha256"] = hashlib.sha256(f.read()).hexdigest()[:12]
        ident["core_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(spec.origin)))
        try:
            ident["git_head"] = (
                subprocess.run(
                    ["git", "-C", os.path.dirname(spec.origin), "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                or "?"
            )
        except OSError:
            ident["git_head"] = "?"
    return ident


def machine_info() -> Dict[str, str]:
    info = {
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem"] = f"{int(f.readline().split()[1]) // 1024} MiB"
    except OSError:
        pass
    try:
        v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "erofs-utils"], capture_output=True, text=True)
        info["erofs-utils"] = v.stdout.strip() or "?"
    except OSError:
        info["erofs-utils"] = "?"
    try:
        import re

        m = re.search(r"v(\d+\.\d+\.\d+)", subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout)
        info["zstd"] = m.group(1) if m else "?"
    except OSError:
        pass
    return info
