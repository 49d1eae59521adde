"""Webhook signatures: `X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Signature"
_SCHEME = "sha256="


def sign(secret: bytes, body: bytes) -> str:
    """The header value a provider sends for `body`."""
    return _SCHEME + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith(_SCHEME):
        return False
    return hmac.compare_digest(sign(secret, body), _SCHEME + header[len(_SCHEME) :].lower())
