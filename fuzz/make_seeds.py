#!/usr/bin/env python3
"""Write a small seed corpus for the fuzz targets (nothing big is committed).

    python fuzz/make_seeds.py            # -> fuzz/corpus/{bootstrap,blob_meta}/

Seeds: the Nydus-built reference bootstrap and blobs from ../shared/fixtures, plus a few
images built with nydus_hybrid (zstd / lz4_block / none, tiny and multi-chunk). A
`blob_meta` seed is a data blob followed by its 256-byte blob-table entry.
"""

import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = Path(os.environ.get("NYDUS_FIXTURES") or Path(__file__).resolve().parents[2] / "shared/fixtures/nydus-v2.2")


def blob_entry(boot: bytes, index: int = 0) -> bytes:
    off = struct.unpack_from("<Q", boot, 1152 + 8)[0] + 256 * index
    return boot[off : off + 256]


def write_tar_seeds(out: Path) -> None:
    """Small layers in GNU and PAX form: long names, xattrs, links, whiteouts."""
    import io
    import tarfile

    for fmt, tag in ((tarfile.GNU_FORMAT, "gnu"), (tarfile.PAX_FORMAT, "pax")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:

            def add(name, kind=tarfile.REGTYPE, data=b"", link="", pax=None):
                ti = tarfile.TarInfo(name)
                ti.type, ti.size, ti.linkname, ti.mtime = kind, len(data), link, 1_700_000_000
                if pax:
                    ti.pax_headers = pax
                tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

            add("d/", tarfile.DIRTYPE)
            add("d/f", data=b"x" * 700, pax={"SCHILY.xattr.user.k": "v"} if tag == "pax" else None)
            add("d/" + "n" * 150, data=b"long")
            add("hl", tarfile.LNKTYPE, link="d/f")
            add("sl", tarfile.SYMTYPE, link="/etc/" + "t" * 120)
            add("d/.wh..wh..opq")
            add(".wh.gone")
        (out / f"layer-{tag}.tar").write_bytes(buf.getvalue())


def main() -> None:
    out_boot = HERE / "corpus" / "bootstrap"
    out_blob = HERE / "corpus" / "blob_meta"
    out_tar = HERE / "corpus" / "tar_stream"
    for d in (out_boot, out_blob, out_tar):
        d.mkdir(parents=True, exist_ok=True)
    tar = FIXTURES / "all-entry-type.tar"
    if tar.exists():
        (out_tar / "all-entry-type.tar").write_bytes(tar.read_bytes())
    write_tar_seeds(out_tar)

    ref = FIXTURES / "rafs-v6-2.2.boot"
    if ref.exists():
        boot = ref.read_bytes()
        (out_boot / "reference.boot").write_bytes(boot)
        blob = FIXTURES / "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
        (out_blob / "reference.blob").write_bytes(blob.read_bytes() + blob_entry(boot))
        inline = FIXTURES / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
        (out_blob / "reference-inline.blob").write_bytes(inline.read_bytes())

    try:
        import nydus_hybrid
    except ImportError:
        print("nydus_hybrid is not importable: only the reference seeds were written", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        (src / "d" / "e").mkdir(parents=True)
        (src / "a.txt").write_bytes(b"hello world\n")
        (src / "big").write_bytes(bytes((i * 7 + 3) % 251 for i in range(3 * 4096 + 100)))
        (src / "d" / "e" / "f").write_bytes(b"f" * 300)
        os.symlink("a.txt", src / "link")
        try:
            os.setxattr(src / "a.txt", "user.k", b"v")
        except OSError:
            pass
        for comp in ("zstd", "lz4_block", "none"):
            boot, blobs = tmp / f"{comp}.boot", tmp / f"{comp}-blobs"
            r = nydus_hybrid.build(src, boot, blobs, chunk_size=0x1000, compressor=comp, progress=False)
            b = boot.read_bytes()
            (out_boot / f"built-{comp}.boot").write_bytes(b)
            (out_blob / f"built-{comp}.blob").write_bytes(Path(r.blob_path).read_bytes() + blob_entry(b))
            shutil.rmtree(blobs)
    print(f"seeds in {out_boot} and {out_blob}")


if __name__ == "__main__":
    main()
