"""CryptoAPI key BLOBs as frozen dataclasses, byte-exact in both directions.

Pure: no I/O, no token.  Layouts follow the Microsoft Enhanced RSA and AES
provider (rsaenh); ``docs/BLOBS.md`` draws them.  Every integer on the wire is
little-endian -- including RSA moduli, private components and the RSA
ciphertext inside a SIMPLEBLOB -- while the dataclasses hold Python ints and
the ciphertext in PKCS#1 (big-endian) order, so callers never reverse bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.asymmetric import rsa

from ._wire import Buffer, check_empty, from_le, le_bytes, reraise_as, take, uint_le, view
from .errors import BlobFormatError, InvalidKeyError, UnsupportedAlgorithm
from .keyinfo import RsaPrivateParts

__all__ = [
    "SESSION_KEY_LENGTHS",
    "AlgId",
    "BlobType",
    "KeyBlob",
    "PlaintextKeyBlob",
    "PrivateKeyBlob",
    "PublicKeyBlob",
    "SimpleBlob",
    "parse",
    "simpleblob_header",
]

CUR_BLOB_VERSION = 2
_HEADER = struct.Struct("<BBHI")  # bType, bVersion, reserved, aiKeyAlg
BLOBHEADER_LEN = _HEADER.size
_RSAPUBKEY = struct.Struct("<4sII")  # magic, bitlen, pubexp
_MAGIC_PUBLIC = b"RSA1"
_MAGIC_PRIVATE = b"RSA2"

# rsaenh caps RSA at 16384 bits; a cap also keeps a hostile bitlen from
# asking us to slice gigabytes.
MAX_RSA_BITS = 16384
MIN_RSA_BITS = 384


class BlobType(IntEnum):
    SIMPLEBLOB = 0x1
    PUBLICKEYBLOB = 0x6
    PRIVATEKEYBLOB = 0x7
    PLAINTEXTKEYBLOB = 0x8


class AlgId(IntEnum):
    CALG_RSA_SIGN = 0x2400
    CALG_RSA_KEYX = 0xA400
    CALG_3DES = 0x6603
    CALG_3DES_112 = 0x6609
    CALG_AES_128 = 0x660E
    CALG_AES_192 = 0x660F
    CALG_AES_256 = 0x6610


RSA_ALGS = frozenset({AlgId.CALG_RSA_KEYX, AlgId.CALG_RSA_SIGN})

# Key lengths as rsaenh exports them (3DES keys include their parity bits).
SESSION_KEY_LENGTHS: dict[AlgId, int] = {
    AlgId.CALG_AES_128: 16,
    AlgId.CALG_AES_192: 24,
    AlgId.CALG_AES_256: 32,
    AlgId.CALG_3DES: 24,
    AlgId.CALG_3DES_112: 16,
}


def _alg(value: int, allowed: Collection[AlgId], what: str) -> AlgId:
    try:
        alg = AlgId(value)
    except ValueError:
        raise UnsupportedAlgorithm(f"{what}: unknown ALG_ID 0x{value:04x}") from None
    if alg not in allowed:
        raise BlobFormatError(f"{what}: ALG_ID {alg.name} (0x{value:04x}) is not allowed here")
    return alg


def _split_header(data: Buffer, expected: BlobType | None) -> tuple[BlobType, int, memoryview]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("a key BLOB must be bytes")
    with reraise_as(BlobFormatError):
        header, rest = take(view(data), BLOBHEADER_LEN, "BLOBHEADER")
    btype, version, reserved, alg_id = _HEADER.unpack(header)
    try:
        blob_type = BlobType(btype)
    except ValueError:
        raise BlobFormatError(f"unknown bType 0x{btype:02x}") from None
    if expected is not None and blob_type is not expected:
        raise BlobFormatError(f"bType is {blob_type.name}, expected {expected.name}")
    if version != CUR_BLOB_VERSION:
        raise BlobFormatError(f"bVersion is {version}, expected {CUR_BLOB_VERSION}")
    if reserved != 0:
        raise BlobFormatError(f"reserved field is 0x{reserved:04x}, expected 0")
    return blob_type, alg_id, rest


def simpleblob_header(data: Buffer) -> tuple[int, memoryview]:
    """A SIMPLEBLOB's BLOBHEADER, checked as :meth:`SimpleBlob.from_bytes` checks it (bType, bVersion 2,
    reserved 0; the same ``BlobFormatError``s): its aiKeyAlg, not judged here, and the bytes after the
    header (wrapping ALG_ID, ciphertext).  The legacy RC4/RC2/DES reader (tokencsp.legacy) shares it."""
    _, alg_id, rest = _split_header(data, BlobType.SIMPLEBLOB)
    return alg_id, rest


def _header(blob_type: BlobType, alg_id: int) -> bytes:
    return _HEADER.pack(blob_type, CUR_BLOB_VERSION, 0, alg_id)


def _rsa_bitlen(bitlen: int) -> None:
    if not MIN_RSA_BITS <= bitlen <= MAX_RSA_BITS or bitlen % 16:
        raise BlobFormatError(
            f"RSA bitlen {bitlen} unsupported (multiple of 16 from {MIN_RSA_BITS} to {MAX_RSA_BITS})"
        )


def _exact(rest: memoryview, size: int, what: str) -> memoryview:
    """The last field: exactly ``size`` bytes must remain."""
    with reraise_as(BlobFormatError):
        field, rest = take(rest, size, what)
        check_empty(rest, what)
    return field


def _rsapubkey(rest: memoryview, magic: bytes) -> tuple[int, int, memoryview]:
    with reraise_as(BlobFormatError):
        fields, rest = take(rest, _RSAPUBKEY.size, "RSAPUBKEY")
    got_magic, bitlen, pubexp = _RSAPUBKEY.unpack(fields)
    if got_magic != magic:
        raise BlobFormatError(f"RSAPUBKEY magic is {bytes(got_magic)!r}, expected {magic!r}")
    _rsa_bitlen(bitlen)
    if pubexp < 3 or pubexp % 2 == 0:
        raise BlobFormatError(f"RSA public exponent {pubexp} is not an odd number >= 3")
    return bitlen, pubexp, rest


@dataclass(frozen=True)
class PublicKeyBlob:
    """PUBLICKEYBLOB (bType 6): an RSA public key, magic "RSA1"."""

    modulus: int
    public_exponent: int = 65537
    alg_id: AlgId = AlgId.CALG_RSA_KEYX

    def __post_init__(self) -> None:
        if self.alg_id not in RSA_ALGS:
            raise InvalidKeyError(f"a public key blob needs an RSA ALG_ID, not {self.alg_id!r}")
        if self.modulus < 0:
            raise InvalidKeyError("RSA modulus must be positive")
        _rsa_bitlen(self.bitlen)
        if not 3 <= self.public_exponent < 2**32 or self.public_exponent % 2 == 0:
            raise InvalidKeyError("RSA public exponent must be odd, >= 3 and fit in 32 bits")

    @property
    def bitlen(self) -> int:
        return self.modulus.bit_length()

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKeyBlob:
        _, alg_id, rest = _split_header(data, BlobType.PUBLICKEYBLOB)
        alg = _alg(alg_id, RSA_ALGS, "PUBLICKEYBLOB")
        bitlen, pubexp, rest = _rsapubkey(rest, _MAGIC_PUBLIC)
        modulus = from_le(_exact(rest, bitlen // 8, "modulus"))
        if modulus.bit_length() != bitlen:
            raise BlobFormatError(f"bitlen says {bitlen} but the modulus has {modulus.bit_length()} bits")
        return cls(modulus=modulus, public_exponent=pubexp, alg_id=alg)

    def to_bytes(self) -> bytes:
        return (
            _header(BlobType.PUBLICKEYBLOB, self.alg_id)
            + _RSAPUBKEY.pack(_MAGIC_PUBLIC, self.bitlen, self.public_exponent)
            + le_bytes(self.modulus, self.bitlen // 8)
        )

    @classmethod
    def from_public_key(cls, key: rsa.RSAPublicKey, alg_id: AlgId = AlgId.CALG_RSA_KEYX) -> PublicKeyBlob:
        numbers = key.public_numbers()
        return cls(modulus=numbers.n, public_exponent=numbers.e, alg_id=alg_id)

    def to_public_key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(self.public_exponent, self.modulus).public_key()


@dataclass(frozen=True, repr=False)
class PrivateKeyBlob:
    """PRIVATEKEYBLOB (bType 7): an RSA private key with CRT parts, magic "RSA2"."""

    modulus: int
    public_exponent: int
    prime1: int
    prime2: int
    exponent1: int
    exponent2: int
    coefficient: int
    private_exponent: int
    alg_id: AlgId = AlgId.CALG_RSA_KEYX

    def __post_init__(self) -> None:
        if self.alg_id not in RSA_ALGS:
            raise InvalidKeyError(f"a private key blob needs an RSA ALG_ID, not {self.alg_id!r}")
        _rsa_bitlen(self.bitlen)
        problem = self._inconsistency()
        if problem:
            raise InvalidKeyError(f"inconsistent RSA private key: {problem}")

    def __repr__(self) -> str:  # never print private components
        return f"PrivateKeyBlob(alg_id={self.alg_id.name}, bitlen={self.bitlen})"

    @property
    def bitlen(self) -> int:
        return self.modulus.bit_length()

    @property
    def parts(self) -> RsaPrivateParts:
        """The key in the one shape the token layer takes (:class:`tokencsp.keyinfo.RsaPrivateParts`)."""
        return RsaPrivateParts(self.modulus, self.public_exponent, self.private_exponent, self.prime1,
                               self.prime2, self.exponent1, self.exponent2, self.coefficient)

    @classmethod
    def from_parts(cls, parts: RsaPrivateParts, alg_id: AlgId = AlgId.CALG_RSA_KEYX) -> PrivateKeyBlob:
        return cls(parts.n, parts.e, parts.p, parts.q, parts.dp, parts.dq, parts.qinv, parts.d, alg_id=alg_id)

    def _inconsistency(self) -> str | None:
        half = self.bitlen // 16
        for name, value, limit in (
            ("prime1", self.prime1, half),
            ("prime2", self.prime2, half),
            ("exponent1", self.exponent1, half),
            ("exponent2", self.exponent2, half),
            ("coefficient", self.coefficient, half),
            ("privateExponent", self.private_exponent, self.bitlen // 8),
        ):
            if value <= 0 or value.bit_length() > limit * 8:
                return f"{name} does not fit in {limit} bytes"
        return self.parts.problem()

    @classmethod
    def from_bytes(cls, data: bytes) -> PrivateKeyBlob:
        _, alg_id, rest = _split_header(data, BlobType.PRIVATEKEYBLOB)
        alg = _alg(alg_id, RSA_ALGS, "PRIVATEKEYBLOB")
        bitlen, pubexp, rest = _rsapubkey(rest, _MAGIC_PRIVATE)
        full, half = bitlen // 8, bitlen // 16
        sizes = (full, half, half, half, half, half, full)
        rest = _exact(rest, sum(sizes), "private key components")
        values = []
        for size in sizes:
            field, rest = take(rest, size, "private key component")
            values.append(from_le(field))
        n, p, q, dp, dq, iq, d = values
        if n.bit_length() != bitlen:
            raise BlobFormatError(f"bitlen says {bitlen} but the modulus has {n.bit_length()} bits")
        try:
            return cls(n, pubexp, p, q, dp, dq, iq, d, alg_id=alg)
        except InvalidKeyError as exc:
            raise BlobFormatError(str(exc)) from None

    def to_bytes(self) -> bytes:
        full, half = self.bitlen // 8, self.bitlen // 16
        return b"".join(
            (
                _header(BlobType.PRIVATEKEYBLOB, self.alg_id),
                _RSAPUBKEY.pack(_MAGIC_PRIVATE, self.bitlen, self.public_exponent),
                le_bytes(self.modulus, full),
                le_bytes(self.prime1, half),
                le_bytes(self.prime2, half),
                le_bytes(self.exponent1, half),
                le_bytes(self.exponent2, half),
                le_bytes(self.coefficient, half),
                le_bytes(self.private_exponent, full),
            )
        )

    @classmethod
    def from_private_key(cls, key: rsa.RSAPrivateKey, alg_id: AlgId = AlgId.CALG_RSA_KEYX) -> PrivateKeyBlob:
        return cls.from_parts(RsaPrivateParts.from_private_key(key), alg_id)

    def to_private_key(self) -> rsa.RSAPrivateKey:
        return self.parts.to_private_key()

    def public_blob(self) -> PublicKeyBlob:
        return PublicKeyBlob(self.modulus, self.public_exponent, self.alg_id)


@dataclass(frozen=True)
class SimpleBlob:
    """SIMPLEBLOB (bType 1): a session key encrypted to an RSA exchange key.

    ``encrypted_key`` is the RSA ciphertext in PKCS#1 (big-endian) order; the
    wire carries it byte-reversed.  Its length is the recipient's modulus
    length, which the blob itself does not state.
    """

    alg_id: AlgId
    encrypted_key: bytes
    wrap_alg_id: AlgId = AlgId.CALG_RSA_KEYX

    def __post_init__(self) -> None:
        if self.alg_id not in SESSION_KEY_LENGTHS:
            raise UnsupportedAlgorithm(f"SIMPLEBLOB session key algorithm {self.alg_id!r} is not supported")
        if self.wrap_alg_id is not AlgId.CALG_RSA_KEYX:
            raise InvalidKeyError("SIMPLEBLOBs are wrapped with CALG_RSA_KEYX")
        # Same rule as from_bytes(): an even length (bitlen is a multiple of 16).
        if not MIN_RSA_BITS // 8 <= len(self.encrypted_key) <= MAX_RSA_BITS // 8 or len(self.encrypted_key) % 2:
            raise InvalidKeyError(f"encrypted key of {len(self.encrypted_key)} bytes is no RSA ciphertext")

    @classmethod
    def from_bytes(cls, data: bytes) -> SimpleBlob:
        alg_id, rest = simpleblob_header(data)
        alg = _alg(alg_id, SESSION_KEY_LENGTHS, "SIMPLEBLOB")
        with reraise_as(BlobFormatError):
            wrap, rest = uint_le(rest, 4, "SIMPLEBLOB wrapping ALG_ID")
        wrap_alg = _alg(wrap, frozenset({AlgId.CALG_RSA_KEYX}), "SIMPLEBLOB wrapping algorithm")
        ciphertext = bytes(rest)
        if not MIN_RSA_BITS // 8 <= len(ciphertext) <= MAX_RSA_BITS // 8 or len(ciphertext) % 2:
            raise BlobFormatError(f"SIMPLEBLOB ciphertext of {len(ciphertext)} bytes fits no RSA modulus")
        return cls(alg_id=alg, encrypted_key=ciphertext[::-1], wrap_alg_id=wrap_alg)

    def to_bytes(self) -> bytes:
        return (
            _header(BlobType.SIMPLEBLOB, self.alg_id)
            + le_bytes(self.wrap_alg_id, 4)
            + self.encrypted_key[::-1]
        )


@dataclass(frozen=True, repr=False)
class PlaintextKeyBlob:
    """PLAINTEXTKEYBLOB (bType 8): a session key in the clear, length-prefixed."""

    alg_id: AlgId
    key: bytes

    def __post_init__(self) -> None:
        expected = SESSION_KEY_LENGTHS.get(self.alg_id)
        if expected is None:
            raise UnsupportedAlgorithm(f"PLAINTEXTKEYBLOB algorithm {self.alg_id!r} is not supported")
        if len(self.key) != expected:
            raise InvalidKeyError(f"{self.alg_id.name} keys are {expected} bytes, got {len(self.key)}")

    def __repr__(self) -> str:
        return f"PlaintextKeyBlob(alg_id={self.alg_id.name}, key=<{len(self.key)} bytes>)"

    @classmethod
    def from_bytes(cls, data: bytes) -> PlaintextKeyBlob:
        _, alg_id, rest = _split_header(data, BlobType.PLAINTEXTKEYBLOB)
        alg = _alg(alg_id, SESSION_KEY_LENGTHS, "PLAINTEXTKEYBLOB")
        with reraise_as(BlobFormatError):
            size, rest = uint_le(rest, 4, "PLAINTEXTKEYBLOB dwKeySize")
        if size != SESSION_KEY_LENGTHS[alg]:
            raise BlobFormatError(f"dwKeySize {size} is wrong for {alg.name} ({SESSION_KEY_LENGTHS[alg]} bytes)")
        return cls(alg_id=alg, key=bytes(_exact(rest, size, "key")))

    def to_bytes(self) -> bytes:
        return _header(BlobType.PLAINTEXTKEYBLOB, self.alg_id) + le_bytes(len(self.key), 4) + self.key


KeyBlob = PublicKeyBlob | PrivateKeyBlob | SimpleBlob | PlaintextKeyBlob

_BY_TYPE: dict[BlobType, type[PublicKeyBlob] | type[PrivateKeyBlob] | type[SimpleBlob] | type[PlaintextKeyBlob]] = {
    BlobType.PUBLICKEYBLOB: PublicKeyBlob,
    BlobType.PRIVATEKEYBLOB: PrivateKeyBlob,
    BlobType.SIMPLEBLOB: SimpleBlob,
    BlobType.PLAINTEXTKEYBLOB: PlaintextKeyBlob,
}


def parse(data: bytes) -> KeyBlob:
    """Parse any supported key BLOB, dispatching on bType."""
    blob_type, _, _ = _split_header(data, None)
    return _BY_TYPE[blob_type].from_bytes(data)
