"""A child process of ``make bench`` that imports session keys on the token, on a signal.

    bench_worker.py bare KEY COUNT            python-pkcs11 alone: C_UnwrapKey (OAEP) + read + destroy
    bench_worker.py tokencsp KEY COUNT THREADS  ExchangeKey.import_simpleblob(oaep=True) in THREADS threads

The token comes from the SoftHSM kit's environment (TOKENCSP_MODULE/TOKEN/PIN).
The worker prepares everything (login, blobs), prints "ready", waits for a line on
stdin, runs, and prints {"seconds": ...}: start-up is never timed, and several
workers can be released at once.  A child process, because python-pkcs11's own
C_Initialize(NULL) would leave SoftHSM without locks for tokencsp's threads, and
SoftHSM does not survive fork().
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable


def _blobs(public_der: bytes, count: int) -> list[bytes]:
    """``count`` OAEP (SHA-1) RSA ciphertexts of fresh AES-256 keys, big-endian as PKCS#11 wants them."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_der_public_key(public_der)
    assert isinstance(key, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return [key.encrypt(os.urandom(32), oaep) for _ in range(count)]


def bare(name: str, count: int) -> Callable[[], None]:
    import pkcs11
    from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass

    lib = pkcs11.lib(os.environ["TOKENCSP_MODULE"])
    session = lib.get_token(token_label=os.environ["TOKENCSP_TOKEN"]).open(user_pin=os.environ["TOKENCSP_PIN"])
    private = session.get_key(ObjectClass.PRIVATE_KEY, label=name)
    public = session.get_key(ObjectClass.PUBLIC_KEY, label=name)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.RSAPublicNumbers(int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
                                   int.from_bytes(public[Attribute.MODULUS], "big"))
    der = numbers.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    blobs = _blobs(der, count)
    template = {Attribute.TOKEN: False, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False}
    param = (Mechanism.SHA_1, MGF.SHA1, None)

    def run() -> None:
        for blob in blobs:
            key = private.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, blob,  # type: ignore[attr-defined]
                                     mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param, template=template)
            key[Attribute.VALUE]
            key.destroy()

    return run


def tokencsp(name: str, count: int, threads: int) -> Callable[[], None]:
    from tokencsp.provider import Provider
    from tokencsp.session import SessionKey

    provider = Provider.open()
    pair = provider.exchange_key(name)
    public = pair.public_blob()
    blobs = [SessionKey.generate("aes256").export_simpleblob(public, oaep=True) for _ in range(count)]
    batches = [blobs[i::threads] for i in range(threads)]
    pair.import_simpleblob(blobs[0], oaep=True)  # the per-thread session cache is warm in every real receiver

    def work(batch: list[bytes]) -> None:
        for blob in batch:
            pair.import_simpleblob(blob, oaep=True).wipe()

    def run() -> None:
        workers = [threading.Thread(target=work, args=(batch,)) for batch in batches]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return run


def main(argv: list[str]) -> int:
    mode, name, count = argv[0], argv[1], int(argv[2])
    run = bare(name, count) if mode == "bare" else tokencsp(name, count, int(argv[3]))
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    run()
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
