"""nydus-snapshotter's TOML configuration (`snapshotter.config`): its defaults, the keys we
act on, flags over the file, and each bad value refused with its key named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nydus_hybrid.snapshotter import config
from nydus_hybrid.snapshotter.server import parse_args


def write(tmp_path, text):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return str(p)


def test_defaults_are_nydus_snapshotters():
    c = config.load(None)
    assert c.root == "/var/lib/containerd/io.containerd.snapshotter.v1.nydus"
    assert c.address == "/run/containerd-nydus/containerd-nydus-grpc.sock"
    assert (c.daemon_mode, c.manager_mode, c.fs_driver, c.recover_policy) == (
        "multiple",
        "dedicated",
        "fusedev",
        "restart",
    )
    assert c.effective_cache_dir() == c.root + "/cache"


def test_the_file_is_read_and_flags_win(tmp_path):
    path = write(
        tmp_path,
        """
version = 1
root = "/srv/nydus"
daemon_mode = "shared"
[daemon]
fs_driver = "fscache"
recover_policy = "failover"
threads_number = 8
[log]
level = "debug"
[cache_manager]
cache_dir = "/srv/cache"
[remote]
plain_http_registries = ["127.0.0.1:5000"]
""",
    )
    c = config.load(path)
    assert (c.root, c.manager_mode, c.fs_driver, c.recover_policy, c.threads_number) == (
        "/srv/nydus",
        "shared",
        "fscache",
        "failover",
        8,
    )
    assert c.effective_cache_dir() == "/srv/cache" and c.plain_http_registries == ["127.0.0.1:5000"]
    c = parse_args(["--config", path, "--root", "/other", "--daemon-mode", "multiple", "--plain-http-registry", "h:1"])
    assert (c.root, c.manager_mode, c.fs_driver) == ("/other", "dedicated", "fscache")
    assert c.plain_http_registries == ["127.0.0.1:5000", "h:1"]


@pytest.mark.parametrize(
    "text, key",
    [
        ("version = 2", "version"),
        ('root = "' + "/r" * 40 + '"', "root"),
        ('daemon_mode = "none"', "daemon_mode"),
        ('[daemon]\nfs_driver = "blockdev"', "daemon.fs_driver"),
        ('[daemon]\nrecover_policy = "sometimes"', "daemon.recover_policy"),
        ("[daemon]\nthreads_number = 4096", "daemon.threads_number"),
        ('[daemon]\nthreads_number = "8"', "daemon.threads_number"),
        ("[log]\nlog_to_stdout = 1", "log.log_to_stdout"),
        ("root = [", "not TOML"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path, text, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.load(write(tmp_path, text))


def test_the_process_exits_2_with_one_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid.snapshotter", "--config", write(tmp_path, "version = 3")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "version" in p.stderr, p.stderr


@pytest.mark.parametrize(
    "value, seconds",
    [
        ('"0"', 0.0),
        ("0", 0.0),
        ('"30s"', 30.0),
        ('"1h30m"', 5400.0),
        ('"250ms"', 0.25),
        ('"1.5m"', 90.0),
        ("2000000000", 2.0),
    ],
)
def test_credential_renewal_interval_takes_go_durations(tmp_path, value, seconds):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[remote.auth]\ncredential_renewal_interval = {value}\n")
    assert config.load(str(cfg)).credential_renewal_interval == pytest.approx(seconds)


@pytest.mark.parametrize("value", ['"30"', '"-5s"', '"5 s"', '"1d"', '""', "-1", "true", "1.5"])
def test_a_bad_credential_renewal_interval_is_one_error_naming_the_key(tmp_path, value):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[remote.auth]\ncredential_renewal_interval = {value}\n")
    with pytest.raises(config.ConfigError, match=r"remote\.auth\.credential_renewal_interval"):
        config.load(str(cfg))
