"""RFC 7512 URIs as GnuTLS ``p11tool --list-all`` prints them select tokencsp keys (issue 10).

p11tool (apt gnutls-bin) is a second, independent reader of the token: the URI
it prints for a tokencsp key must open that key in ``tokencsp``. It prints
model, manufacturer, serial, token, id, object and type for every object.
Runs on whichever backend the suite runs on (SoftHSM or opencryptoki).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from urllib.parse import unquote_to_bytes

import pytest

TOKEN = "tokencsp-test-a"
KEY = "p11tool-kx"
OTHER = "p11tool-other"


def tokencsp(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tokencsp", *args], input=input, capture_output=True,
                            timeout=120)
    assert result.returncode == 0, f"tokencsp {args} exited {result.returncode}: {result.stderr.decode()}"
    return result


def p11tool_objects(module: str, pin: str) -> list[dict[str, str]]:
    """``p11tool --list-all --login`` on the test token, one dict per object (URL, Type, Label...).

    The PIN travels in GNUTLS_PIN, never on the command line."""
    p11tool = shutil.which("p11tool")
    assert p11tool, "p11tool not found: install gnutls-bin (softhsm/install-deps.sh does)"
    result = subprocess.run([p11tool, "--provider", module, "--login", "--list-all", f"pkcs11:token={TOKEN}"],
                            env={**os.environ, "GNUTLS_PIN": pin}, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    objects: list[dict[str, str]] = []
    for line in result.stdout.splitlines():
        if line.startswith("Object "):
            objects.append({})
        elif objects and ":" in line:
            key, _, value = line.strip().partition(":")
            objects[-1][key] = value.strip()
    return objects


def uri_attrs(uri: str) -> dict[str, str]:
    assert uri.startswith("pkcs11:") and "?" not in uri, uri
    return dict(item.partition("=")[::2] for item in uri[len("pkcs11:"):].split(";"))


@pytest.fixture(scope="module")
def listed(softhsm_kit, tmp_path_factory):
    """Two tokencsp keys on the token and what p11tool says about them."""
    tokencsp("key", "generate", OTHER, "--token", TOKEN)
    tokencsp("key", "generate", KEY, "--token", TOKEN)
    try:
        yield p11tool_objects(softhsm_kit.module, softhsm_kit.user_pin)
    finally:
        tokencsp("key", "delete", "--yes", KEY, "--token", TOKEN)
        tokencsp("key", "delete", "--yes", OTHER, "--token", TOKEN)


def private_key_uri(listed: list[dict[str, str]], label: str) -> str:
    found = [o["URL"] for o in listed if o.get("Label") == label and o.get("Type", "").startswith("Private key")]
    assert len(found) == 1, listed
    return found[0]


def a_blob_for(tmp_path, name: str) -> tuple[str, str]:
    """A SIMPLEBLOB and ciphertext made with ``name``'s public key, as the sender would."""
    pub, blob, ct = (str(tmp_path / f) for f in ("pub", "sb", "ct"))
    tokencsp("key", "export", name, "--token", TOKEN, "-o", pub)
    tokencsp("capi", "encrypt", "--to", pub, "--blob-out", blob, "-o", ct, input=b"picked by p11tool's uri")
    return blob, ct


def test_p11tool_prints_every_identifying_attribute(listed):
    attrs = uri_attrs(private_key_uri(listed, KEY))
    assert attrs["token"] == TOKEN and attrs["object"] == KEY and attrs["type"] == "private"
    assert {"model", "manufacturer", "serial", "id"} <= set(attrs), attrs
    public = [o["URL"] for o in listed if o.get("Label") == KEY and o.get("Type", "").startswith("Public key")]
    assert len(public) == 1 and uri_attrs(public[0])["id"] == attrs["id"]
    # p11tool percent-encodes every byte of CKA_ID: 16 random bytes from tokencsp.
    assert len(unquote_to_bytes(attrs["id"])) == 16


def test_the_uri_p11tool_prints_opens_that_key(listed, tmp_path):
    blob, ct = a_blob_for(tmp_path, KEY)
    uri = private_key_uri(listed, KEY)
    out = tokencsp("capi", "decrypt", "--uri", uri, "--blob", blob, ct).stdout
    assert out == b"picked by p11tool's uri"


def test_the_uri_without_object_selects_by_id(listed, tmp_path):
    blob, ct = a_blob_for(tmp_path, KEY)
    by_id = ";".join(item for item in private_key_uri(listed, KEY).split(";") if not item.startswith("object="))
    assert "object=" not in by_id and "id=" in by_id
    out = tokencsp("capi", "decrypt", "--uri", by_id, "--blob", blob, ct).stdout
    assert out == b"picked by p11tool's uri"
