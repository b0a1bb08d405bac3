"""The ``nydus-hybrid`` command line. Flag names follow ``nydus-image`` where they exist.

Exit status: 0 success, 1 the operation failed (the reason is one line on stderr),
2 bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, NoReturn, Optional, Sequence

from nydus_hybrid import log, version
from nydus_hybrid.builder import BuildReport, build, merge
from nydus_hybrid.client import DaemonApiError
from nydus_hybrid.errors import NydusError
from nydus_hybrid.image import Image
from nydus_hybrid.lifecycle.errors import LifecycleError
from nydus_hybrid.lifecycle.upgrade import standalone_upgrade
from nydus_hybrid.manager import cli as mcli
from nydus_hybrid.manager.errors import ManagerError

_SIZE = re.compile(r"^(0x[0-9a-fA-F]+|\d+)([KkMmGg]i?[Bb]?)?$")
_AGE = re.compile(r"^(\d+)([smhd]?)$")


def parse_size(text: str) -> int:
    """'1M', '4K', '0x100000' or '1048576' to bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 1M, 4K or 0x100000)")
    value = int(m.group(1), 0)
    unit = (m.group(2) or "").lower()[:1]
    return value * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def parse_age(text: str) -> int:
    """'90', '30m', '12h' or '7d' to seconds."""
    m = _AGE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid age {text!r} (use e.g. 3600, 30m, 12h or 7d)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_chunk_size(text: str) -> int:
    """A chunk size: a power of two from 4 KiB to 16 MiB (spec §7)."""
    size = parse_size(text)
    if size < 0x1000 or size > 0x1000000 or size & (size - 1):
        raise argparse.ArgumentTypeError(f"chunk size {text!r} must be a power of two from 4K to 16M")
    return size


