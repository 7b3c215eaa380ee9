"""``tokencsp seal --to A --to B`` / ``--to-file``: one message to keys on two tokens (docs/FORMAT.md 9)."""

from __future__ import annotations

import json

import pytest

from helpers import assert_one_line_error, tokencsp
from test_cli_json import one  # each object checked against docs/result.schema.json
from tokencsp.pubkeys import fingerprint, load_public_key

TOKEN_A, TOKEN_B = "tokencsp-test-a", "tokencsp-test-b"
PEOPLE = {"cliv2-alice": TOKEN_A, "cliv2-bob": TOKEN_B, "cliv2-carol": TOKEN_A}


@pytest.fixture(scope="module")
def pubs(tmp_path_factory, softhsm_kit):
    home = tmp_path_factory.mktemp("v2keys")
    for name, token in PEOPLE.items():
        tokencsp("key", "generate", name, "--token", token)
        tokencsp("key", "export", name, "--token", token, "-o", str(home / f"{name}.pub"))  # PUBLICKEYBLOB
        tokencsp("key", "export", name, "--token", token, "--format", "pem", "-o", str(home / f"{name}.pem"))
    tokencsp("key", "generate", "cliv2-ca", "--usage", "signature", "--token", TOKEN_B)
    tokencsp("key", "generate", "cliv2-signonly", "--usage", "signature", "--token", TOKEN_B)
    tokencsp("key", "export", "cliv2-ca", "--token", TOKEN_B, "-o", str(home / "ca.pub"))  # signs messages too
    tokencsp("key", "cert", "cliv2-bob", "--signer", "cliv2-ca", "--token", TOKEN_B, "-o", str(home / "bob.crt"))
    tokencsp("key", "cert", "cliv2-signonly", "--signer", "cliv2-ca", "--token", TOKEN_B,
             "-o", str(home / "signonly.crt"))
    yield home
    for name, token in {**PEOPLE, "cliv2-ca": TOKEN_B, "cliv2-signonly": TOKEN_B}.items():
        tokencsp("key", "delete", "--yes", name, "--token", token, check=False)


def opener(name: str, db, *extra: str) -> list[str]:
    return ["open", "--token", PEOPLE[name], "--key", name, "--replay-db", str(db), *extra]


def test_seal_to_two_tokens_each_opens_and_a_third_key_gets_exit_12(pubs, tmp_path):
    sealed = tmp_path / "m.tcsp"
    tokencsp("seal", "--to", str(pubs / "cliv2-alice.pub"), "--to", str(pubs / "cliv2-bob.pub"), "-o", str(sealed),
             input=b"for alice and bob")
    db = tmp_path / "shared.db"  # one replay cache for both: each accepts its own copy once
    for name in ("cliv2-alice", "cliv2-bob"):
        assert tokencsp(*opener(name, db), str(sealed)).stdout == b"for alice and bob"
    for name in ("cliv2-alice", "cliv2-bob"):
        assert_one_line_error(tokencsp(*opener(name, db), str(sealed), check=False), 20, "already accepted",
                              hint="replay cache")
    out = tmp_path / "carol.out"
    refused = tokencsp(*opener("cliv2-carol", db, "-o", str(out)), str(sealed), check=False)
    assert_one_line_error(refused, 12, "message is not addressed to this key")
    assert not out.exists()


