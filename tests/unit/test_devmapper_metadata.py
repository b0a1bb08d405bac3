"""The devmapper pool metadata without device-mapper (spec B4, B8's metadata-only list):
add/get, a rejected add leaks no id, duplicates, id reuse, update, MarkFaulty, walk,
names; the dmsetup output parsers and the error mapping."""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nydus_hybrid.devmapper import dmsetup
from nydus_hybrid.devmapper.metadata import (
    DeviceExists,
    DeviceNotFound,
    DeviceState,
    IdState,
    MetadataError,
    PoolMetadata,
)


@pytest.fixture
def md(tmp_path):
    m = PoolMetadata(str(tmp_path / "pool.db"))
    yield m
    m.close()


def test_add_and_get(md):
    a = md.add_device("pool-snap-1", 1 << 30)
    assert (a.device_id, a.state, a.parent_name) == (1, DeviceState.UNKNOWN, "")
    b = md.add_device("pool-snap-2", 1 << 30, parent_name="pool-snap-1")
    assert b.device_id == 2 and md.get_device("pool-snap-2") == b
    with pytest.raises(DeviceNotFound):
        md.get_device("pool-snap-3")


def test_a_rejected_add_leaks_no_id(md):
    with pytest.raises(MetadataError):
        md.add_device("", 1)
    assert md.add_device("x", 1).device_id == 1


def test_a_duplicate_name_is_refused_unless_the_record_is_faulty(md):
    first = md.add_device("x", 1)
    with pytest.raises(DeviceExists):
        md.add_device("x", 1)
    md.mark_faulty("x", "activate failed")
    again = md.add_device("x", 1)
    assert again.device_id != first.device_id and again.state == DeviceState.UNKNOWN
    assert md.id_state(first.device_id) == IdState.FAULTY


def test_a_freed_id_is_reused_lowest_first_and_a_faulty_one_never(md):
    for n in range(1, 6):
        md.add_device(f"d{n}", 1)
    md.remove_device("d4")
    md.remove_device("d2")
    md.mark_faulty("d1")
    md.remove_device("d1")  # the record goes; its id stays quarantined
    assert md.id_state(1) == IdState.FAULTY and md.id_state(2) == IdState.FREE
    assert [md.add_device(f"n{k}", 1).device_id for k in range(3)] == [2, 4, 6]


def test_update_may_not_change_name_or_id(md):
    md.add_device("x", 1)
    updated = md.update_device("x", lambda d: replace(d, size=2, state=DeviceState.CREATED))
    assert (updated.size, md.get_device("x").state) == (2, DeviceState.CREATED)
    for change in (lambda d: replace(d, name="y"), lambda d: replace(d, device_id=99)):
        with pytest.raises(MetadataError, match="cannot change"):
            md.update_device("x", change)
    assert md.get_device("x") == updated


def test_change_state_keeps_the_error_text(md):
    md.add_device("x", 1)
    md.change_device_state("x", DeviceState.ACTIVATING, "dmsetup create: busy")
    assert md.get_device("x").error == "dmsetup create: busy"
    md.change_device_state("x", DeviceState.ACTIVATED)
    assert md.get_device("x").error == ""


def test_mark_faulty_marks_the_id(md):
    d = md.add_device("x", 1)
    md.mark_faulty("x", "why")
    assert md.get_device("x").state == DeviceState.FAULTY and md.id_state(d.device_id) == IdState.FAULTY


def test_walk_and_names(md):
    for name in ("b", "a", "c"):
        md.add_device(name, 1)
    assert md.device_names() == ["a", "b", "c"]
    assert [d.device_id for d in md.walk_devices()] == [2, 1, 3]


def test_the_records_survive_a_reopen(tmp_path):
    m = PoolMetadata(str(tmp_path / "p.db"))
    m.add_device("a", 7)
    m.change_device_state("a", DeviceState.ACTIVATED)
    m.close()
    m = PoolMetadata(str(tmp_path / "p.db"))
    assert m.get_device("a").state == DeviceState.ACTIVATED and m.add_device("b", 1).device_id == 2
    m.close()
    with pytest.raises(MetadataError, match="closed"):
        m.add_device("c", 1)


def test_state_strings():
    assert str(DeviceState.UNKNOWN) == "unknown 0"
    assert [int(s) for s in DeviceState] == list(range(14))
    assert str(DeviceState.FAULTY) == "Faulty"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "faulty"]), st.integers(0, 7)), max_size=40))
