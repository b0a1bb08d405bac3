"""`NydusdClient` (nydus_hybrid.manager.client), the snapshotter's client, against a real
daemon: answers, typed errors with the daemon's status and message, DIED for a daemon that
cannot be asked, and the socket wait that gives up when the process is gone."""

from __future__ import annotations

import time

import pytest

from nydus_hybrid.manager.client import DIED, NydusdApiError, NydusdClient, NydusdUnreachable
from tests.helpers.daemons import BuiltImage, Daemon, v1_config


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return BuiltImage(tmp_path_factory.mktemp("client-image"), tag="c")


def test_calls_and_errors_against_a_live_daemon(tmp_path, image):
    d = Daemon(tmp_path / "d")  # shared: no bootstrap
    c = NydusdClient(d.sock)
    try:
        assert c.get_state() == "RUNNING"
        assert c.get_daemon_info()["backend_collection"] == {}
        c.mount("/s1", str(image.boot), __import__("json").dumps(v1_config("/s1", image.blobs, tmp_path / "cache")))
        assert c.mountpoints() == ["/s1"]
        assert c.fs_metrics("/s1")["id"] == "/s1"
        assert c.inflight_metrics() == []
        with pytest.raises(NydusdApiError) as e:
            c.mount("/s2", str(tmp_path / "missing.boot"), "{}")
        assert e.value.status == 500 and "does not exist" in e.value.message
        with pytest.raises(NydusdApiError) as e:
            c.bind_blob({"type": "bootstrap", "id": "x", "config": {}})
        assert e.value.status in (400, 501)
        c.umount("/s1")
        assert c.mountpoints() == []
        d.cleanup()
        assert c.get_state() == DIED  # the connection is dropped and the redial fails
        with pytest.raises(NydusdUnreachable):
            c.get_daemon_info()
    finally:
        c.close()
        d.cleanup()


def test_socket_wait_gives_up_when_the_process_is_gone(tmp_path):
    c = NydusdClient(str(tmp_path / "never.sock"), alive=lambda: False)
    t = time.monotonic()
    with pytest.raises(NydusdUnreachable) as e:
        c.wait_socket()
    assert "exited" in str(e.value) and time.monotonic() - t < 1.0
    c = NydusdClient(str(tmp_path / "never.sock"))
    with pytest.raises(NydusdUnreachable):
        c.wait_socket(attempts=3)
    with pytest.raises(NydusdUnreachable) as e:
        c.wait_until_state("RUNNING", attempts=2)
    assert "DIED" in str(e.value)
