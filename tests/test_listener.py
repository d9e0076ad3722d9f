"""The connection table of webhook/listener.py: caps per source and in total, pure bookkeeping (no sockets)."""

from __future__ import annotations

import pytest

from webhook.enums import CloseReason
from webhook.listener import ConnectionTable, Slot, source_of


def _admit(table: ConnectionTable, source: str) -> Slot:
    slot = table.admit(source)
    assert isinstance(slot, Slot)
    return slot


def test_a_source_at_its_cap_is_refused_and_others_are_not():
    table = ConnectionTable(per_source=2, total=10)
    _admit(table, "10.0.0.1")
    _admit(table, "10.0.0.1")
    assert table.admit("10.0.0.1") is CloseReason.PER_SOURCE_LIMIT
    assert isinstance(table.admit("10.0.0.2"), Slot)


def test_the_total_cap_refuses_every_source():
    table = ConnectionTable(per_source=2, total=3)
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        _admit(table, source)
    assert table.admit("10.0.0.4") is CloseReason.TOTAL_LIMIT
    assert table.total == 3


def test_a_released_slot_makes_room_again():
    table = ConnectionTable(per_source=1, total=10)
    slot = _admit(table, "10.0.0.1")
    assert table.admit("10.0.0.1") is CloseReason.PER_SOURCE_LIMIT
    slot.release()
    assert isinstance(table.admit("10.0.0.1"), Slot)


def test_releasing_a_slot_twice_counts_once():
    table = ConnectionTable(per_source=5, total=10)
    first = _admit(table, "10.0.0.1")
    _admit(table, "10.0.0.1")
    first.release()
    first.release()
    assert (table.count("10.0.0.1"), table.total) == (1, 1)


@pytest.mark.parametrize("address, source", [
    pytest.param("192.0.2.7", "192.0.2.7", id="ipv4"),
    pytest.param("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64", id="ipv6-counts-per-64"),
    pytest.param("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64", id="same-64-same-source"),
    pytest.param("fe80::1%eth0", "fe80::/64", id="ipv6-with-zone"),
])
def test_source_of(address, source):
    assert source_of(address) == source
