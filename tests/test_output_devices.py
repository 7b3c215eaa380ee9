"""``-o`` naming a device or a FIFO writes to it in place (as to stdout), never renames a file over it.

Before, ``tokencsp open -o /dev/null`` as root replaced the machine's /dev/null with a regular
file (atomic_output renamed its temporary file over the target).  The tests use a FIFO, which
any user can make, for "not a regular file": the same branch as a device.
"""

from __future__ import annotations

import os
import stat
import threading

from helpers import tokencsp
from tokencsp.fileio import atomic_output, writes_in_place


def _read_fifo(path, into):
    with open(path, "rb") as fifo:
        into.append(fifo.read())


def test_writes_in_place_names_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "file").write_bytes(b"")
    assert writes_in_place(str(fifo)) and writes_in_place(os.devnull)
    assert not writes_in_place(str(tmp_path / "file")) and not writes_in_place(str(tmp_path / "missing"))
    assert not writes_in_place(str(tmp_path)) and not writes_in_place("-") and not writes_in_place(None)


def test_atomic_output_writes_a_fifo_in_place_and_leaves_it_a_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=_read_fifo, args=(fifo, got), daemon=True)
    reader.start()
    with atomic_output(str(fifo), devices_in_place=True) as sink:
        sink.write(b"in place")
    reader.join(30)
    assert got == [b"in place"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo"]  # no temporary file was made


def test_open_to_a_fifo_streams_into_it(softhsm_kit, tmp_path):
    tokencsp("key", "generate", "fifo-kx")
    try:
        pub, plain, sealed, fifo = (tmp_path / n for n in ("kx.pub", "plain", "m.tcsp", "out.fifo"))
        tokencsp("key", "export", "fifo-kx", "-o", str(pub))
        plain.write_bytes(os.urandom(200_000))
        tokencsp("seal", "--to", str(pub), "-o", str(sealed), str(plain))
        os.mkfifo(fifo)
        got: list[bytes] = []
        reader = threading.Thread(target=_read_fifo, args=(fifo, got), daemon=True)
        reader.start()
        tokencsp("open", "-q", "--key", "fifo-kx", "--replay-db", str(tmp_path / "db"), "-o", str(fifo),
                 str(sealed))
        reader.join(60)
        assert got == [plain.read_bytes()]
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert sorted(os.listdir(tmp_path)) == ["db", "kx.pub", "m.tcsp", "out.fifo", "plain"]
    finally:
        tokencsp("key", "delete", "--yes", "fifo-kx", check=False)


def test_atomic_output_that_did_not_ask_for_in_place_refuses_a_fifo_and_leaves_it(tmp_path):
    """Batch outputs and received files never rename over a device or FIFO: one OutputError, nothing written."""
    import pytest

    from tokencsp.errors import OutputError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for replace in (True, False):
        with pytest.raises(OutputError, match="not overwritten"), atomic_output(str(fifo), replace=replace) as sink:
            sink.write(b"must not land")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo"]
