"""The whole CLI flow on whichever token the run uses (SoftHSM under ``make test``, opencryptoki
under ``make test-opencryptoki``): key generate and export, ``capi`` encrypt/decrypt with PKCS#1
v1.5 and OAEP, seal/open, replay refused, signed seal/open with ``--trust``, key delete."""

from __future__ import annotations

import json
import os

from helpers import assert_one_line_error, tokencsp


def test_the_whole_flow_from_key_generate_to_key_delete(softhsm_kit, tmp_path):
    rx, signer = "flow-rx", "flow-signer"
    tokencsp("key", "generate", rx)
    tokencsp("key", "generate", signer, "--usage", "signature")
    try:
        for name in (rx, signer):
            tokencsp("key", "export", name, "-o", str(tmp_path / f"{name}.pub"))
        listed = {k["name"]: k for k in json.loads(tokencsp("key", "list", "--json").stdout)}
        assert listed[rx]["usage"] == "exchange" and listed[signer]["usage"] == "signature"

        plain = os.urandom(100_000)
        for flags in ([], ["--oaep"]):
            sb, ct = tmp_path / f"sb{len(flags)}", tmp_path / f"ct{len(flags)}"
            tokencsp("capi", "encrypt", "--to", str(tmp_path / f"{rx}.pub"), *flags, "--blob-out", str(sb),
                     "-o", str(ct), input=plain)
            out = tokencsp("capi", "decrypt", "--key", rx, "--blob", str(sb), *flags, str(ct)).stdout
            assert out == plain, flags

        db = str(tmp_path / "replay.db")
        sealed = tmp_path / "m.seal"
        tokencsp("seal", "--to", str(tmp_path / f"{rx}.pub"), "-o", str(sealed), input=plain)
        assert tokencsp("open", "--key", rx, "--replay-db", db, str(sealed)).stdout == plain
        assert_one_line_error(tokencsp("open", "--key", rx, "--replay-db", db, str(sealed), check=False), 20, "replay",
                              hint="replay cache SQLite")

        signed = tmp_path / "s.seal"
        tokencsp("seal", "--to", str(tmp_path / f"{rx}.pub"), "--sign-with", signer, "-o", str(signed),
                 input=b"signed hello")
        opened = tokencsp("open", "--key", rx, "--trust", str(tmp_path / f"{signer}.pub"), "--replay-db", db,
                          str(signed))
        assert opened.stdout == b"signed hello" and b"(signature verified)" in opened.stderr
    finally:
        for name in (rx, signer):
            tokencsp("key", "delete", "--yes", name, check=False)
    names = {k["name"] for k in json.loads(tokencsp("key", "list", "--json").stdout)}
    assert rx not in names and signer not in names
    gone = tokencsp("open", "--key", rx, "--replay-db", str(tmp_path / "other.db"), str(sealed), check=False)
    assert_one_line_error(gone, 3, rx, hint="'tokencsp key list' shows the keys")
