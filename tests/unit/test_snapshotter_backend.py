"""An image instance's nydusd config from the snapshotter's: the template, the registry
filled in from the image reference, mirrors from containerd-style hosts.toml files, and a
template whose own backend (http-proxy) is kept. Every document made here must be one our
daemon's parser accepts, with the fields where the backend reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nydus_hybrid import _core
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.snapshotter import backend
from nydus_hybrid.snapshotter.config import ConfigError, load
from nydus_hybrid.snapshotter.errors import FailedPrecondition
from nydus_hybrid.snapshotter.server import parse_args

REF = parse_registry("127.0.0.1:5000/library/app:1")


def hosts(tmp_path: Path, host: str, text: str) -> Path:
    d = tmp_path / "certs.d"
    (d / host).mkdir(parents=True, exist_ok=True)
    (d / host / "hosts.toml").write_text(text)
    return d


def test_the_default_template_points_the_registry_at_the_image():
    cfg = backend.instance_config(backend.DEFAULT_TEMPLATE, REF, "/cache", plain_http=True, auth={"auth": "dTpw"})
    reg = _core.parse_config(json.dumps(cfg))["backend"]["registry"]
    assert (reg["scheme"], reg["host"], reg["repo"]) == ("http", "127.0.0.1:5000", "library/app")
    assert cfg["device"]["backend"]["config"]["auth"] == "dTpw"  # (the parsed form hides secrets)
    assert cfg["device"]["cache"]["config"]["work_dir"] == "/cache"
    assert "work_dir" not in backend.DEFAULT_TEMPLATE["device"]["cache"]["config"], "the template is not changed"


def test_mirrors_come_from_the_hosts_file_of_the_registry(tmp_path):
    d = hosts(
        tmp_path,
        "127.0.0.1:5000",
        """
server = "http://127.0.0.1:5000"
[host."http://127.0.0.1:6000"]
  capabilities = ["pull", "resolve"]
  ping_url = "http://127.0.0.1:6000/v2/"
  health_check_interval = 7
  failure_limit = 3
  [host."http://127.0.0.1:6000".header]
    X-Mirror = ["a", "b"]
[host."https://push-only.example"]
  capabilities = ["push"]
[host."mirror.example/v2"]
""",
    )
    found = backend.mirrors(str(d), REF)
    assert [m["host"] for m in found] == ["http://127.0.0.1:6000", "https://mirror.example"]
    assert found[0]["headers"] == {"X-Mirror": "a, b"} and found[0]["failure_limit"] == 3
    cfg = backend.instance_config(backend.DEFAULT_TEMPLATE, REF, "/c", mirror_list=found)
    parsed = _core.parse_config(json.dumps(cfg))["backend"]["registry"]["mirrors"]
    assert parsed[0]["host"] == "http://127.0.0.1:6000" and parsed[0]["health_check_interval"] == 7
    # Another registry with no file of its own, and no _default: no mirrors.
    assert backend.mirrors(str(d), parse_registry("other:5000/x:1")) == []
    hosts(tmp_path, "_default", '[host."http://fallback:1"]\n')
    assert [m["host"] for m in backend.mirrors(str(d), parse_registry("other:5000/x:1"))] == ["http://fallback:1"]


@pytest.mark.parametrize(
    "text, says",
    [
        ("[host", "not TOML"),
        ('host = "x"', "must be a table"),
        ('[host."ftp://m"]', "expected http[s]://host"),
        ('[host."http://m/some/path"]', "expected http[s]://host"),
        ('[host."http://m"]\nfailure_limit = -1', "failure_limit"),
        ('[host."http://m"]\nping_url = 5', "ping_url"),
        ('[host."http://m".header]\nX = 1', "header 'X'"),
    ],
)
def test_a_bad_hosts_file_is_one_clear_error(tmp_path, text, says):
    d = hosts(tmp_path, "127.0.0.1:5000", text)
    with pytest.raises(FailedPrecondition) as e:
        backend.mirrors(str(d), REF)
    assert "hosts.toml" in str(e.value) and says in str(e.value)


def test_an_http_proxy_template_keeps_its_backend(tmp_path):
    t = tmp_path / "nydusd.json"
    t.write_text(
        json.dumps(
            {
                "version": 2,
                "backend": {"type": "http-proxy", "http-proxy": {"addr": "http://127.0.0.1:7000", "path": "blobs"}},
                "cache": {"type": "blobcache", "filecache": {"work_dir": "/elsewhere"}},
                "rafs": {"mode": "direct"},
            }
        )
    )
    cfg = backend.instance_config(backend.load_template(str(t)), REF, "/cache", plain_http=True)
    parsed = _core.parse_config(json.dumps(cfg))
    assert parsed["backend"]["type"] == "http-proxy" and parsed["backend"]["http-proxy"]["path"] == "blobs"
    assert parsed["cache"]["filecache"]["work_dir"] == "/cache", "the snapshotter's cache, for GC and usage"


def test_templates_and_mirror_dirs_are_checked_when_the_config_loads(tmp_path):
    v1_proxy = tmp_path / "v1.json"
    v1_proxy.write_text(json.dumps({"device": {"backend": {"type": "http-proxy", "config": {}}}, "mode": "direct"}))
    for doc, says in [
        ("[1]", "not a JSON object"),
        ("{", "not JSON"),
        ('{"device": {}}', "names no backend type"),
    ]:
        (tmp_path / "t.json").write_text(doc)
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[daemon]\nnydusd_config = "{tmp_path / "t.json"}"\n')
        with pytest.raises(ConfigError, match=says):
            load(str(cfg))
    cfg.write_text(f'[daemon]\nnydusd_config = "{v1_proxy}"\n')
    with pytest.raises(ConfigError, match="needs a v2 document"):
        load(str(cfg))
    cfg.write_text(f'[remote.mirrors_config]\ndir = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match=r"mirrors_config\.dir"):
        load(str(cfg))
    cfg.write_text(f'[remote.mirrors_config]\ndir = "{tmp_path}"\n')
    assert load(str(cfg)).mirrors_dir == str(tmp_path)


def test_the_nydusd_config_flag_overrides_the_file_and_is_checked(tmp_path, capsys):
    good, other, bad = tmp_path / "good.json", tmp_path / "other.json", tmp_path / "bad.json"
    for f in (good, other):
        f.write_text(json.dumps({"device": {"backend": {"type": "registry", "config": {}}}, "amplify_io": 262144}))
    bad.write_text("[1]")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nnydusd_config = "{other}"\n')
    assert parse_args(["--config", str(cfg), "--nydusd-config", str(good)]).nydusd_config == str(good)
    with pytest.raises(SystemExit) as e:
        parse_args(["--nydusd-config", str(bad)])
    assert e.value.code == 2 and "not a JSON object" in capsys.readouterr().err
