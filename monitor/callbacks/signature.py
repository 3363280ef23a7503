"""Twilio's request signature (`X-Twilio-Signature`), computed and checked. Pure.

base64(HMAC-SHA1(auth token, URL + every POST parameter's name and value,
sorted by name)), as Twilio documents it and `twilio.request_validator`
implements it: values of a repeated name are sorted too, and a URL is also
tried with its default port added or removed, since proxies differ on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def compute(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """The signature Twilio sends for a POST of `params` to `url`."""
    by_name: dict[str, set[str]] = {}
    for name, value in params:
        by_name.setdefault(name, set()).add(value)
    payload = url + "".join(
        name + value for name in sorted(by_name) for value in sorted(by_name[name])
    )
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify(url: str, params: Iterable[tuple[str, str]], auth_token: str, signature: str) -> bool:
    """Whether `signature` is Twilio's for this URL and parameters (constant-time compare)."""
    if not signature or not auth_token:
        return False
    pairs = list(params)
    given = signature.encode()
    ok = False
    for candidate in url_variants(url):
        # Every variant is compared, so the time taken says nothing about which matched.
        ok |= hmac.compare_digest(compute(candidate, pairs, auth_token).encode(), given)
    return ok


def url_variants(url: str) -> list[str]:
    """`url` as given, then with its scheme's default port removed or added."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return [url]
    if default is None or parts.hostname is None:
        return [url]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    auth = parts.netloc.rpartition("@")[0]
    prefix = auth + "@" if auth else ""
    if port is None:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
    elif port == default:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    else:
        return [url]
    return [url, other]