def test_inspect_json_lists_the_recipients(pubs, tmp_path):
    sealed = tmp_path / "m.tcsp"
    tokencsp("seal", "--to", str(pubs / "cliv2-bob.pub"), "--to", str(pubs / "cliv2-alice.pub"),
             "--to", str(pubs / "cliv2-carol.pub"), "-o", str(sealed), input=b"three")
    info = one(tokencsp("inspect", "--json", str(sealed)).stdout)
    ids = {fingerprint(load_public_key((pubs / f"{name}.pub").read_bytes())).hex() for name in PEOPLE}
    assert info["version"] == 2 and info["suite"] == 2 and len(info["key_commitment"]) == 64
    key_ids = [r["key_id"] for r in info["recipients"]]
    assert key_ids == sorted(ids)
    assert all(r["key_blob_bytes"] == 268 for r in info["recipients"])
    assert info["recipient_key_id"] is None and info["key_blob_bytes"] is None  # format 1's fields stay
    single = tmp_path / "one.tcsp"
    tokencsp("seal", "--to", str(pubs / "cliv2-alice.pub"), "-o", str(single), input=b"one")
    v1 = one(tokencsp("inspect", "--json", str(single)).stdout)
    assert v1["version"] == 1 and [r["key_id"] for r in v1["recipients"]] == [v1["recipient_key_id"]]
    opened = one(tokencsp(*opener("cliv2-carol", tmp_path / "db", "-o", str(tmp_path / "out"), "--json"),
                          str(sealed)).stdout)
    assert opened["recipients"] == 3 and opened["recipient_key_id"] in ids


def test_to_file_bundle_with_a_certificate_and_a_public_key(pubs, tmp_path):
    bundle = tmp_path / "team.pem"
    bundle.write_bytes(b"# the team\nalice:\n" + (pubs / "cliv2-alice.pem").read_bytes()
                       + b"\nbob (certificate):\n" + (pubs / "bob.crt").read_bytes())
    sealed = tmp_path / "m.tcsp"
    tokencsp("seal", "--to-file", str(bundle), "--to", str(pubs / "cliv2-carol.pub"), "-o", str(sealed),
             input=b"team")
    assert len(json.loads(tokencsp("inspect", "--json", str(sealed)).stdout)["recipients"]) == 3
    for name in PEOPLE:
        assert tokencsp(*opener(name, tmp_path / f"{name}.db"), str(sealed)).stdout == b"team"


def test_recipient_refusals_are_one_line(pubs, tmp_path):
    alice = str(pubs / "cliv2-alice.pub")
    twice = tokencsp("seal", "--to", alice, "--to", alice, "-o", str(tmp_path / "x"), input=b"", check=False)
    assert_one_line_error(twice, 1, "the same recipient key is given twice")
    none = tokencsp("seal", "-o", str(tmp_path / "x"), input=b"", check=False)
    assert_one_line_error(none, 2, "seal needs a recipient")
    empty = tmp_path / "empty.pem"
    empty.write_text("nobody here\n")
    assert_one_line_error(tokencsp("seal", "--to-file", str(empty), "-o", str(tmp_path / "x"), input=b"",
                                   check=False), 1, "no recipient in the file")
    sign_only = tokencsp("seal", "--to", str(pubs / "signonly.crt"), "-o", str(tmp_path / "x"), input=b"",
                         check=False)
    assert_one_line_error(sign_only, 1, "keyUsage does not allow keyEncipherment")
    assert not (tmp_path / "x").exists()


def test_open_out_dir_takes_format_2_messages_too(pubs, tmp_path):
    spool, inbox = tmp_path / "spool", tmp_path / "inbox"
    spool.mkdir()
    inbox.mkdir()
    both = [*("--to", str(pubs / "cliv2-alice.pub")), *("--to", str(pubs / "cliv2-bob.pub"))]
    tokencsp("seal", *both, "-o", str(spool / "a.tcsp"), input=b"to both")
    tokencsp("seal", "--to", str(pubs / "cliv2-bob.pub"), "-o", str(spool / "b.tcsp"), input=b"to bob")
    tokencsp(*opener("cliv2-bob", tmp_path / "db", "--out-dir", str(inbox)), str(spool / "a.tcsp"),
             str(spool / "b.tcsp"))
    assert (inbox / "a").read_bytes() == b"to both" and (inbox / "b").read_bytes() == b"to bob"


