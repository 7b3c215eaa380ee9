"""RFC 7512 in full (issue 10): every attribute parsed and used or refused by name, conflicts refused,
and the URIs ``token list`` / ``key list`` print select what they name.

The first part is pure (tokencsp.pkcs11uri, config); the rest runs on the suite's real tokens.
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import assert_one_line_error, tokencsp
from tokencsp import Provider, config, pkcs11uri
from tokencsp.errors import ConfigError, KeyNotFoundError, SelectionConflict, TokenNotFoundError, UriError
from tokencsp.token import describe_tokens

TOKEN = "tokencsp-test-a"
OTHER_TOKEN = "tokencsp-test-b"


# -- parsing (pure) ------------------------------------------------------------------------------


def test_every_rfc7512_attribute_is_parsed_into_its_field():
    uri = ("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;"
           "serial=42;library-manufacturer=Snake%20Oil;library-description=Soft;library-version=2.6;"
           "object=my-key;type=private;id=%69%95%3E%5C%F4%BD%EC%91;slot-description=Slot%201;"
           "slot-manufacturer=Acme;slot-id=7?pin-source=file:/run/pin&module-name=softhsm2&module-path=/x.so")
    parsed = pkcs11uri.parse(uri)
    assert parsed == pkcs11uri.Pkcs11Uri(
        token="The Software PKCS#11 Softtoken", manufacturer="Snake Oil, Inc.", model="1.0", serial="42",
        library_manufacturer="Snake Oil", library_description="Soft", library_version=(2, 6), object="my-key",
        type="private", id=bytes.fromhex("69953e5cf4bdec91"), slot_description="Slot 1", slot_manufacturer="Acme",
        slot_id=7, pin_source="file:/run/pin", module_name="softhsm2", module_path="/x.so")
    assert pkcs11uri.parse("pkcs11:library-version=3").library_version == (3, 0)  # as p11-kit reads it
    assert pkcs11uri.parse("PKCS11:token=a").token == "a"  # the scheme is case-insensitive
    assert pkcs11uri.parse("pkcs11:?pin-value=1234").pin_value == "1234"
    assert "1234" not in repr(pkcs11uri.parse("pkcs11:?pin-value=1234"))
    selector = config.resolve_selector(uri="pkcs11:token=a?pin-value=1234&pin-source=file:/run/secret-pin")
    assert selector.pin_value == "1234" and "1234" not in repr(selector) and "secret-pin" not in repr(selector)


@pytest.mark.parametrize(("uri", "needle"), [
    ("pkcs11:tokn=x", "unsupported PKCS#11 URI attribute: 'tokn'"),
    ("pkcs11:token=a;x-vendor=1", "'x-vendor'"),  # no x- convention in RFC 7512: an unknown name
    ("pkcs11:token=a;vendor_attr=1", "'vendor_attr'"),
    ("pkcs11:token=a?x-engine=1", "'x-engine'"),  # tokencsp knows no vendor query attribute either
    ("pkcs11:token=a;pin-source=file:/p", "'pin-source' belongs in the query"),
    ("pkcs11:?token=a", "'token' belongs in the path"),
    ("pkcs11:token=a;token=b", "given twice: 'token'"),
    ("pkcs11:token", "without a value: 'token'"),
    ("pkcs11:slot-id=one", "'slot-id' is a decimal number"),
    ("pkcs11:slot-id=-1", "'slot-id' is a decimal number"),
    ("pkcs11:library-version=2.x", "'library-version' is MAJOR or MAJOR.MINOR"),
    ("pkcs11:library-version=.6", "'library-version' is MAJOR or MAJOR.MINOR"),
    ("pkcs11:library-version=2.", "'library-version' is MAJOR or MAJOR.MINOR"),
    ("pkcs11:type=cert", "type=cert: tokencsp uses RSA key pairs"),
    ("pkcs11:type=secret-key", "type=secret-key"),
    ("pkcs11:type=keys", "RFC 7512 types are public, private, cert, secret-key, data"),
    ("pkcs11:token=%4", "'token' has a bad percent-encoding"),
    ("pkcs11:token=%zz", "'token' has a bad percent-encoding"),
    ("pkcs11:token=%ff", "'token' is not UTF-8"),
    ("pkcs11s:token=a", "starts with 'pkcs11:'"),
])
def test_a_bad_or_unknown_attribute_is_refused_by_name(uri, needle):
    with pytest.raises(UriError) as refused:
        pkcs11uri.parse(uri)
    assert needle in str(refused.value)


def test_the_uris_tokencsp_writes_parse_back_to_the_same_values():
    label, serial, manufacturer, model = "a;b?c%d /é&=", "12:34", "Snake Oil, Inc.", "v2#1"
    key_id = bytes(range(256))[::7]
    token = pkcs11uri.token_uri(label, serial, manufacturer, model)
    uri = pkcs11uri.key_uri(token, key_id, "key;one?two")
    parsed = pkcs11uri.parse(uri)
    assert (parsed.token, parsed.serial, parsed.manufacturer, parsed.model) == (label, serial, manufacturer, model)
    assert (parsed.id, parsed.object, parsed.type) == (key_id, "key;one?two", "private")
    assert "?" not in uri  # no query: a printed URI names no module and no PIN
    assert ";id=" + "".join(f"%{b:02x}" for b in key_id) + ";" in uri  # every byte encoded, as p11tool does


# -- selection and conflicts (host: files and p11-kit's registry, no token) -----------------------


def test_an_argument_that_contradicts_the_uri_is_refused(tmp_path):
    with pytest.raises(SelectionConflict, match="--token 'a' contradicts token='b' in the --uri"):
        config.resolve_selector(token="a", uri="pkcs11:token=b", environ={})
    with pytest.raises(SelectionConflict, match="--serial '1' contradicts serial='2'"):
        config.resolve_selector(serial="1", uri="pkcs11:serial=2", environ={})
    with pytest.raises(SelectionConflict, match="--key 'x' contradicts object='y' in TOKENCSP_URI"):
        config.resolve_selector(key="x", environ={"TOKENCSP_URI": "pkcs11:object=y"})
    one, two = tmp_path / "one.so", tmp_path / "two.so"
    one.write_bytes(b"")
    two.write_bytes(b"")
    with pytest.raises(SelectionConflict, match="module-path="):
        config.resolve_selector(module=str(one), uri=f"pkcs11:?module-path={two}", environ={})
    # the same module by two names is no conflict
    same = config.resolve_selector(module=str(one), uri=f"pkcs11:token=t?module-path={one}", environ={})
    assert same.module == str(one) and same.token_label == "t"
    # an argument agreeing with the URI is fine, and TOKENCSP_TOKEN does not override the URI
    agreed = config.resolve_selector(token="b", uri="pkcs11:token=b;slot-id=3", environ={"TOKENCSP_TOKEN": "z"})
    assert agreed.token_label == "b" and agreed.slot_id == 3


def test_module_path_and_a_module_name_that_disagree_are_refused(tmp_path):
    registered = config.p11kit.registered_modules()
    if "softhsm2" not in registered:
        pytest.fail("softhsm2 is not registered with p11-kit (/usr/share/p11-kit/modules/softhsm2.module)")
    other = tmp_path / "other.so"
    other.write_bytes(b"")
    with pytest.raises(SelectionConflict, match="module-name=softhsm2"):
        config.resolve_selector(uri=f"pkcs11:?module-path={other}&module-name=softhsm2", environ={})
    with pytest.raises(SelectionConflict, match="--module-name softhsm2"):
        config.resolve_selector(module=str(other), module_name="softhsm2", environ={})
    both = config.resolve_selector(uri=f"pkcs11:?module-path={registered['softhsm2']}&module-name=softhsm2",
                                   environ={})
    assert both.module == registered["softhsm2"]


# -- on the token ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(softhsm_kit):
    """Two exchange keys on the test token, made by tokencsp; their (name, id)."""
    with Provider.open(softhsm_kit.module, TOKEN, softhsm_kit.user_pin) as provider:
        made = {name: provider.generate_exchange_key(name).key_id for name in ("uri-one", "uri-two")}
    yield made
    with Provider.open(softhsm_kit.module, TOKEN, softhsm_kit.user_pin) as provider:
        for name in made:
            provider.delete_key(name)


def _token(softhsm_kit, label=TOKEN):
    (found,) = [t for t in describe_tokens(softhsm_kit.module) if t.label == label]
    return found


def _id(key_id: bytes) -> str:
    return "".join(f"%{b:02x}" for b in key_id)


def test_an_id_only_uri_selects_the_key(softhsm_kit, keys):
    uri = f"pkcs11:token={TOKEN};id={_id(keys['uri-two'])}"
    with Provider.open(softhsm_kit.module, pin=softhsm_kit.user_pin, uri=uri) as provider:
        assert provider.exchange_key().name == "uri-two"
        assert provider.key().key_id == keys["uri-two"]
        assert [k.name for k in provider.list_keys()] == ["uri-two"]  # key list shows what the URI names
        # a name that agrees with the id is fine; one that names another key is a conflict
        assert provider.exchange_key("uri-two").key_id == keys["uri-two"]
        with pytest.raises(SelectionConflict, match="key 'uri-one' has id"):
            provider.exchange_key("uri-one")
        with pytest.raises(SelectionConflict, match="cannot name a new key"):
            provider.generate_exchange_key("uri-three")


def test_object_and_the_id_of_another_key_is_a_conflict(softhsm_kit, keys):
    uri = f"pkcs11:token={TOKEN};object=uri-one;id={_id(keys['uri-two'])}"
    with Provider.open(softhsm_kit.module, pin=softhsm_kit.user_pin, uri=uri) as provider, \
            pytest.raises(SelectionConflict, match="key 'uri-one' has id"):
        provider.exchange_key()
    absent = f"pkcs11:token={TOKEN};id=%00%01"
    with Provider.open(softhsm_kit.module, pin=softhsm_kit.user_pin, uri=absent) as provider, \
            pytest.raises(KeyNotFoundError):
        provider.exchange_key()


def test_type_public_selects_only_for_public_key_use(softhsm_kit, keys):
    uri = f"pkcs11:token={TOKEN};object=uri-one;type=public"
    with Provider.open(softhsm_kit.module, pin=softhsm_kit.user_pin, uri=uri) as provider:
        assert provider.key(public=True).key_id == keys["uri-one"]
        with pytest.raises(SelectionConflict, match="type=public"):
            provider.exchange_key()


def test_token_slot_and_library_attributes_select_or_refuse(softhsm_kit, keys, monkeypatch):
    mine, other = _token(softhsm_kit), _token(softhsm_kit, OTHER_TOKEN)
    pin = softhsm_kit.user_pin
    with Provider.open(softhsm_kit.module, pin=pin, uri=f"pkcs11:slot-id={mine.slot_id}") as provider:
        assert provider.token_label == TOKEN
    model = pkcs11uri.quote(mine.model)
    with Provider.open(softhsm_kit.module, pin=pin, uri=f"pkcs11:token={TOKEN};model={model}") as provider:
        assert provider.token_label == TOKEN
    for wrong in (f"token={TOKEN};slot-id={other.slot_id}", f"token={TOKEN};manufacturer=Nobody",
                  f"token={TOKEN};model=nothing", f"token={TOKEN};slot-manufacturer=Nobody",
                  f"token={TOKEN};slot-description=nowhere"):
        with pytest.raises(TokenNotFoundError, match="no token with"):
            Provider.open(softhsm_kit.module, pin=pin, uri=f"pkcs11:{wrong}")
    for wrong, needle in (("library-manufacturer=Nobody", "library-manufacturer='Nobody' does not match"),
                          ("library-version=99.1", "library-version=99.1 does not match"),
                          ("library-description=Nothing", "library-description='Nothing' does not match")):
        with pytest.raises(TokenNotFoundError, match=needle):
            Provider.open(softhsm_kit.module, pin=pin, uri=f"pkcs11:token={TOKEN};{wrong}")
    with Provider.open(softhsm_kit.module, pin=pin, uri=f"pkcs11:model={model}") as provider:
        assert provider.token_label == os.environ["TOKENCSP_TOKEN"]  # the variable names what the URI leaves open
    monkeypatch.delenv("TOKENCSP_TOKEN")
    with pytest.raises(TokenNotFoundError, match="no token named"):  # a model alone picks no token
        Provider.open(softhsm_kit.module, pin=pin, uri=f"pkcs11:model={model}")


def test_the_library_attributes_of_the_module_itself_match(softhsm_kit, keys):
    from tokencsp.token import load_module

    lib = load_module(softhsm_kit.module)
    major, minor = lib.library_version
    uri = (f"pkcs11:token={TOKEN};library-manufacturer={pkcs11uri.quote(lib.manufacturer_id)};"
           f"library-description={pkcs11uri.quote(lib.library_description)};library-version={major}.{minor}")
    with Provider.open(softhsm_kit.module, pin=softhsm_kit.user_pin, uri=uri) as provider:
        assert provider.token_label == TOKEN


def test_every_uri_key_list_prints_opens_that_key(softhsm_kit, keys):
    with Provider.open(softhsm_kit.module, TOKEN, softhsm_kit.user_pin) as provider:
        listed = {k.name: k.uri for k in provider.list_keys() if k.name in keys}
        token_uri = provider.token_uri
    assert token_uri == _token(softhsm_kit).uri
    assert set(listed) == set(keys)
    for name, uri in listed.items():
        assert uri.startswith(token_uri + ";id=")
        with Provider.open(softhsm_kit.module, pin=softhsm_kit.user_pin, uri=uri) as provider:
            assert provider.exchange_key().key_id == keys[name]
            # the id alone selects it too
            by_id = ";".join(p for p in uri.split(";") if not p.startswith("object="))
        with Provider.open(softhsm_kit.module, pin=softhsm_kit.user_pin, uri=by_id) as provider:
            assert provider.exchange_key().name == name


# -- the command line ------------------------------------------------------------------------------


def test_key_list_and_token_list_print_uris_that_work(softhsm_kit, keys, tmp_path):
    listing = json.loads(tokencsp("key", "list", "--json", "--token", TOKEN).stdout)
    entry = next(k for k in listing if k["name"] == "uri-one")
    assert entry["import_path"] == "unwrap" and entry["uri"].endswith(f";id={_id(keys['uri-one'])};"
                                                                      "object=uri-one;type=private")
    lines = tokencsp("key", "list", "--token", TOKEN).stdout.decode().splitlines()
    assert lines[0].startswith(f"token '{TOKEN}', serial ") and lines[0].endswith(_token(softhsm_kit).uri)
    row = next(line.split("\t") for line in lines[2:] if line.startswith("uri-one\t"))
    assert row[3] == "unwrap" and row[-1] == entry["uri"]
    tokens = json.loads(tokencsp("token", "list", "--json").stdout)
    mine = next(t for t in tokens if t["label"] == TOKEN)
    assert mine["uri"] == _token(softhsm_kit).uri
    text = tokencsp("token", "list").stdout.decode().splitlines()
    assert text[0] == "TOKEN\tSERIAL\tSLOT\tURI" and any(line.endswith("\t" + mine["uri"]) for line in text[1:])
    # the printed URIs select: the token's for key list, the key's for export
    assert b"uri-one" in tokencsp("key", "list", "--uri", mine["uri"]).stdout
    pem = tokencsp("key", "export", "--format", "pem", "--uri", entry["uri"]).stdout
    assert pem == tokencsp("key", "export", "uri-one", "--format", "pem", "--token", TOKEN).stdout


def test_a_contradiction_on_the_command_line_is_one_line_exit_2(softhsm_kit, keys):
    uri = f"pkcs11:token={TOKEN};object=uri-one"
    assert_one_line_error(tokencsp("key", "export", "uri-two", "--uri", uri, check=False), 2,
                          "key 'uri-two' contradicts object='uri-one'")
    assert_one_line_error(tokencsp("capi", "decrypt", "--key", "uri-two", "--uri", uri, "--blob", "x", "y",
                                   check=False), 2, "--key 'uri-two' contradicts object='uri-one'")
    assert_one_line_error(tokencsp("key", "list", "--token", OTHER_TOKEN, "--uri", uri, check=False), 2,
                          f"--token '{OTHER_TOKEN}' contradicts token='{TOKEN}'")
    env = {**os.environ, "TOKENCSP_URI": f"pkcs11:token={TOKEN};x-vendor=1"}
    assert_one_line_error(tokencsp("key", "list", env=env, check=False), 2, "'x-vendor'")


def test_pin_source_forms(tmp_path):
    pin_file = tmp_path / "pin"
    pin_file.write_text("4321\n")
    pin_file.chmod(0o600)
    for source in (f"file:{pin_file}", f"file://{pin_file}", str(pin_file)):
        selector = config.resolve_selector(uri=f"pkcs11:token=t?pin-source={source}", environ={})
        assert config.resolve_pin(selector=selector, environ={}, interactive=False) == "4321"
    for source, needle in (("|/bin/echo", "runs no command"), ("https://pins.example/p", "only file:"),
                           ("file://host/p", "only a local file")):
        selector = config.resolve_selector(uri=f"pkcs11:token=t?pin-source={source}", environ={})
        with pytest.raises(ConfigError, match=needle):
            config.resolve_pin(selector=selector, environ={}, interactive=False)
