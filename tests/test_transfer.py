"""The file-transfer records (tokencsp.transfer): pure, no token, no sockets."""

from __future__ import annotations

import hashlib

import pytest

from tokencsp.errors import RemoteProtocolError
from tokencsp.transfer import (
    FileChunk,
    FileEnd,
    FileHeader,
    FileReceiver,
    FileStart,
    ack_record,
    check_ack,
    check_file_name,
    data_record,
)


def test_header_layout_round_trip_and_exactness():
    header = FileHeader("ünï.txt", 70_000)
    raw = header.to_bytes()
    assert raw == b"H" + (9).to_bytes(2, "big") + "ünï.txt".encode() + (70_000).to_bytes(8, "big")
    assert FileHeader.parse(raw) == header
    for bad in (raw[:-1], raw + b"\0", b"H", b"H\x00", b"X" + raw[1:], raw[:3] + b"\xff" + raw[4:]):
        with pytest.raises(RemoteProtocolError, match=r"malformed file header|refused file name"):
            FileHeader.parse(bad)


def test_receiver_events_in_order_and_digest():
    rx = FileReceiver()
    assert rx.receive(FileHeader("empty", 0).to_bytes()) == [FileStart("empty", 0),
                                                             FileEnd("empty", ack_record(hashlib.sha256().digest()))]
    assert rx.receive(FileHeader("two", 5).to_bytes()) == [FileStart("two", 5)]
    assert rx.in_progress == "two"
    assert rx.receive(data_record(b"ab")) == [FileChunk(b"ab")]
    with pytest.raises(RemoteProtocolError, match="expected file data"):
        rx.close()
    *_, end = rx.receive(data_record(b"cde"))
    assert end == FileEnd("two", ack_record(hashlib.sha256(b"abcde").digest()))
    check_ack(end.ack, hashlib.sha256(b"abcde").digest(), "two")
    with pytest.raises(RemoteProtocolError, match="does not match"):
        check_ack(end.ack, hashlib.sha256(b"abcdX").digest(), "two")
    rx.close()


@pytest.mark.parametrize("records,message", [
    ([data_record(b"x")], "expected a file header"),
    ([FileHeader("f", 1).to_bytes(), FileHeader("g", 1).to_bytes()], "expected file data"),
    ([FileHeader("f", 1).to_bytes(), data_record(b"xy")], "more bytes than"),
    ([FileHeader("f", 0).to_bytes(), FileHeader("f", 0).to_bytes()], "sent twice"),
])
def test_receiver_refusals(records, message):
    rx = FileReceiver()
    with pytest.raises(RemoteProtocolError, match=message):
        for record in records:
            rx.receive(record)


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/b", "a\\b", "..", ".", "", ".hidden", "nul\0x",
                                  "tab\tx", "x" * 256])
def test_bad_file_names(name):
    with pytest.raises(RemoteProtocolError, match="refused file name"):
        check_file_name(name)