def test_a_signed_format_2_message_is_released_only_after_its_trailer(pubs, tmp_path):
    """docs/FORMAT.md 9.5 T4: with --trust, stdout gets nothing unless the trailer verified, -o no file;
    inspect says the signature covers the message."""
    sealed = tmp_path / "s.tcsp"
    text = bytes(range(256)) * 1024  # 256 KiB: several 64 KiB chunks that authenticate before the trailer
    tokencsp("seal", "--to", str(pubs / "cliv2-alice.pub"), "--to", str(pubs / "cliv2-bob.pub"),
             "--sign-with", "cliv2-ca", "--token", TOKEN_B, "-o", str(sealed), input=text)
    info = one(tokencsp("inspect", "--json", str(sealed)).stdout)
    assert info["signed"] and info["signature_covers"] == "message"
    trust = ("--trust", str(pubs / "ca.pub"))
    bad = tmp_path / "bad.tcsp"
    data = bytearray(sealed.read_bytes())
    data[-100] ^= 0x04  # inside the trailer: every chunk still authenticates
    bad.write_bytes(bytes(data))
    db = tmp_path / "db"
    refused = tokencsp(*opener("cliv2-alice", db, *trust), str(bad), check=False)  # stdout: nothing at all
    assert_one_line_error(refused, 31, "sender signature does not verify")
    out = tmp_path / "out"
    refused = tokencsp(*opener("cliv2-bob", db, *trust, "-o", str(out)), str(bad), check=False)
    assert_one_line_error(refused, 31, "sender signature does not verify")
    assert not out.exists()
    for name in ("cliv2-alice", "cliv2-bob"):  # the refused copies spent nothing
        opened = tokencsp(*opener(name, db, *trust), str(sealed))
        assert opened.stdout == text and b"signature verified" in opened.stderr
    v1 = tmp_path / "v1.tcsp"
    tokencsp("seal", "--to", str(pubs / "cliv2-alice.pub"), "--sign-with", "cliv2-ca", "--token", TOKEN_B,
             "-o", str(v1), input=b"one")
    assert one(tokencsp("inspect", "--json", str(v1)).stdout)["signature_covers"] == "prefix"
    plain = tmp_path / "plain.tcsp"
    tokencsp("seal", "--to", str(pubs / "cliv2-alice.pub"), "-o", str(plain), input=b"none")
    assert one(tokencsp("inspect", "--json", str(plain)).stdout)["signature_covers"] is None


def test_a_stdout_spool_past_its_cap_or_unwritable_is_one_line(pubs, tmp_path):
    """docs/FORMAT.md 9.6 step 8a: a verified format 2 message for stdout bigger than TOKENCSP_SPOOL_MAX is
    refused (exit 1, a hint to use -o FILE); a spool that cannot be written (here: its roll-over to disk
    fails with EFBIG under RLIMIT_FSIZE) is one OutputError line (exit 1).  Nothing reaches stdout and
    nothing is recorded: each receiver opens the message afterwards."""
    sealed = tmp_path / "big.tcsp"
    text = bytes(range(256)) * (5 * 1024 + 7)  # past the spool's 1 MiB in memory
    tokencsp("seal", "--to", str(pubs / "cliv2-alice.pub"), "--to", str(pubs / "cliv2-bob.pub"),
             "--sign-with", "cliv2-ca", "--token", TOKEN_B, "-o", str(sealed), input=text)
    trust = ("--trust", str(pubs / "ca.pub"))
    db = tmp_path / "db"
    capped = tokencsp(*opener("cliv2-alice", db, *trust), str(sealed), env={"TOKENCSP_SPOOL_MAX": "1000000"},
                      check=False)
    assert_one_line_error(capped, 1, "TOKENCSP_SPOOL_MAX=1000000", hint="-o FILE")
    unwritable = tokencsp(*opener("cliv2-bob", db, *trust), str(sealed), fsize=256 * 1024, check=False)
    assert_one_line_error(unwritable, 1, "cannot spool the plaintext")
    for name in ("cliv2-alice", "cliv2-bob"):
        assert tokencsp(*opener(name, db, *trust), str(sealed)).stdout == text
