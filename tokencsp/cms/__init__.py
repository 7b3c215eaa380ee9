"""CMS (RFC 5652 EnvelopedData, RFC 5083/5084 AuthEnvelopedData) with the key on the token.

``open_stream`` decrypts ``openssl cms -encrypt`` output (DER/BER, PEM, S/MIME, ``-stream``) with
an exchange key's implicit-rejection import; ``seal_stream`` makes messages ``openssl cms
-decrypt`` opens.  docs/CMS.md says what is supported and what is not.
"""

from __future__ import annotations

from .opening import CMS_DECRYPT_FAILED, CmsInfo, open_stream
from .sealing import Recipient, seal_stream

__all__ = ["CMS_DECRYPT_FAILED", "CmsInfo", "Recipient", "open_stream", "seal_stream"]
