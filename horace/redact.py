"""Keeping secrets out of what Horace shows: URLs, log records, sink entries, /health.

One module, used everywhere a value leaves the process: a database URL keeps its host
and database but loses its password (in the authority or as a query parameter such as
``password``, ``sslpassword`` or ``sslkey``); values under secret-sounding keys become
``[REDACTED]`` at any depth, inside JSON text too; free text (an exception's message)
has any URL in it redacted the same way.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "[REDACTED]"
MASK = "***"
SECRET_KEYS = (
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "sslkey",
    "private_key",
    "cookie",
)
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_URL_WITH_USER = re.compile(r"://[^\s/@'\"<>]*@")  # (its password, if any, is in what comes before @)
# A key=value pair in free text (a query string in a path an error quotes, a setting); a
# value that is an authorization scheme and its credential ("Bearer abc") is one value.
_SCHEME = r"(?:(?i:bearer|basic|digest|token|negotiate)\s+)?"
_PAIR_IN_TEXT = re.compile(rf"([A-Za-z0-9_.-]+)=({_SCHEME}[^\s&;,'\"<>]+)")
# A header's name in free text ("Authorization: Bearer abc", "Cookie: a=1; b=2"; after
# another, "error: Authorization: ..."): its value is the rest of its line.
_HEADER_NAME_IN_TEXT = re.compile(r"([A-Za-z0-9_-]+):[ \t]*")
# What text that names a secret key holds, lower-cased, whatever the key's case and its "-" or
# " " for "_" (api_key: "key"); JSON text with an escape (\u0070assword) may name one too.
_ENDINGS = {key.rpartition("_")[2] for key in SECRET_KEYS}
_SECRET_NAME_PARTS = ("\\u", *sorted(e for e in _ENDINGS if not any(o != e and o in e for o in _ENDINGS)))


def token_count(key: Any, value: Any) -> bool:
    """Is this a count of tokens (``input_tokens: 12``, a conversation turn's field), which
    names no secret however much its key sounds like one?"""
    return (value is None or type(value) is int) and str(key).lower().endswith("tokens")


def secret_key(key: Any) -> bool:
    # "X-Api-Key", "api key" and "sslPassword" are spelled api_key and sslpassword too.
    if type(key) is str and len(key) <= 64:
        return _secret_name(key)  # the same few keys again and again: remembered
    return _is_secret(key)


def _is_secret(key: Any) -> bool:
    name = str(key).lower().replace("-", "_").replace(" ", "_")
    return any(s in name for s in SECRET_KEYS)


_secret_name = functools.lru_cache(maxsize=4096)(_is_secret)


def redact_url(url: str) -> str:
    """*url* without its secrets: the userinfo password and secret query parameters."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable as a URL: show nothing of it that could be secret
        return MASK
    netloc, query = parts.netloc, parts.query
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(secret_key(k) for k, _ in pairs):
            query = "&".join(f"{k}={MASK}" if secret_key(k) else f"{k}={v}" for k, v in pairs)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret: as given (urlunsplit would drop an empty authority)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """Free text with every URL in it redacted, and the value of every ``key=value``
    whose key names a secret (``?token=…`` in a path that is no URL)."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    if ":" in text:
        text = "\n".join(_header_masked(line) if ":" in line else line for line in text.split("\n"))
    if "=" in text:
        text = _PAIR_IN_TEXT.sub(_pair, text)
    return text


def _pair(match: re.Match[str]) -> str:
    key, value = match.groups()
    return f"{key}={MASK}" if secret_key(key) and value != MASK else match.group(0)


def _header_masked(line: str) -> str:
    """*line* with the value of the first header in it that names a secret masked."""
    body = line.rstrip("\r")
    for match in _HEADER_NAME_IN_TEXT.finditer(body):
        if secret_key(match.group(1)):
            value = body[match.end() :]
            if not value or value == MASK:
                return line
            return f"{body[: match.start()]}{match.group(1)}: {MASK}{line[len(body) :]}"
    return line


_SCALARS = frozenset({int, float, bool, type(None)})


def redact(value: Any) -> Any:
    """A JSON-shaped value with the values of secret keys replaced, at any depth."""
    kind = type(value)
    if kind is str:
        return _redact_string(value)
    if kind in _SCALARS:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {
            key: REDACTED if secret_key(key) and not token_count(key, inner) else redact(inner)
            for key, inner in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_string(value)
    return value


def redact_json_text(text: str) -> str:
    """JSON text (a conversation turn's content) with the values of secret keys replaced,
    at any depth and in JSON text inside it; given back as it is, unparsed, when it names
    no secret key (a scan of the text, far cheaper than parsing it)."""
    lowered = text.lower()
    if not any(part in lowered for part in _SECRET_NAME_PARTS) and not _URL_WITH_USER.search(text):
        return text
    return _redact_string(text)


def _redact_string(value: str) -> str:
    if value[:1] in ("{", "["):
        # JSON text (a conversation turn's content, a tool result's text): redacted inside.
        try:
            parsed = json.loads(value)
        except ValueError:
            return redact_text(value)
        redacted = redact(parsed)
        return json.dumps(redacted) if redacted != parsed else value
    return redact_text(value)
