#!/usr/bin/env python3
"""Drive the three FUSE servers through the same scenarios; print a markdown table.

Run as root after `cargo build --release --features fbr,fuser16,fuser18`.
Usage: python3 bench.py [--reps 3] [--threads 4] [--rand-n 4000]
Each repetition mounts every variant afresh (interleaved), so the directory scan always
starts with an empty dentry/inode cache for that superblock.
"""

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "target", "release")
MiB = 1 << 20
BIG = 512 * MiB


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Server:
    def __init__(self, name, binary, threads, mnt, logdir):
        self.name, self.mnt = name, mnt
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "w+")
        self.p = subprocess.Popen([os.path.join(BIN, binary), mnt, str(threads)], stderr=self.log)
        t0 = time.time()
        while not is_mounted(mnt):
            if self.p.poll() is not None or time.time() - t0 > 60:
                raise RuntimeError(f"{name} did not mount: {open(self.log_path).read()}")
            time.sleep(0.05)
        os.stat(mnt)  # waits for INIT

    def stats(self):
        """Ask for the counters (SIGUSR1) and parse the new line."""
        n_before = open(self.log_path).read().count("STATS")
        self.p.send_signal(signal.SIGUSR1)
        for _ in range(200):
            text = open(self.log_path).read()
            if text.count("STATS") > n_before:
                line = [ln for ln in text.splitlines() if ln.startswith("STATS")][-1]
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            time.sleep(0.01)
        raise RuntimeError("no stats")

    def stop(self):
        subprocess.run(["umount", self.mnt], check=True)
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def delta(a, b):
    return {k: b[k] - a.get(k, 0) for k in b}


def dd(path, skip_mib=0, count_mib=None):
    args = ["dd", f"if={path}", "of=/dev/null", "bs=1M", f"skip={skip_mib}", "status=none"]
    if count_mib is not None:
        args.append(f"count={count_mib}")
    return subprocess.Popen(args)


def seq_read(path):
    t = time.perf_counter()
    assert dd(path).wait() == 0
    return BIG / MiB / (time.perf_counter() - t)


def par_read(path, n=4):
    per = 512 // n
    t = time.perf_counter()
    ps = [dd(path, i * per, per) for i in range(n)]
    assert all(p.wait() == 0 for p in ps)
    return BIG / MiB / (time.perf_counter() - t)


