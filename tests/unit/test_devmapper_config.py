"""The devmapper snapshotter's configuration (spec B1): containerd's keys and size strings,
at the top level or under the plugin's table; one error naming the key for bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nydus_hybrid.devmapper.config import DEFAULT_EXT4_OPTIONS, PLUGIN, from_dict, load, parse_size
from nydus_hybrid.snapshotter.config import ConfigError

BASE = {"root_path": "/var/lib/dm", "pool_name": "pool", "base_image_size": "10GB"}


@pytest.mark.parametrize(
    "text, size",
    [
        ("128MB", 128 << 20),
        ("10GB", 10 << 30),
        ("512Mi", 512 << 20),
        ("4096", 4096),
        ("1.5G", 3 << 29),
        ("8 kib", 8192),
    ],
)
def test_sizes_are_binary_multiples(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "10XB", "-5MB", "0", "5 M B", "1EB"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_defaults_and_fs_options():
    c = from_dict(BASE)
    assert (c.fs_type, c.async_remove, c.discard_blocks, c.base_image_size) == ("ext4", False, False, 10 << 30)
    assert c.mkfs_options == DEFAULT_EXT4_OPTIONS
    assert from_dict({**BASE, "fs_type": "ext2"}).mkfs_options == ""
    assert from_dict({**BASE, "fs_options": "nodiscard"}).mkfs_options == "nodiscard"
    assert from_dict({k: v for k, v in BASE.items() if k != "root_path"}, default_root="/d").root_path == "/d"


@pytest.mark.parametrize(
    "change, key",
    [
        ({"pool_name": ""}, "pool_name"),
        ({"pool_name": "a/b"}, "pool_name"),
        ({"root_path": ""}, "root_path"),
        ({"base_image_size": ""}, "base_image_size"),
        ({"base_image_size": "lots"}, "base_image_size"),
        ({"base_image_size": 10}, "base_image_size"),
        ({"fs_type": "btrfs"}, "fs_type"),
        ({"async_remove": "yes"}, "async_remove"),
        ({"discard_blocks": 1}, "discard_blocks"),
    ],
)
def test_a_bad_value_is_one_error_naming_its_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        from_dict({**BASE, **change})


def test_a_containerd_config_toml_works_as_the_file(tmp_path):
    f = tmp_path / "config.toml"
    keys = 'root_path = "/r"\npool_name = "p"\nbase_image_size = "1GB"\nfs_type = "xfs"\n'
    f.write_text(f'version = 2\n[plugins."{PLUGIN}"]\n{keys}')
    c = load(str(f))
    assert (c.root_path, c.pool_name, c.fs_type) == ("/r", "p", "xfs")
    f.write_text('pool_name = "p"\nbase_image_size = "1GB"\nroot_path = "/r"\n')
    assert load(str(f)).pool_name == "p"
    f.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not TOML"):
        load(str(f))
    with pytest.raises(ConfigError, match="No such file"):
        load(str(tmp_path / "missing.toml"))


@given(st.text(max_size=30))
def test_parse_size_accepts_or_refuses_with_value_error(text):
    try:
        assert 0 < parse_size(text) <= 1 << 60
    except ValueError:
        pass
