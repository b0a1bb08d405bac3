"""Registry credentials for an image's daemon (spec A11's order): the snapshot's
pullusername/pullsecret labels, then what a CRI pull carried for that registry host,
else nothing (the daemon's backend then reads docker's config.json)."""

from __future__ import annotations

import base64

from nydus_hybrid import criwire
from nydus_hybrid.snapshotter.keychain import PULL_SECRET, PULL_USERNAME, Keychain
from nydus_hybrid.snapshotter.remote import RemoteFs


def auth(**fields):
    return criwire.message("AuthConfig")(**fields)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_labels_then_cri_capture_then_nothing():
    k = Keychain()
    assert k.backend_auth("reg.example:5000", {}) == {}
    k.capture("reg.example:5000/app:1", auth(username="cri", password="pw"))
    assert k.backend_auth("reg.example:5000", {}) == {"auth": b64("cri:pw")}
    assert k.backend_auth("other.example", {}) == {}, "captured credentials stay with their host"
    labels = {PULL_USERNAME: "lbl", PULL_SECRET: "secret"}
    assert k.backend_auth("reg.example:5000", labels) == {"auth": b64("lbl:secret")}


def test_tokens_and_prebuilt_auth_are_kept_as_sent():
    k = Keychain()
    k.capture("a.example/x:1", auth(registry_token="tok"))
    k.capture("b.example/x:1", auth(auth=b64("u:p")))
    k.capture("c.example/x:1", auth())  # a pull without credentials changes nothing
    assert k.backend_auth("a.example", {}) == {"registry_token": "tok"}
    assert k.backend_auth("b.example", {}) == {"auth": b64("u:p")}
    assert k.backend_auth("c.example", {}) == {}
    k.capture("not a reference!", auth(username="u", password="p"))  # ignored, no error


def test_the_daemon_config_carries_the_credentials():
    fs = RemoteFs(manager=None, cache_dir="/tmp/c", keychain=Keychain())  # type: ignore[arg-type]
    cfg = fs.daemon_config(
        {"containerd.io/snapshot/cri.image-ref": "reg.example/app:1", PULL_USERNAME: "u", PULL_SECRET: "p"}
    )
    backend = cfg["device"]["backend"]["config"]
    assert (backend["host"], backend["repo"], backend["auth"]) == ("reg.example", "app", b64("u:p"))
