"""The real `dmsetup` (and `blkdiscard`), with containerd's command lines (spec B2): thin-pool
tables and messages, thin device activation, suspend/resume, removal, and the parsing of
`info`, `status` and `table`. A failed command is a `DmError` whose errno comes from the
text dmsetup printed: "not found" is ENXIO, else the text after the last "failed: " matched
against the C library's messages (EEXIST, EBUSY, ENODATA, ...)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, TypeVar

DMSETUP = "dmsetup"
BLKDISCARD = "blkdiscard"
MAX_DEVICE_ID = 0xFFFFFF  # thin device ids are 24-bit
SECTOR = 512
# dmsetup's "remove --retry" and containerd's own retry: 100 tries, 100 ms apart, on EBUSY only.
BUSY_TRIES, BUSY_PAUSE = 100, 0.1

T = TypeVar("T")

# The C library's message for each errno, as dmsetup prints it after "failed: ".
_BY_MESSAGE = {os.strerror(n).lower(): n for n in sorted(errno.errorcode, reverse=True)}


class DmError(OSError):
    """A dmsetup command that failed: `errno` as mapped (0 when no message matched), the
    command line and what it printed."""

    def __init__(self, code: int, args: List[str], output: str) -> None:
        reason = os.strerror(code) if code else "failed"
        super().__init__(code, f"dmsetup {' '.join(args)}: {reason}: {output}")
        self.command = args
        self.output = output


def error_code(output: str) -> int:
    """The errno a failed dmsetup's output means (0: none recognised)."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    if "not found" in first.lower() or first.lower().startswith("device does not exist"):
        return errno.ENXIO  # (the second: what libdevmapper prints when info finds nothing)
    _, sep, tail = output.rpartition("failed: ")
    if not sep:
        return 0
    message = tail.strip().splitlines()[0].strip().rstrip(".").lower() if tail.strip() else ""
    return errno.ENXIO if message == "device does not exist" else _BY_MESSAGE.get(message, 0)


