"""Container cold start to first useful output: OCI on overlayfs (a full pull) against the
lazy pull through our snapshotter with the real nydusd and with our daemon, on loopback
and through a 100 Mbit/s tbf link (see `benchlib/coldstart.py`). One cold start per
contender and link, contenders interleaved; figures go to extra_info and
benches/README.md. Nothing is asserted but the containers' output."""

from __future__ import annotations

import dataclasses
import os

import pytest

from benchlib import coldstart as cs

_missing = cs.missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

CONTENDERS = tuple(os.environ.get("NYDUS_BENCH_COLDSTART_CONTENDERS", "nydus-ref,ours,oci").split(","))


def links():
    names = os.environ.get("NYDUS_BENCH_COLDSTART_LINKS", "loopback,tbf100")
    return [cs.Link("loopback", None) if n == "loopback" else cs.Link(n, "100mbit") for n in names.split(",")]


def test_cold_start(benchmark):
    benchmark.group = "cold start: Debian + python3 + nodejs, ctr run to first output"
    work = cs.work_dir()
    results = []
    for link in links():
        link.up()
        registry = cs.Registry(work, link)
        try:
            images = cs.publish(registry, work)
            for contender in CONTENDERS:
                r = cs.cold_start(contender, link, registry, images, work)
                assert r.outputs[0].startswith("requests ") and r.outputs[1].startswith("node v"), r.outputs
                results.append(r)
        finally:
            registry.close()
            link.down()
    rows = [{**dataclasses.asdict(r), "total_s": round(r.total_s, 3)} for r in results]
    benchmark.extra_info["rows"] = rows
    benchmark.extra_info["chunk_size"], benchmark.extra_info["amplify_io"] = cs.CHUNK_SIZE, cs.AMPLIFY_IO
    print(f"Nydus image chunk size {cs.CHUNK_SIZE} B, daemons' amplify_io {cs.AMPLIFY_IO} B")
    for r in results:
        oci = next(x for x in results if x.link == r.link and x.contender == "oci")
        print(
            f"{r.link:9} {r.contender:9} pull {r.pull_s:6.2f} s  python {r.python_first_output_s:5.2f} s  "
            f"node {r.node_first_output_s:5.2f} s  total {r.total_s:6.2f} s ({r.total_s / oci.total_s:4.2f}x oci)  "
            f"{r.requests:4d} req  {r.fetched_bytes / 1e6:7.1f} MB of {r.image_bytes / 1e6:6.1f} MB"
        )
    benchmark.pedantic(lambda: None, rounds=1)
