"""The one place where secrets are taken out of text.

Every artifact (terminal, HTML, JSON, junit XML, debug log, exception text) goes through
``Scrubber.scrub``; URLs are shown as ``host:port/database`` only. Secrets are also held in
types that never show them (SQLAlchemy's ``URL``, ``repr=False`` fields): the scrubber is the
second line, for text that libraries build from the secret on their own.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, unquote, urlsplit

from sqlalchemy.engine import URL

# scheme://[userinfo@]host[:port][/path][?query] as it appears inside free text.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")
MASK = "***"
MIN_SECRET = 3  # shorter "secrets" would mask ordinary text
MIN_PREFIX = 6  # the shortest head (anywhere) or tail (after a truncation mark) masked
_CUT = re.compile(r"\.\.\.|…")  # how pytest and reprlib cut long reprs


def mask_url(url: str | URL) -> str:
    """``postgresql+psycopg://u:p@db.internal:5432/ledger?x=y`` -> ``db.internal:5432/ledger``."""
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=True)
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


def _repr_inner(text: str) -> str:
    return repr(text)[1:-1]


def _repr_double(text: str) -> str:
    # repr() picks double quotes for a text holding ' but no ": then only \ is escaped.
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _libpq(text: str) -> str:
    # conninfo values: password='it\'s' with \ and ' backslash-escaped.
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _json_inner(text: str) -> str:
    return json.dumps(text)[1:-1]


def _json_ascii(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _html_quote(text: str) -> str:
    return html.escape(text, quote=True)


def _xml(text: str) -> str:
    # ElementTree (junit XML): &, <, > in text, and " in attributes.
    return html.escape(text, quote=False).replace('"', "&quot;")


# Each is one way a secret is re-spelled on its way into an artifact; they nest (a repr inside
# JSON inside an HTML attribute), so the forms are every chain of up to three.
_ENCODINGS: tuple[Callable[[str], str], ...] = (
    lambda s: quote(s, safe=""),
    quote,
    quote_plus,
    unquote,
    _repr_inner,
    _repr_double,
    _libpq,
    _json_inner,
    _json_ascii,
    _html_quote,
    _xml,
)
_DEPTH = 3


def secret_forms(secret: str) -> set[str]:
    """Every spelling under which ``secret`` may show up: raw, URL-quoted and -unquoted, the
    repr, libpq-escaped, JSON-, HTML- and XML-escaped, and these nested up to three deep."""
    forms, layer = {secret}, {secret}
    for _ in range(_DEPTH):
        layer = {encode(form) for form in layer for encode in _ENCODINGS} - forms
        forms |= layer
    return {form for form in forms if len(form) >= MIN_SECRET}


def _tail_length(text: str, end: int, forms: Iterable[str]) -> int:
    """How many characters after a truncation mark ending at ``end`` are the tail of a form (0
    when fewer than MIN_PREFIX): what a repr cut from the front left of a secret (``...ss``).
    Heads need no mark: ``Scrubber._heads`` masks them wherever they stand."""
    tail = 0
    for form in forms:
        for n in range(min(len(form) - 1, len(text) - end), max(tail, MIN_PREFIX - 1), -1):
            if text.startswith(form[-n:], end):
                tail = n
                break
    return tail


def _common_prefix(text: str, start: int, form: str) -> int:
    n = 0
    while n < len(form) and start + n < len(text) and text[start + n] == form[n]:
        n += 1
    return n


@dataclass
class Scrubber:
    """Masks URLs and every registered secret in any text handed to it."""

    secrets: set[str] = field(default_factory=set, repr=False)  # a repr is no place for them
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False)
    _forms: set[str] = field(default_factory=set, init=False, repr=False)
    _head_pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def register(self, secret: str | None) -> None:
        if secret and secret not in self.secrets:
            self.secrets.add(secret)
            self._pattern = self._head_pattern = None

    def register_url(self, url: str | URL | None) -> None:
        if not url:
            return
        if isinstance(url, URL):
            self.register(url.password if isinstance(url.password, str) else None)
            return
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        self.register(password)
        if password:
            self.register(unquote(password))

    def scrub(self, text: str) -> str:
        # Secrets first, in one pass (longest form first, so no fragment of one survives), then
        # what truncated reprs left of them, then any URL that still carries user info is cut
        # down to host:port/database.
        if self.secrets:
            text = self._compiled().sub(MASK, text)
            text = self._heads(text)
            text = self._cut_tails(text)
        return _URL_IN_TEXT.sub(lambda match: _mask_if_userinfo(match.group(0)), text)

    def _compiled(self) -> re.Pattern[str]:
        if self._pattern is None:
            self._forms = set().union(*(secret_forms(s) for s in self.secrets))
            whole = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, whole)))
        return self._pattern

    def _heads(self, text: str) -> str:
        """Every run of text that starts like a form of a secret (its first MIN_PREFIX
        characters), masked as far as it follows that form: a secret cut anywhere
        (``repr(url)[:40]``, a column width, a log line) still starts like itself."""
        if self._head_pattern is None:
            self._compiled()
            heads = {form[:MIN_PREFIX] for form in self._forms if len(form) >= MIN_PREFIX}
            self._head_pattern = re.compile("|".join(map(re.escape, sorted(heads))) or "(?!)")
        pieces, done = [], 0
        for match in self._head_pattern.finditer(text):
            start = match.start()
            if start < done:
                continue
            end = max(start + _common_prefix(text, start, form) for form in self._forms)
            pieces += [text[done:start], MASK]
            done = end
        return "".join(pieces) + text[done:]

    def _cut_tails(self, text: str) -> str:
        pieces, done = [], 0
        for mark in _CUT.finditer(text):
            if mark.start() < done:
                continue
            tail = _tail_length(text, mark.end(), self._forms)
            if tail:
                pieces += [text[done : mark.end()], MASK]
                done = mark.end() + tail
        return "".join(pieces) + text[done:]


def _mask_if_userinfo(url: str) -> str:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return MASK
    return mask_url(url) if "@" in netloc else url
