"""Admission of unauthenticated handshakes (tokencsp.admission): pure, the test passes the time."""

from __future__ import annotations

import pytest

from tokencsp.admission import Admission, AdmissionPolicy, Ticket, source_of


def test_in_progress_handshakes_are_capped_per_source_and_released():
    adm = Admission(AdmissionPolicy(per_source=2, per_source_rate=100.0, total_rate=100.0))
    first, second = adm.admit("10.0.0.1", 0.0), adm.admit("10.0.0.1", 0.0)
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    refusal = adm.admit("10.0.0.1", 0.0)
    assert refusal == "2 unauthenticated handshakes from 10.0.0.1 already in progress"
    assert isinstance(adm.admit("10.0.0.2", 0.0), Ticket)  # another source is not affected
    first.release()
    first.release()  # idempotent: a session both authenticates and ends
    assert adm.pending("10.0.0.1") == 1
    assert isinstance(adm.admit("10.0.0.1", 0.0), Ticket)


def test_rate_per_source_refills_with_time():
    adm = Admission(AdmissionPolicy(per_source=100, per_source_rate=2.0, total_rate=1000.0))
    assert [isinstance(adm.admit("10.0.0.1", 0.0), Ticket) for _ in range(3)] == [True, True, False]
    assert "new handshakes per second from 10.0.0.1" in adm.admit("10.0.0.1", 0.4)  # 0.8 of a token
    assert isinstance(adm.admit("10.0.0.1", 0.5), Ticket)  # one token back after 0.5 s
    assert isinstance(adm.admit("10.0.0.9", 0.5), Ticket)


def test_total_rate_caps_all_sources_together():
    adm = Admission(AdmissionPolicy(per_source=100, per_source_rate=100.0, total_rate=3.0))
    admitted = [isinstance(adm.admit(f"10.0.0.{i}", 0.0), Ticket) for i in range(5)]
    assert admitted == [True, True, True, False, False]
    assert adm.admit("10.0.0.7", 0.0) == "more than 3 new handshakes per second"
    assert isinstance(adm.admit("10.0.0.7", 1 / 3), Ticket)


def test_sources_group_ipv6_by_64_and_unmap_ipv4():
    assert source_of("2001:db8::1") == source_of("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_of("2001:db8:0:1::1") != source_of("2001:db8::1")
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7" and source_of("fe80::1%eth0") == "fe80::/64"
    adm = Admission(AdmissionPolicy(per_source=1))
    assert isinstance(adm.admit("2001:db8::1", 0.0), Ticket)
    assert isinstance(adm.admit("2001:db8::2", 0.0), str)  # same /64: the same source


def test_policy_must_be_positive():
    for bad in ({"per_source": 0}, {"per_source_rate": 0}, {"total_rate": -1}):
        with pytest.raises(ValueError):
            AdmissionPolicy(**bad)
