"""The one place where secrets are taken out of text.

Every artifact (terminal, HTML, JSON, exception text) goes through ``Scrubber.scrub``;
URLs are shown as ``host:port/database`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, unquote, urlsplit

# scheme://[userinfo@]host[:port][/path][?query] as it appears inside free text.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")
MASK = "***"


def mask_url(url: str) -> str:
    """``postgresql+psycopg://u:p@db.internal:5432/ledger?x=y`` -> ``db.internal:5432/ledger``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not host and not parts.path:
        return MASK
    location = f"{host}:{port}" if port else host
    database = parts.path.lstrip("/")
    return f"{location}/{database}" if database else location


def secret_forms(secret: str) -> set[str]:
    """The spellings under which a secret may show up: raw, URL-quoted, URL-unquoted."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), unquote(secret)}
    return {form for form in forms if len(form) >= 3}


@dataclass
class Scrubber:
    """Masks URLs and every registered secret in any text handed to it."""

    secrets: set[str] = field(default_factory=set)

    def register(self, secret: str | None) -> None:
        if secret:
            self.secrets |= secret_forms(secret)

    def register_url(self, url: str | None) -> None:
        if not url:
            return
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        self.register(password)

    def scrub(self, text: str) -> str:
        # Secrets first (longest first, so no fragment of one survives), then any URL that
        # still carries user info is cut down to host:port/database.
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return _URL_IN_TEXT.sub(lambda match: _mask_if_userinfo(match.group(0)), text)


def _mask_if_userinfo(url: str) -> str:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return MASK
    return mask_url(url) if "@" in netloc else url
