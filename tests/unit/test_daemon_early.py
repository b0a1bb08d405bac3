"""`daemon.early` reads argv before `daemon.args` is loaded, to mount sooner. It may decline
any command line, but whatever it accepts the real parser must accept too, and ask for the
same mount: otherwise a start would mount, then be refused (or serve the wrong thing)."""

from __future__ import annotations

from typing import List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nydus_hybrid.daemon import args as dargs
from nydus_hybrid.daemon import early

KNOWN = [*early._READ, *early._CHECKED]
OTHERS = [
    "--upgrade",
    "--prefetch-files",
    "--virtual-mountpoint",
    "-m",
    "--localfs-dir",
    "--shared-dir",
    "--mount",  # an abbreviation argparse would take
    "--fscache",
    "-V",
    "--writable",
]
VALUES = ["/m", "/b", "/c", "/s", "4", "0", "1025", "08", "info", "INFO", "loud", "resend", "flush", "x", "-1", ""]


@st.composite
def argvs(draw: st.DrawFn) -> List[str]:
    """Mostly command lines early might take (so that its checks are what is tested), with
    now and then an option, a value or a shape it must decline."""
    words: List[List[str]] = []
    if draw(st.integers(0, 9)):
        words.append(["--mountpoint", "/m"])
    for _ in range(draw(st.integers(0, 6))):
        opt = draw(st.sampled_from(KNOWN)) if draw(st.integers(0, 9)) else draw(st.sampled_from(OTHERS))
        value = draw(st.sampled_from(VALUES))
        shape = draw(st.sampled_from(["split"] * 6 + ["equals", "bare"]))
        words.append([opt, value] if shape == "split" else [f"{opt}={value}"] if shape == "equals" else [opt])
    if not draw(st.integers(0, 9)):
        words.append([draw(st.sampled_from(["fuse", "singleton"]))])  # a subcommand after options
    words = draw(st.permutations(words))
    head = draw(st.sampled_from([["fuse"]] * 6 + [[]] * 3 + [["singleton"]]))  # [] is nydusd's default
    return [*head, *(w for word in words for w in word)]


def accepted(argv: List[str]) -> bool:
    try:
        dargs.parse(argv)
    except SystemExit:
        return False
    return True


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argvs())
def test_what_early_accepts_the_parser_accepts_for_the_same_mount(argv):
    options = early.read_argv(argv)
    if options is None:
        return
    assert accepted(argv), argv
    assert early.Early(options).matches(dargs.parse(argv)), argv


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=8))
def test_any_argv_is_read_or_declined_without_raising(argv):
    options = early.read_argv(argv)
    assert options is None or set(options) <= {"mountpoint", "bootstrap", "config", "apisock", "threads"}


def test_the_snapshotters_dedicated_start_is_read():
    argv = ["fuse", "--config", "/c.json", "--bootstrap", "/b", "--mountpoint", "/m", "--apisock", "/s.sock"]
    argv += ["--log-level", "info", "--failover-policy", "resend", "--thread-num", "8"]
    assert early.read_argv(argv) == {
        "config": "/c.json",
        "bootstrap": "/b",
        "mountpoint": "/m",
        "apisock": "/s.sock",
        "threads": "8",
    }
    assert early.read_argv(["fuse", "--mountpoint=/m"]) == {"mountpoint": "/m", "threads": "4"}
    # nydusd's default subcommand, as its docs run it
    assert early.read_argv(["--mountpoint", "/m", "--log-level", "info"]) == {"mountpoint": "/m", "threads": "4"}
    # the snapshotter's dedicated argv with a system controller
    with_source = [*argv, "--backend-source", "http://127.0.0.1:1/api/v1/daemons/d1/backend"]
    assert early.read_argv(with_source) == early.read_argv(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["fuse", "--mountpoint", "/m", "--upgrade"],  # waits for a takeover: nothing to mount
        ["fuse", "--mount", "/m"],  # abbreviations are argparse's business
        ["fuse", "--mountpoint", "/m", "--log-level", "loud"],  # the parser will refuse it
        ["fuse", "--mountpoint", "/m", "--thread-num", "0"],
        ["fuse", "--mountpoint", "/m", "--id", "d1"],  # --id needs --supervisor
        ["fuse", "--mountpoint", "/m", "--bootstrap", "/b"],  # no config
        ["fuse", "--mountpoint", "/m", "-M", "/n"],  # one key, two names
        ["fuse", "--mountpoint", "/m", "--prefetch-files", "/p"],
        ["singleton", "--fscache", "/f"],
        ["--mountpoint", "/m", "fuse"],  # a subcommand after options: argparse's business
        ["--mountpoint", "/m", "singleton"],
    ],
)
def test_declined(argv):
    assert early.read_argv(argv) is None


def test_a_socket_file_or_a_mount_means_no_early_start(tmp_path):
    """A predecessor (live, or crashed with its mount left) is the normal start's to judge."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sock = tmp_path / "api.sock"
    sock.write_bytes(b"")
    assert not early._fresh_start({"mountpoint": str(mnt), "apisock": str(sock)})
    assert not early._fresh_start({"mountpoint": "/proc"})  # a mountpoint
    assert not early._fresh_start({"mountpoint": str(tmp_path / "missing")})
    assert early._fresh_start({"mountpoint": str(mnt), "apisock": str(tmp_path / "other.sock")})