def rand_read(path, n, seed):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: one 4 KiB FUSE read per miss
        offs = [p * 4096 for p in random.Random(seed).sample(range(BIG // 4096), n)]
        lat = []
        pread, clock = os.pread, time.perf_counter_ns
        for off in offs:
            t = clock()
            b = pread(fd, 4096, off)
            lat.append(clock() - t)
            assert len(b) == 4096
        lat.sort()
        return lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000
    finally:
        os.close(fd)


def scan(dirpath):
    t = time.perf_counter()
    n = 0
    with os.scandir(dirpath) as it:
        for e in it:
            os.stat(os.path.join(dirpath, e.name))
            n += 1
    assert n == 20000, n
    return n / (time.perf_counter() - t)


def find_stat(dirpath):
    t = time.perf_counter()
    out = subprocess.run(
        f"find {dirpath} -type f -print0 | xargs -0 stat -c %s | wc -l",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert int(out) == 20000, out
    return 20000 / (time.perf_counter() - t)


def run_variant(name, binary, threads, rep, args, logdir):
    mnt = tempfile.mkdtemp(prefix=f"fuse-{name}-", dir="/tmp")
    r = {}
    drop_caches()
    s = Server(name, binary, threads, mnt, logdir)
    try:
        big, many = os.path.join(mnt, "big"), os.path.join(mnt, "many")
        st0 = s.stats()
        r["scan"] = scan(many)  # cold dentry cache: fresh superblock
        st1 = s.stats()
        r["scan_req"] = delta(st0, st1)
        drop_caches()
        r["find"] = find_stat(many)  # after drop_caches: dentries/inodes gone again
        st1b = s.stats()
        r["find_req"] = delta(st1, st1b)
        drop_caches()
        st1 = s.stats()
        r["cold"] = seq_read(big)
        st2 = s.stats()
        r["cold_req"] = delta(st1, st2)
        r["warm"] = seq_read(big)
        r["warm_req"] = delta(st2, s.stats())
        drop_caches()
        r["par4"] = par_read(big)
        drop_caches()
        st3 = s.stats()
        r["rand_p50"], r["rand_p99"] = rand_read(big, args.rand_n, seed=rep)
        r["rand_req"] = delta(st3, s.stats())
        # Same cold read with the mount's readahead raised to 1 MiB: shows whether the
        # library negotiated max_pages = 256 (1 MiB FUSE_READ requests) or not.
        dev = os.stat(mnt).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write("1024\n")
        drop_caches()
        st4 = s.stats()
        r["cold_ra1m"] = seq_read(big)
        r["ra1m_req"] = delta(st4, s.stats())
    finally:
        s.stop()
        os.rmdir(mnt)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rand-n", type=int, default=4000)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    T = args.threads
    variants = [
        (f"fuse-backend-rs {T}t", "fbr", T),
        ("fuse-backend-rs 1t", "fbr", 1),
        ("fuser 0.16 (1t only)", "fuser16", 1),
        (f"fuser 0.18 {T}t clone_fd", "fuser18", T),
        ("fuser 0.18 1t", "fuser18", 1),
    ]
    if args.only:
        variants = [v for v in variants if v[1] in args.only.split(",")]
    logdir = tempfile.mkdtemp(prefix="fuse-bench-logs-")
    res = {v[0]: [] for v in variants}
    for rep in range(args.reps):
        for name, binary, threads in variants:
            r = run_variant(name.split()[0] + binary + str(threads), binary, threads, rep, args, logdir)
            res[name].append(r)
            print(
                f"rep {rep} {name}: "
                + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                file=sys.stderr,
                flush=True,
            )

    def med(rs, k):
        return statistics.median(r[k] for r in rs)

    print(
        "| server | (1) seq cold MiB/s | (1) seq warm MiB/s | (2) 4 readers cold MiB/s | (3) 4 KiB rand p50 µs "
        "| (3) p99 µs | (4) scandir+stat files/s | (4) find\\|xargs stat files/s | (1') seq cold, ra 1 MiB, MiB/s "
        "| FUSE_READ KiB (ra 128K / 1M) | scan requests |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in res.items():
        q = rs[-1]["scan_req"]
        f = rs[-1]["find_req"]
        reqs = (
            f"{q['readdirplus']} rdplus, {q['readdir']} rd, {q['lookup']} lookup, {q['getattr']} getattr; "
            f"find: {f['readdirplus']}/{f['readdir']}/{f['lookup']}/{f['getattr']}"
        )
        avg = statistics.median(r["cold_req"]["read_bytes"] / max(1, r["cold_req"]["read"]) for r in rs) / 1024
        avg1m = statistics.median(r["ra1m_req"]["read_bytes"] / max(1, r["ra1m_req"]["read"]) for r in rs) / 1024
        print(
            f"| {name} | {med(rs, 'cold'):.0f} | {med(rs, 'warm'):.0f} | {med(rs, 'par4'):.0f} "
            f"| {med(rs, 'rand_p50'):.1f} | {med(rs, 'rand_p99'):.1f} | {med(rs, 'scan'):.0f} | {med(rs, 'find'):.0f} "
            f"| {med(rs, 'cold_ra1m'):.0f} | {avg:.0f} / {avg1m:.0f} | {reqs} |"
        )
    print("\nper-run values:", file=sys.stderr)
    for name, rs in res.items():
        for k in ("cold", "warm", "par4", "rand_p50", "rand_p99", "scan", "find", "cold_ra1m"):
            print(f"  {name} {k}: " + ", ".join(f"{r[k]:.1f}" for r in rs), file=sys.stderr)
    print(f"logs: {logdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
