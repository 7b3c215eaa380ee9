"""RFC 7512 ``pkcs11:`` URIs: parse one into typed attributes, write one for a token or key.  Pure.

Every attribute RFC 7512 defines is parsed and checked here, and every one
is used by tokencsp (docs/TOKENS.md, "PKCS#11 URIs"): the token and slot
attributes select the token, the library attributes check the module,
``object``/``id``/``type`` select the key, the query attributes name the
module and the PIN.  Any other name -- a typo or a vendor-specific attribute
-- is refused with its name: RFC 7512 section 2.5 says unrecognised path
attributes, vendor-specific ones included, SHOULD match nothing, and a
refusal that says why is that empty match made visible.  RFC 7512 has no
``x-`` prefix for vendor attributes (any other ``1*(ALPHA / DIGIT / "-" /
"_")`` name is one); tokencsp knows none, in the path or in the query.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UriError

__all__ = [
    "OBJECT_TYPES", "PATH_ATTRIBUTES", "QUERY_ATTRIBUTES", "Pkcs11Uri", "UriError", "key_uri", "parse", "token_uri",
]

SCHEME = "pkcs11:"

# Attribute name -> what its value is ("text" UTF-8, "bytes" for CKA_ID, "number", "version", "type").
PATH_ATTRIBUTES: dict[str, str] = {
    "token": "text", "manufacturer": "text", "serial": "text", "model": "text",
    "library-manufacturer": "text", "library-description": "text", "library-version": "version",
    "object": "text", "type": "type", "id": "bytes",
    "slot-description": "text", "slot-manufacturer": "text", "slot-id": "number",
}
QUERY_ATTRIBUTES: dict[str, str] = {"pin-source": "text", "pin-value": "text", "module-name": "text",
                                    "module-path": "text"}
#: RFC 7512's object types; tokencsp uses key pairs, so only ``private`` and ``public`` select anything.
OBJECT_TYPES = ("public", "private", "cert", "secret-key", "data")
KEY_TYPES = ("private", "public")

# Characters a value may carry unencoded (RFC 7512 section 2.3; RFC 3986 unreserved).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RES_AVAIL = frozenset(":[]@!$'()*+,=")
_PATH_SAFE = _UNRESERVED | _RES_AVAIL | {"&"}
_QUERY_SAFE = _UNRESERVED | _RES_AVAIL | {"/", "?", "|"}
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Pkcs11Uri:
    """The attributes of one URI, decoded; None where the URI does not say."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    library_manufacturer: str | None = None
    library_description: str | None = None
    library_version: tuple[int, int] | None = None
    object: str | None = None
    type: str | None = None
    id: bytes | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    slot_id: int | None = None
    pin_source: str | None = None
    pin_value: str | None = None
    module_name: str | None = None
    module_path: str | None = None

    def __repr__(self) -> str:  # never a PIN
        shown = {k: v for k, v in self.__dict__.items() if v is not None and k != "pin_value"}
        return f"Pkcs11Uri({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def names_object(self) -> bool:
        return self.object is not None or self.id is not None


def parse(uri: str) -> Pkcs11Uri:
    """Split and decode an RFC 7512 URI; :class:`UriError` names what is wrong."""
    if uri[:len(SCHEME)].lower() != SCHEME:
        raise UriError("a PKCS#11 URI starts with 'pkcs11:'")
    path, _, query = uri[len(SCHEME):].partition("?")
    values: dict[str, object] = {}
    for part, known, separator, where in ((path, PATH_ATTRIBUTES, ";", "path"),
                                          (query, QUERY_ATTRIBUTES, "&", "query")):
        for item in part.split(separator):
            if not item:
                continue
            name, eq, raw = item.partition("=")
            if not eq:
                raise UriError(f"PKCS#11 URI attribute without a value: {name!r}")
            if name not in known:
                raise UriError(_unknown(name, where))
            if name in values:
                raise UriError(f"PKCS#11 URI attribute given twice: {name!r}")
            values[name] = _value(name, known[name], raw)
    return Pkcs11Uri(**{name.replace("-", "_"): value for name, value in values.items()})  # type: ignore[arg-type]


def _unknown(name: str, where: str) -> str:
    other = QUERY_ATTRIBUTES if where == "path" else PATH_ATTRIBUTES
    if name in other:
        place = "query (after '?')" if where == "path" else "path (before '?')"
        return f"PKCS#11 URI attribute {name!r} belongs in the {place}"
    return (f"unsupported PKCS#11 URI attribute: {name!r} (RFC 7512 path attributes: "
            f"{', '.join(PATH_ATTRIBUTES)}; query: {', '.join(QUERY_ATTRIBUTES)}; no vendor attributes)")


def _value(name: str, kind: str, raw: str) -> object:
    data = _unquote(name, raw)
    if kind == "bytes":
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UriError(f"PKCS#11 URI attribute {name!r} is not UTF-8 text") from None
    if kind == "number":
        if not text.isascii() or not text.isdigit():
            raise UriError(f"PKCS#11 URI attribute {name!r} is a decimal number, not {text!r}")
        return int(text)
    if kind == "version":
        major, dot, minor = text.partition(".")
        if not all(p.isascii() and p.isdigit() and int(p) < 256 for p in (major, minor) if p or dot) or not major:
            raise UriError(f"PKCS#11 URI attribute {name!r} is MAJOR or MAJOR.MINOR, not {text!r}")
        return int(major), int(minor) if minor else 0  # "2" is 2.0, as p11-kit reads it
    if kind == "type":
        if text not in OBJECT_TYPES:
            raise UriError(f"PKCS#11 URI type={text!r}: RFC 7512 types are {', '.join(OBJECT_TYPES)}")
        if text not in KEY_TYPES:
            raise UriError(f"PKCS#11 URI type={text}: tokencsp uses RSA key pairs, select one with type=private "
                           "(or type=public)")
        return text
    return text


def _unquote(name: str, raw: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "%":
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise UriError(f"PKCS#11 URI attribute {name!r} has a bad percent-encoding")
            out.append(int(pair, 16))
            i += 3
            continue
        out += char.encode("utf-8")
        i += 1
    return bytes(out)


def quote(value: str | bytes, *, query: bool = False, every_byte: bool = False) -> str:
    """Percent-encode a value for the path (or the query); ``every_byte`` as p11tool writes ids."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    safe = _QUERY_SAFE if query else _PATH_SAFE
    return "".join(chr(b) if not every_byte and b < 128 and chr(b) in safe else f"%{b:02x}" for b in data)


def token_uri(label: str, serial: str, manufacturer: str, model: str) -> str:
    """The token's URI as p11tool writes it (model, manufacturer, serial, token)."""
    return (f"{SCHEME}model={quote(model)};manufacturer={quote(manufacturer)};serial={quote(serial)};"
            f"token={quote(label)}")


def key_uri(token: str, key_id: bytes, label: str, key_type: str = "private") -> str:
    """A key's URI: its token's (:func:`token_uri`), then id (every byte encoded), object and type."""
    return f"{token};id={quote(key_id, every_byte=True)};object={quote(label)};type={key_type}"