def run(*args: str) -> str:
    """`dmsetup <args>`; its combined output, trailing white space trimmed."""
    env = {**os.environ, "DM_DISABLE_UDEV": os.environ.get("DM_DISABLE_UDEV", "1")}
    try:
        p = subprocess.run(
            [DMSETUP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=120
        )
    except FileNotFoundError:
        raise DmError(errno.ENOENT, list(args), f"{DMSETUP} is not installed (apt-get install dmsetup)") from None
    out = p.stdout.rstrip()
    if p.returncode != 0:
        raise DmError(error_code(out), list(args), out)
    return out


def retry_busy(op: Callable[[], T], tries: int = BUSY_TRIES, pause: float = BUSY_PAUSE) -> T:
    """`op`, again while it fails with EBUSY (device-mapper is still releasing a device)."""
    for attempt in range(tries):
        try:
            return op()
        except DmError as e:
            if e.errno != errno.EBUSY or attempt == tries - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def dev_path(name: str) -> str:
    return f"/dev/mapper/{name}"


# -- pools and thin devices --------------------------------------------------------------


def pool_table(meta_dev: str, data_dev: str, data_bytes: int, block_sectors: int) -> str:
    """A thin-pool table: low water mark 32768 blocks, one feature (skip_block_zeroing)."""
    return f"0 {data_bytes // SECTOR} thin-pool {meta_dev} {data_dev} {block_sectors} 32768 1 skip_block_zeroing"


def create_pool(pool: str, meta_dev: str, data_dev: str, data_bytes: int, block_sectors: int) -> None:
    run("create", pool, "--table", pool_table(meta_dev, data_dev, data_bytes, block_sectors))


def reload_pool(pool: str, meta_dev: str, data_dev: str, data_bytes: int, block_sectors: int) -> None:
    run("reload", pool, "--table", pool_table(meta_dev, data_dev, data_bytes, block_sectors))


def _check_id(device_id: int) -> None:
    if not 0 <= device_id <= MAX_DEVICE_ID:
        raise ValueError(f"thin device id {device_id} is outside 0..{MAX_DEVICE_ID}")


def create_thin(pool: str, device_id: int) -> None:
    _check_id(device_id)
    run("message", dev_path(pool), "0", f"create_thin {device_id}")


def create_snap(pool: str, device_id: int, origin_id: int) -> None:
    """A thin snapshot of `origin_id`; the origin must be suspended if it is active."""
    _check_id(device_id)
    _check_id(origin_id)
    run("message", dev_path(pool), "0", f"create_snap {device_id} {origin_id}")


def delete_device(pool: str, device_id: int) -> None:
    """Delete a thin device from the pool (ENODATA when it is not there)."""
    _check_id(device_id)
    retry_busy(lambda: run("message", dev_path(pool), "0", f"delete {device_id}"))


def thin_table(pool: str, device_id: int, size_bytes: int, external_origin: str = "") -> str:
    table = f"0 {size_bytes // SECTOR} thin {dev_path(pool)} {device_id}"
    return f"{table} {external_origin}" if external_origin else table


def activate(name: str, pool: str, device_id: int, size_bytes: int, external_origin: str = "") -> None:
    """Load thin device `device_id` as /dev/mapper/<name> (EBUSY when already active)."""
    _check_id(device_id)
    run("create", name, "--table", thin_table(pool, device_id, size_bytes, external_origin))


def _with_backoff(op: Callable[[], str]) -> None:
    """Suspend and resume: up to 3 tries, 100 then 200 ms apart, when the kernel says
    invalid argument or busy."""
    for pause in (0.1, 0.2, None):
        try:
            op()
            return
        except DmError as e:
            if pause is None or e.errno not in (errno.EINVAL, errno.EBUSY):
                raise
            time.sleep(pause)


def suspend(name: str) -> None:
    _with_backoff(lambda: run("suspend", name))


def resume(name: str) -> None:
    _with_backoff(lambda: run("resume", name))


def remove(name: str, *, deferred: bool = False, force: bool = False, retry: bool = True) -> None:
    """Deactivate /dev/mapper/<name>; a device that is not there is not an error."""
    args = ["remove", *(["--retry"] if retry else []), *(["--deferred"] if deferred else [])]
    args += [*(["--force"] if force else []), dev_path(name)]
    try:
        retry_busy(lambda: run(*args))
    except DmError as e:
        if e.errno != errno.ENXIO:
            raise


def discard(name: str) -> None:
    """`blkdiscard` the device's blocks (before a non-deferred deactivation)."""
    if shutil.which(BLKDISCARD) is None:
        raise DmError(errno.ENOENT, [BLKDISCARD], f"{BLKDISCARD} is not installed (util-linux)")
    p = subprocess.run([BLKDISCARD, dev_path(name)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise DmError(0, [BLKDISCARD, dev_path(name)], (p.stdout + p.stderr).strip())


def version() -> str:
    return run("version")


# -- reading state -----------------------------------------------------------------------


@dataclass(frozen=True)
class Info:
    """One line of `dmsetup info --columns`."""

    name: str
    blkdevname: str
    suspended: bool
    read_only: bool
    live_table: bool
    inactive_table: bool
    major: int
    minor: int
    open_count: int
    segments: int
    events: int


INFO_FIELDS = "name,blkdevname,attr,major,minor,open,segments,events"


def parse_info(output: str) -> List[Info]:
    out = []
    for line in output.splitlines():
        fields = line.split(" ")
        if len(fields) != 8:
            raise ValueError(f"dmsetup info: expected 8 columns, got {line!r}")
        name, blk, attr, major, minor, opened, segments, events = fields
        out.append(
            Info(
                name,
                blk,
                "s" in attr,
                "r" in attr,
                "L" in attr,
                "I" in attr,
                int(major),
                int(minor),
                int(opened),
                int(segments),
                int(events),
            )
        )
    return out


def info(name: str) -> Info:
    found = parse_info(run("info", "--columns", "--noheadings", "-o", INFO_FIELDS, "--separator", " ", name))
    if len(found) != 1:
        raise DmError(errno.ENXIO, ["info", name], f"{len(found)} devices named {name}")
    return found[0]


def try_info(name: str) -> Optional[Info]:
    try:
        return info(name)
    except DmError as e:
        if e.errno == errno.ENXIO:
            return None
        raise


def is_loaded(name: str) -> bool:
    return try_info(name) is not None


def is_activated(name: str) -> bool:
    found = try_info(name)
    return found is not None and found.live_table


@dataclass(frozen=True)
class Status:
    start: int
    length: int
    target: str
    params: List[str]


def parse_status(output: str) -> Status:
    fields = output.split()
    if len(fields) < 3:
        raise ValueError(f"dmsetup status: expected '<start> <length> <target> ...', got {output!r}")
    return Status(int(fields[0]), int(fields[1]), fields[2], fields[3:])


def status(name: str) -> Status:
    return parse_status(run("status", name))


def mapped_bytes(name: str) -> int:
    """Bytes a thin device has mapped: its status's first parameter in sectors ("0 -"
    for a device nothing was written to)."""
    s = status(name)
    if s.target != "thin" or not s.params:
        raise ValueError(f"{name}: not a thin device ({s.target})")
    return int(s.params[0]) * SECTOR


def table(name: str) -> str:
    return run("table", name)