def _add_build(sub: argparse._SubParsersAction[_Parser]) -> None:
    for name, helptext in (
        ("build", "build a RAFS v6 image"),
        ("create", "alias of build, with nydus-image create's flags"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("source", help="a directory, or an OCI layer tarball (.tar, .tar.gz, .tar.zst)")
        p.add_argument("-B", "--bootstrap", help="output bootstrap file (not with --blob-inline-meta)")
        p.add_argument("-D", "--blob-dir", help="directory for the data blob, named by its sha256")
        p.add_argument("-b", "--blob", help="write the data blob to this file instead (nydus-image -b)")
        p.add_argument("-S", "--chunk-size", type=parse_chunk_size, default=0x100000, help="chunk size (default 1M)")
        p.add_argument("-c", "--compressor", default="zstd", choices=["zstd", "lz4_block", "none"])
        p.add_argument("-d", "--digester", default="blake3", choices=["blake3", "sha256"])
        p.add_argument(
            "-t",
            "--type",
            dest="source_type",
            default=None,
            choices=["dir-rafs", "tar-rafs", "directory"],
            help="source type (detected when omitted)",
        )
        p.add_argument("-v", "--fs-version", default="6", choices=["6"], help="only RAFS v6 is written")
        p.add_argument(
            "--whiteout-spec",
            default="oci",
            choices=["oci", "overlayfs", "none"],
            help="oci: turn .wh.* entries into overlayfs whiteouts (default); none: keep them",
        )
        p.add_argument("-R", "--repeatable", action="store_true", help="do not store uid/gid")
        p.add_argument("--features", default="blob-toc", help="accepted for compatibility; blob-toc is always on")
        p.add_argument("-A", "--aligned-chunk", action="store_true", help="accepted; always on for v6")
        p.add_argument(
            "--prefetch-policy",
            default="none",
            choices=["none", "fs"],
            help="fs: write a prefetch table of the image paths read from stdin, one per line",
        )
        p.add_argument(
            "--blob-inline-meta",
            action="store_true",
            help="put the bootstrap into the blob (image.boot), as a Nydus layer blob carries it",
        )
        p.add_argument(
            "--parent-bootstrap",
            help="build the source as a layer over this image; -B is then the whole image's bootstrap",
        )
        p.add_argument(
            "--chunk-dict",
            help="[bootstrap=]PATH: an image bootstrap whose chunks are referenced instead of stored again",
        )
        p.add_argument("--exclude", action="append", default=[], help="path in a directory source to leave out")
        p.add_argument("-J", "--output-json", help="also write the build report as JSON to this file")
        p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def _cmd_build(a: argparse.Namespace) -> int:
    if not a.blob_dir and not a.blob:
        raise SystemExit(_usage("give --blob-dir DIR or --blob FILE for the data blob"))
    if a.blob_inline_meta and a.bootstrap:
        raise SystemExit(_usage("--blob-inline-meta puts the bootstrap in the blob: drop --bootstrap"))
    if not a.blob_inline_meta and not a.bootstrap:
        raise SystemExit(_usage("--bootstrap FILE is required (or --blob-inline-meta)"))
    if a.prefetch_policy == "fs" and sys.stdin.isatty():
        raise SystemExit(_usage("--prefetch-policy fs reads the paths to prefetch from stdin, one per line"))
    if a.source_type == "tar-rafs" and not os.path.isfile(a.source):
        raise SystemExit(_usage(f"--type tar-rafs needs a tarball, {a.source} is not a file"))
    if a.source_type in ("dir-rafs", "directory") and not os.path.isdir(a.source):
        raise SystemExit(_usage(f"--type {a.source_type} needs a directory, {a.source} is not one"))
    unknown = set(filter(None, a.features.split(","))) - {"blob-toc"}
    if unknown:
        raise SystemExit(_usage(f"unsupported --features {','.join(sorted(unknown))}"))
    blob_dir = a.blob_dir or tempfile.mkdtemp(prefix=".nydus-blob-", dir=os.path.dirname(os.path.abspath(a.blob)))
    try:
        report = _build(a, blob_dir)
    finally:
        if not a.blob_dir:
            shutil.rmtree(blob_dir, ignore_errors=True)
    doc = dict(
        report.__dict__, dedup_ratio=round(report.dedup_ratio, 4), bootstrap=a.bootstrap and os.fspath(a.bootstrap)
    )
    return _report(a, doc)


def _report(a: argparse.Namespace, doc: Dict[str, Any]) -> int:
    """Print a command's JSON report, and write it to `-J FILE` too when asked."""
    if a.output_json:
        with open(a.output_json, "w") as f:
            json.dump(doc, f, indent=2)
    print(json.dumps(doc, indent=2))
    return 0


def _add_merge(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("merge", help="merge layer bootstraps (or layer blobs) into one image bootstrap")
    p.add_argument("sources", nargs="+", help="layer bootstraps or blobs carrying one, lowest layer first")
    p.add_argument("-B", "--bootstrap", required=True, help="output bootstrap file")
    p.add_argument("--blob-digests", help="comma-separated digests of the layers' blobs (default: from the file names)")
    p.add_argument("--blob-sizes", help="comma-separated sizes of the layers' blobs")
    p.add_argument("--prefetch-policy", default="none", choices=["none", "fs"], help="fs: prefetch table from stdin")
    p.add_argument("-J", "--output-json", help="also write the merge report as JSON to this file")


def _cmd_merge(a: argparse.Namespace) -> int:
    if a.prefetch_policy == "fs" and sys.stdin.isatty():
        raise SystemExit(_usage("--prefetch-policy fs reads the paths to prefetch from stdin, one per line"))
    digests = a.blob_digests.split(",") if a.blob_digests else None
    try:
        sizes = [int(s) for s in a.blob_sizes.split(",")] if a.blob_sizes else None
    except ValueError:
        raise SystemExit(_usage(f"--blob-sizes {a.blob_sizes!r}: comma-separated byte counts")) from None
    report = merge(
        a.sources,
        a.bootstrap,
        blob_digests=digests,
        blob_sizes=sizes,
        prefetch=sys.stdin.buffer.read().splitlines() if a.prefetch_policy == "fs" else (),
    )
    doc = dict(report.__dict__, bootstrap=os.fspath(a.bootstrap))
    return _report(a, doc)


def _add_convert(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("convert", help="convert an OCI image to a Nydus image (registry, layout or docker archive)")
    p.add_argument("source", help="HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or docker-archive:FILE")
    p.add_argument("target", help="HOST/REPO[:TAG] or oci:DIR[:TAG] (a layout is created if absent)")
    p.add_argument("--platform", help="os/arch[/variant] to convert from a multi-platform index (default: all)")
    p.add_argument(
        "--merge-platform", action="store_true", help="write an index with both the OCI and the Nydus manifests"
    )
    _registry_access_args(p)
    p.add_argument("-S", "--chunk-size", type=parse_chunk_size, default=0x100000, help="chunk size (default 1M)")
    p.add_argument("-c", "--compressor", default="zstd", choices=["zstd", "lz4_block", "none"])
    p.add_argument("--threads", type=int, default=4, help="layers converted at once (default 4)")
    p.add_argument(
        "--chunk-dict",
        metavar="[bootstrap=]PATH",
        help="reuse the chunks of this bootstrap (its blobs must be in the target already)",
    )
    p.add_argument("--cache-dir", help="the converted-layer cache (default ~/.cache/nydus-hybrid/convert)")
    p.add_argument("--no-cache", action="store_true", help="convert every layer, keep nothing")
    p.add_argument("--prefetch-patterns", action="store_true", help="read paths to prefetch from stdin, one per line")
    p.add_argument("-J", "--output-json", help="also write the report as JSON to this file")


def _registry_access_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-http", action="store_true", help="talk to the registries over http")
    p.add_argument("--insecure", action="store_true", help="do not verify the registries' TLS certificates")
    p.add_argument("--source-creds", metavar="USER:PASS", help="source registry credentials (default: config.json)")
    p.add_argument("--target-creds", metavar="USER:PASS", help="target registry credentials (default: config.json)")


def _cmd_convert(a: argparse.Namespace) -> int:
    from pathlib import Path

    from nydus_hybrid.convert import cache, store
    from nydus_hybrid.convert.convert import ConvertOptions, convert

    if a.threads < 1:
        raise SystemExit(_usage("--threads must be at least 1"))
    access = {"plain_http": a.plain_http, "insecure": a.insecure}
    source = store.open_source(a.source, creds=a.source_creds, **access)
    target = store.open_target(a.target, creds=a.target_creds, **access)
    tty = sys.stderr.isatty()
    opts = ConvertOptions(
        platform=a.platform,
        merge_platform=a.merge_platform,
        chunk_size=a.chunk_size,
        compressor=a.compressor,
        threads=a.threads,
        cache=None if a.no_cache else Path(a.cache_dir) if a.cache_dir else cache.default_dir(),
        prefetch=sys.stdin.buffer.read().splitlines() if a.prefetch_patterns else (),
        chunk_dict=Path(a.chunk_dict.removeprefix("bootstrap=")) if a.chunk_dict else None,
        progress=(lambda line: print(line, file=sys.stderr, flush=True)) if tty else None,
    )
    r = convert(source, target, opts)
    return _report(a, dataclasses.asdict(r))


def _cmd_pull(a: argparse.Namespace) -> int:
    from nydus_hybrid.containerd.client import Client
    from nydus_hybrid.containerd.pull import Puller
    from nydus_hybrid.convert.reference import parse_registry
    from nydus_hybrid.convert.registry import Registry

    registry = Registry(parse_registry(a.image), plain_http=a.plain_http, insecure=a.insecure, creds=a.creds)
    tty = sys.stderr.isatty()
    with Client(a.address, a.namespace) as client:
        puller = Puller(
            client,
            registry,
            a.snapshotter,
            platform=a.platform,
            progress=(lambda line: print(line, file=sys.stderr, flush=True)) if tty else None,
        )
        r = puller.pull().to_json()
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(
            f"{r['image']}: {r['lazy_layers']} of {len(r['layers'])} layers lazy, "
            f"{r['fetched_bytes']} of {r['image_bytes']} bytes fetched in {r['seconds']} s"
        )
    return 0


def _build(a: argparse.Namespace, blob_dir: str) -> BuildReport:
    report = build(
        a.source,
        a.bootstrap,
        blob_dir,
        chunk_size=a.chunk_size,
        compressor=a.compressor,
        digester=a.digester,
        explicit_uid_gid=not a.repeatable,
        whiteout_spec="none" if a.whiteout_spec == "overlayfs" else a.whiteout_spec,
        progress=not a.no_progress,
        exclude=tuple(a.exclude),
        inline_bootstrap=a.blob_inline_meta,
        prefetch=sys.stdin.buffer.read().splitlines() if a.prefetch_policy == "fs" else (),
        parent_bootstrap=a.parent_bootstrap,
        chunk_dict=a.chunk_dict.removeprefix("bootstrap=") if a.chunk_dict else None,
    )
    if a.blob and report.blob_path:
        # -b FILE: the blob keeps its content (and so its id); only its file name changes.
        os.replace(report.blob_path, a.blob)
        report = dataclasses.replace(report, blob_path=os.path.abspath(a.blob))
    return report


def _open(a: argparse.Namespace) -> Image:
    if getattr(a, "blob", None):
        return Image.open_blob(a.blob)
    if not a.bootstrap:
        raise SystemExit(_usage("--bootstrap (or --blob for a blob with an inlined bootstrap) is required"))
    config = getattr(a, "config", None)
    if config and getattr(a, "blob_dir", None):
        raise SystemExit(_usage("give --blob-dir or --config, not both"))
    return Image.open(a.bootstrap, getattr(a, "blob_dir", None), config=_read_config(config) if config else None)


def _read_config(path: str) -> str:
    with open(path) as f:
        return f.read()


def _cmd_push_blob(a: argparse.Namespace) -> int:
    from nydus_hybrid.blobs import push_blob

    digest, sent = push_blob(_read_config(a.config), a.blob_file, chunk_size=a.chunk_size)
    print(json.dumps({"digest": digest, "uploaded": sent}))
    return 0


def _cmd_prefetch(a: argparse.Namespace) -> int:
    import time

    image = _open(a)
    job = image.prefetch(a.paths or None, all=a.all, threads=a.threads, bandwidth_limit=a.bandwidth_limit)
    tty = sys.stderr.isatty() and not a.no_progress
    while not job.done:
        if tty:
            m = image.metrics()["blobcache"]
            print(
                f"\rprefetch: {m['prefetch_data_amount'] / (1 << 20):.1f} MiB"
                f" in {m['prefetch_requests_count']} requests",
                end="",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(0.2)
    problems = job.wait()
    if tty:
        print(file=sys.stderr)
    m = image.metrics()["blobcache"]
    print(
        json.dumps(
            {
                k: m[k]
                for k in (
                    "prefetch_data_amount",
                    "prefetch_requests_count",
                    "prefetch_unmerged_chunks",
                    "data_all_ready",
                )
            }
            | {"errors": problems}
        )
    )
    return 1 if problems else 0


def _cmd_mount(a: argparse.Namespace) -> int:
    import signal

    from nydus_hybrid.mounts.fuse import Mount

    image = _open(a)
    m = Mount.create(a.mountpoint, open=a.no_keep_cache, opendir=a.no_keep_cache)
    stop: List[int] = []
    handler = lambda signum, frame: stop.append(signum)  # noqa: E731
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    try:
        m.attach("/", image, entry_timeout=a.entry_timeout, attr_timeout=a.attr_timeout, keep_cache=not a.no_keep_cache)
        m.start(a.threads)
        log.event("mounted", mountpoint=os.path.abspath(a.mountpoint), threads=a.threads)
        print(json.dumps({"mounted": os.path.abspath(a.mountpoint), "threads": a.threads}), flush=True)
        while not stop:
            # Not signal.pause(): a signal delivered to a FUSE worker thread would not wake it.
            time.sleep(0.2)
    finally:
        m.stop(umount=True)
    log.event("unmounted", mountpoint=os.path.abspath(a.mountpoint), signal=stop[0] if stop else None)
    return 0


def _cmd_upgrade(a: argparse.Namespace) -> int:
    r = standalone_upgrade(a.apisock, a.supervisor, a.daemon_command or None, a.new_apisock, a.log_file)
    if a.json:
        print(
            json.dumps(
                {
                    "apisock": r.apisock,
                    "pid": r.process.pid,
                    "takeover_ms": round(r.takeover_ms, 1),
                    "total_ms": round(r.total_ms, 1),
                }
            )
        )
    else:
        print(
            f"upgraded: new daemon pid {r.process.pid} on {r.apisock} (takeover {r.takeover_ms:.0f} ms, "
            f"{r.total_ms:.0f} ms in all)"
        )
    return 0


def _cmd_daemons(a: argparse.Namespace) -> int:
    if a.action == "list":
        print(mcli.daemons_list(a.root, a.json))
    elif not a.daemon_id and a.action == "show":
        return _usage("daemons show needs a daemon id")
    elif a.action == "show":
        print(mcli.daemons_show(a.root, a.daemon_id, a.json))
    else:
        print(mcli.daemons_upgrade(a.root, a.daemon_id, a.nydusd, a.json))
    return 0


def _cmd_instances(a: argparse.Namespace) -> int:
    print(mcli.instances_list(a.root, a.json))
    return 0


def _cmd_cache_gc(a: argparse.Namespace) -> int:
    from nydus_hybrid.blobs import cache_gc

    print(json.dumps(cache_gc(a.work_dir, max_bytes=a.max_size, max_age_secs=a.max_age)))
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    print(json.dumps(_open(a).inspect(), indent=2))
    return 0


def _cmd_check_images(a: argparse.Namespace) -> int:
    from nydus_hybrid.convert import store
    from nydus_hybrid.convert.verify import check_images

    if not (a.source and a.target):
        raise SystemExit(_usage("--source and --target go together"))
    access = {"plain_http": a.plain_http, "insecure": a.insecure}
    source = store.open_source(a.source, creds=a.source_creds, **access)
    target = store.open_source(a.target, creds=a.target_creds, **access)
    r = check_images(source, target, platform=a.platform, mount=a.mount)
    _report(a, dataclasses.asdict(r))
    bad = [(p.platform, d) for p in r.platforms for d in p.differences]
    if bad:
        print(f"nydus-hybrid: check: {len(bad)} differences; first, on {bad[0][0]}: {bad[0][1]}", file=sys.stderr)
        return 1
    return 0


def _cmd_check(a: argparse.Namespace) -> int:
    if a.source or a.target:
        return _cmd_check_images(a)
    with_blobs = bool(a.blob_dir or a.blob or a.config)
    report = _open(a).check(blobs=with_blobs)
    if a.output_json:
        with open(a.output_json, "w") as f:
            json.dump(report, f, indent=2)
    what = f"{report['chunks_verified']} chunks verified" if with_blobs else "bootstrap only"
    print(
        f"ok: {report['inodes']} inodes, {report['directories']} directories, "
        f"{report['regular_files']} files, {report['symlinks']} symlinks; {what}"
    )
    return 0


def _cmd_unpack(a: argparse.Namespace) -> int:
    image = _open(a)
    if bool(a.output) == bool(a.output_dir):
        raise SystemExit(_usage("give exactly one of --output TAR or --output-dir DIR"))
    report = image.unpack_tar(a.output) if a.output else image.unpack_dir(a.output_dir)
    print(json.dumps(report))
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    image = _open(a)
    if a.flat_blob is not None:
        n = image.export_flat_blob(a.output, a.flat_blob)
    else:
        n = image.export_block(a.output)
    print(json.dumps({"output": a.output, "bytes_written": n}))
    return 0


def _blob_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 255:
        raise argparse.ArgumentTypeError(f"blob index {text!r} must be 0..254")
    return value


def _image_args(p: argparse.ArgumentParser, blob_dir: bool = True) -> None:
    p.add_argument("-B", "--bootstrap", help="bootstrap file")
    if blob_dir:
        p.add_argument("-D", "--blob-dir", help="directory holding the data blobs")
        p.add_argument("-C", "--config", help="nydusd config (v1/v2 JSON or TOML) naming the backend and blob cache")
    p.add_argument("--blob", help="a data blob with an inlined bootstrap, instead of --bootstrap")


def _usage(msg: str) -> int:
    print(f"nydus-hybrid: usage error: {msg}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (and exit 2), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nydus-hybrid: usage error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nydus-hybrid", description="RAFS v6 (Nydus) images: build, check, inspect, unpack, export.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--log-level", default="warning", choices=["trace", "debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command")
    _add_build(sub)
    _add_merge(sub)
    _add_convert(sub)

    p = sub.add_parser("inspect", help="superblock, blob table and counts as JSON")
    _image_args(p, blob_dir=False)
    p = sub.add_parser(
        "check",
        help="validate an image (with blobs, every chunk digest); or, with --source and --target, "
        "compare a converted Nydus image with its OCI source, as nydusify check",
    )
    _image_args(p)
    p.add_argument("-J", "--output-json", help="write the check report as JSON to this file")
    p.add_argument("--source", help="the OCI image: HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or docker-archive:FILE")
    p.add_argument("--target", help="the Nydus image: HOST/REPO[:TAG] or oci:DIR[:TAG]")
    p.add_argument("--platform", help="os/arch[/variant] to compare (default: every platform of the source)")
    p.add_argument("--mount", action="store_true", help="read the Nydus image through our FUSE mount")
    _registry_access_args(p)
    p = sub.add_parser("unpack", help="unpack an image to a tar file or a directory")
    _image_args(p)
    p.add_argument("-o", "--output", help="output tar file")
    p.add_argument("--output-dir", help="output directory (must be empty or absent)")
    p = sub.add_parser("export", help="export for the kernel: one raw EROFS disk, or a flattened blob")
    _image_args(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--block", action="store_true", help="bootstrap + flattened blobs in one disk image")
    mode.add_argument(
        "--flat-blob", type=_blob_index, metavar="INDEX", help="blob INDEX uncompressed at its chunk offsets"
    )
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("push-blob", help="upload a blob to the registry a nydusd config names")
    p.add_argument("-C", "--config", required=True, help="nydusd config with a registry backend")
    p.add_argument(
        "--chunk-size", type=parse_size, default=0, help="upload in PATCH pieces of this size (default: one PUT)"
    )
    p.add_argument("blob_file")
    p = sub.add_parser("prefetch", help="fill the blob cache with files, directories or the whole image")
    _image_args(p)
    p.add_argument("paths", nargs="*", help="image paths (default: the image's prefetch table)")
    p.add_argument("--all", action="store_true", help="every chunk of every blob")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--bandwidth-limit", type=parse_size, default=0, help="bytes per second (e.g. 50M); 0 = unlimited")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("mount", help="serve an image through FUSE in the foreground (Ctrl-C or SIGTERM unmounts)")
    _image_args(p)
    p.add_argument("mountpoint")
    p.add_argument("--threads", type=int, default=4, help="FUSE worker threads (default 4)")
    p.add_argument("--entry-timeout", type=float, default=60.0, help="seconds the kernel may cache lookups")
    p.add_argument("--attr-timeout", type=float, default=60.0, help="seconds the kernel may cache attributes")
    p.add_argument("--no-keep-cache", action="store_true", help="drop a file's page cache on every open")
    p = sub.add_parser("cache-gc", help="trim a blob cache directory by size and age; blobs in use are kept")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--max-size", type=parse_size, default=None, help="e.g. 10G")
    p.add_argument("--max-age", type=parse_age, default=None, help="drop blobs unused for this long, e.g. 7d")
    p = sub.add_parser(
        "upgrade", help="hot-upgrade a running daemon: a successor takes over its FUSE session, no read fails"
    )
    p.add_argument("--apisock", required=True, help="the running daemon's API socket")
    p.add_argument("--supervisor", help="its supervisor path (default: the one it reports)")
    p.add_argument("--new-apisock", help="the successor's API socket (default: the next apiN.sock)")
    p.add_argument("--log-file", help="where the successor's stderr goes")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "daemon_command", nargs="*", help="after --: the successor's command line (default: the running one's)"
    )
    p = sub.add_parser("pull", help="pull an image into containerd lazily through a snapshotter (as ctr-remote rpull)")
    p.add_argument("image", help="HOST/REPO[:TAG|@DIGEST]")
    p.add_argument("-a", "--address", default="/run/containerd/containerd.sock", help="containerd's socket")
    p.add_argument("-n", "--namespace", default="default", help="containerd namespace (default: default)")
    p.add_argument("--snapshotter", default="nydus", help="the snapshotter to unpack with (default: nydus)")
    p.add_argument("--platform", default="linux/amd64", help="os/arch to pull from an index (default linux/amd64)")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over http")
    p.add_argument("--insecure", action="store_true", help="do not verify the registry's TLS certificate")
    p.add_argument("--creds", metavar="USER:PASS", help="registry credentials (default: config.json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser(
        "snapshotter", add_help=False, help="the containerd snapshotter process (its own flags: snapshotter --help)"
    )
    p = sub.add_parser("daemons", help="daemons the manager keeps: list, show ID, upgrade [ID]")
    p.add_argument("action", choices=("list", "show", "upgrade"))
    p.add_argument("daemon_id", nargs="?")
    p.add_argument("--root", default="/var/lib/nydus-hybrid", help="the manager's state directory")
    p.add_argument("--nydusd", help="upgrade: the new daemon command (default: the current one)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("instances", help="RAFS instances the manager keeps: list")
    p.add_argument("action", choices=("list",))
    p.add_argument("--root", default="/var/lib/nydus-hybrid", help="the manager's state directory")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "demo",
        help="the main job: convert an image, pull it lazily into containerd and run a container from it",
    )
    p.add_argument("--workdir", default=None, help="where to put everything (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--local", action="store_true", help="without containerd: build, check and mount an image through the daemon"
    )
    p.add_argument(
        "--registry",
        choices=("auto", "docker-registry", "embedded"),
        default="auto",
        help="the registry to start (default: Debian's docker-registry when installed, else the embedded one)",
    )
    p.add_argument("--source", help="--local: directory to build (default: this Python's standard library)")
    p.add_argument("--no-serve", action="store_true", help="--local: stop after the summary, do not serve")
    return parser


COMMANDS = {
    "build": _cmd_build,
    "create": _cmd_build,
    "merge": _cmd_merge,
    "convert": _cmd_convert,
    "pull": _cmd_pull,
    "inspect": _cmd_inspect,
    "check": _cmd_check,
    "unpack": _cmd_unpack,
    "export": _cmd_export,
    "push-blob": _cmd_push_blob,
    "prefetch": _cmd_prefetch,
    "cache-gc": _cmd_cache_gc,
    "mount": _cmd_mount,
    "upgrade": _cmd_upgrade,
    "daemons": _cmd_daemons,
    "instances": _cmd_instances,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["snapshotter"]:
        # The snapshotter process has its own flags (nydus-snapshotter's); hand them over.
        from nydus_hybrid.snapshotter.server import main as snapshotter_main

        return snapshotter_main(args[1:])
    if args[:1] == ["devmapper"]:
        from nydus_hybrid.devmapper.cli import main as devmapper_main

        return devmapper_main(args[1:])
    if args[:1] == ["storage"]:
        from nydus_hybrid.storage.cli import main as storage_main

        return storage_main(args[1:])
    if args[:1] == ["flist"]:
        from nydus_hybrid.storage.flist_cli import main as flist_main

        return flist_main(args[1:])
    parser = make_parser()
    a = parser.parse_args(args)
    if a.version:
        print(f"nydus-hybrid {version.__version__}\nGit Commit: {version.GIT_COMMIT}")
        return 0
    if not a.command:
        return _usage("a command is required: " + ", ".join([*COMMANDS, "demo"]) + " (see --help)")
    log.setup("debug" if a.log_level == "trace" else a.log_level)
    try:
        if a.command == "demo":
            if a.local:
                from nydus_hybrid.demo_local import run_demo as run_local

                return run_local(a.source, a.workdir, a.keep, serve=not a.no_serve)
            from nydus_hybrid.demo import run_demo

            return run_demo(a.workdir, a.keep, a.registry)
        return COMMANDS[a.command](a)
    except (NydusError, OSError, LifecycleError, DaemonApiError, ManagerError) as e:
        print(f"nydus-hybrid: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nydus-hybrid: interrupted; partial outputs were removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