def test_ids_stay_unique_and_faulty_ids_are_never_reused(tmp_path_factory, ops):
    m = PoolMetadata(str(tmp_path_factory.mktemp("md") / "p.db"))
    faulty = set()
    try:
        for op, n in ops:
            name = f"d{n}"
            have = m.find_device(name)
            if op == "add" and (have is None or have.state == DeviceState.FAULTY):
                d = m.add_device(name, 1)
                assert d.device_id not in faulty
            elif op == "remove" and have is not None:
                m.remove_device(name)
            elif op == "faulty" and have is not None:
                faulty.add(m.mark_faulty(name).device_id)
        ids = [d.device_id for d in m.walk_devices() if d.state != DeviceState.FAULTY]
        assert len(ids) == len(set(ids))
        assert all(m.id_state(i) == IdState.FAULTY for i in faulty)
    finally:
        m.close()


# -- dmsetup's output and errors ------------------------------------------------------------


def test_error_mapping():
    assert dmsetup.error_code("Device pool-snap-9 not found\nCommand failed.") == errno.ENXIO
    msg = "device-mapper: message ioctl on pool  failed: File exists\nCommand failed."
    assert dmsetup.error_code(msg) == errno.EEXIST
    assert dmsetup.error_code("device-mapper: remove ioctl on x failed: Device or resource busy") == errno.EBUSY
    assert dmsetup.error_code("device-mapper: message ioctl on p failed: No data available") == errno.ENODATA
    info = "device-mapper: info ioctl on pool-snap-1  failed: Device does not exist.\nCommand failed."
    assert dmsetup.error_code(info) == errno.ENXIO
    assert dmsetup.error_code("x failed: No such device or address.") == errno.ENXIO
    assert dmsetup.error_code("Device does not exist.\nCommand failed.") == errno.ENXIO
    assert dmsetup.error_code("something else entirely") == 0
    assert dmsetup.error_code("") == 0


def test_info_status_and_tables_parse():
    (i,) = dmsetup.parse_info("pool-snap-1 dm-3 L--w 253 3 1 1 0")
    assert (i.name, i.blkdevname, i.live_table, i.suspended, i.major, i.minor, i.open_count) == (
        "pool-snap-1",
        "dm-3",
        True,
        False,
        253,
        3,
        1,
    )
    (s,) = dmsetup.parse_info("p dm-0 LIsw 253 0 0 1 5")
    assert s.suspended and s.inactive_table and not s.read_only
    with pytest.raises(ValueError):
        dmsetup.parse_info("too few columns")
    st_ = dmsetup.parse_status("0 204800 thin 17280 204799")
    assert (st_.start, st_.length, st_.target, st_.params) == (0, 204800, "thin", ["17280", "204799"])
    assert dmsetup.parse_status("0 2048 thin 0 -").params == ["0", "-"]
    with pytest.raises(ValueError):
        dmsetup.parse_status("0 2048")
    assert dmsetup.pool_table("/dev/loop1", "/dev/loop0", 16 << 20, 128) == (
        "0 32768 thin-pool /dev/loop1 /dev/loop0 128 32768 1 skip_block_zeroing"
    )
    assert dmsetup.thin_table("pool", 5, 1 << 20) == "0 2048 thin /dev/mapper/pool 5"


def test_device_ids_are_24_bit():
    with pytest.raises(ValueError):
        dmsetup.create_thin("pool", 1 << 24)
    with pytest.raises(ValueError):
        dmsetup.create_snap("pool", 1, -1)


@given(st.text(max_size=200))
def test_the_parsers_never_fail_but_with_value_error(text):
    for parse in (dmsetup.parse_info, dmsetup.parse_status):
        try:
            parse(text)
        except ValueError:
            pass
    assert dmsetup.error_code(text) in set(errno.errorcode) | {0}


def test_reconciliation_marks_interrupted_states_faulty_and_keeps_settled_ones(md):
    from nydus_hybrid.devmapper.pool import reconcile_states

    for state in DeviceState:
        if state != DeviceState.ACTIVATED:
            md.add_device(f"d-{state.name}", 1)
            md.change_device_state(f"d-{state.name}", state)
    asked: list[str] = []

    def is_live(name: str) -> bool:
        asked.append(name)
        return True

    faulty = reconcile_states(md, is_live, asked.append)
    assert asked == [], "only Activated devices are checked against the kernel"
    settled = {"SUSPENDED", "RESUMED", "DEACTIVATED", "REMOVED", "FAULTY"}
    want = sorted(f"d-{s.name}" for s in DeviceState if s.name not in settled | {"ACTIVATED"})
    assert sorted(faulty) == want
    for d in md.walk_devices():
        state = d.name[2:]
        assert d.state == (DeviceState[state] if state in settled else DeviceState.FAULTY), d
        if state not in settled:
            assert md.id_state(d.device_id) == IdState.FAULTY and "cut off" in d.error
