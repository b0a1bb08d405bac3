"""Image conversion side by side with the reference tools and a plain copy (see
`benchlib/convert.py` for what each contender does). NYDUS_BENCH_CONVERT_ROUNDS rounds
(3), the contenders interleaved in each round; medians of wall time, the largest peak RSS.
Figures go to extra_info and benches/README.md; nothing is asserted."""

from __future__ import annotations

import gzip
import io
import json
import os
import statistics
import tarfile
from typing import Dict, List

import pytest

from benchlib import convert as cb
from benchlib.measure import Run
from nydus_hybrid.blobs import registry_client
from nydus_hybrid.convert.convert import ConvertOptions, convert
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.convert.registry import ACCEPT, client_config
from nydus_hybrid.convert.store import open_source, open_target

_missing = cb.missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def setup():
    s = cb.setup()
    yield s
    s.close()


def _rounds() -> int:
    return max(1, int(os.environ.get("NYDUS_BENCH_CONVERT_ROUNDS", "3")))


def _row(runs: List[Run]) -> Dict[str, float]:
    return {
        "wall_s_p50": round(statistics.median(r.wall for r in runs), 2),
        "peak_rss_mib_max": round(max(r.maxrss_mib for r in runs), 1),
    }


def test_convert_side_by_side(benchmark, setup):
    benchmark.group = "convert: a 4-layer Debian image, registry on 127.0.0.1"
    s = setup
    runs: Dict[str, List[Run]] = {
        k: []
        for k in (
            "skopeo r->r",
            "skopeo pull",
            "ref pull+create+merge",
            "ours r->r",
            "ref create+merge (local)",
            "ours layout->layout",
        )
    }
    n = [0]

    def one_round():
        i = n[0] = n[0] + 1
        runs["skopeo r->r"].append(
            cb.measure(cb.skopeo_cmd(f"docker://{s.source}", f"docker://{s.registry.host}/copy{i}:x"))
        )
        runs["skopeo pull"].append(
            cb.measure(
                [
                    "bash",
                    "-c",
                    f"rm -rf {s.work}/pull && " + " ".join(cb.skopeo_cmd(f"docker://{s.source}", f"oci:{s.work}/pull")),
                ]
            )
        )
        runs["ref pull+create+merge"].append(
            cb.measure(cb.reference_script(s.layers, s.work / "ref-pull", f"docker://{s.source}"))
        )
        runs["ours r->r"].append(cb.ours_registry(s, f"ours{i}"))
        runs["ref create+merge (local)"].append(cb.measure(cb.reference_script(s.layers, s.work / "ref-local", None)))
        runs["ours layout->layout"].append(cb.ours_layout(s, s.work / "ours-layout"))

    benchmark.pedantic(one_round, rounds=_rounds(), iterations=1)
    info = benchmark.extra_info
    for k, rs in runs.items():
        info[k] = _row(rs)
    info["ratio ours/ref (registry)"] = round(
        info["ours r->r"]["wall_s_p50"] / info["ref pull+create+merge"]["wall_s_p50"], 2
    )
    info["ratio ours/ref (local)"] = round(
        info["ours layout->layout"]["wall_s_p50"] / info["ref create+merge (local)"]["wall_s_p50"], 2
    )
    info["ratio ours/skopeo r->r"] = round(info["ours r->r"]["wall_s_p50"] / info["skopeo r->r"]["wall_s_p50"], 2)
    report = cb.report_of(runs["ours r->r"][-1])
    info["source_bytes"] = report["totals"]["source_bytes"]
    info["blob_bytes"] = report["totals"]["blob_bytes"]
    print(info)


def test_chunk_dictionary_bytes(benchmark, setup, tmp_path):
    benchmark.group = "convert: bytes stored and pushed for image B, with and without image A as chunk dict"
    s = setup
    host = s.registry.host
    a = convert(
        open_source(s.source, plain_http=True), open_target(f"{host}/dict:a", plain_http=True), ConvertOptions()
    )
    b_layout = cb.dict_images(s)
    # A's merged bootstrap, from its bootstrap layer.
    c = registry_client(client_config(parse_registry(f"{host}/dict:a"), plain_http=True))
    m = json.loads(c.get_manifest("a", ACCEPT)[2])
    c.fetch_blob(m["layers"][-1]["digest"], str(tmp_path / "a.layer"))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress((tmp_path / "a.layer").read_bytes()))) as t:
        (tmp_path / "a.boot").write_bytes(t.extractfile("image/image.boot").read())  # type: ignore[union-attr]
    results = {}

    def one_round():
        for name, opts in (
            ("without dict", ConvertOptions()),
            ("with dict", ConvertOptions(chunk_dict=tmp_path / "a.boot")),
        ):
            r = convert(
                open_source(f"oci:{b_layout}"),
                open_target(f"{host}/dict:b-{name.replace(' ', '-')}", plain_http=True),
                opts,
            )
            results[name] = r.totals

    benchmark.pedantic(one_round, rounds=1, iterations=1)
    info = benchmark.extra_info
    info["image_a_blob_bytes"] = a.totals["blob_bytes"]
    for name, t in results.items():
        info[name] = {k: t[k] for k in ("source_bytes", "blob_bytes", "pushed_bytes", "dict_chunks")}
    info["stored_ratio_with_vs_without"] = round(
        results["with dict"]["blob_bytes"] / results["without dict"]["blob_bytes"], 3
    )
    print(info)
