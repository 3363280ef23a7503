"""Who may read history: bearer tokens checked against sha256 digests, loopback by choice.

Tokens are kept as digests only (config holds `sha256:<hex>`, token files may
hold either), so a leaked config does not leak access. A request is checked
against every digest in constant time; a refusal never says why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie

SHA256_PREFIX = "sha256:"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE_BYTES = 1 << 20
COOKIE_NAME = "cm_token"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_token_lines(text: str) -> tuple[set[str], list[tuple[int, str]]]:
    """Digests from a token file: one `sha256:<hex>` or raw token a line, `#` comments.

    Returns (digests, [(line number, problem)]); a problem never quotes the line.
    """
    digests: set[str] = set()
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith(SHA256_PREFIX):
            digest = line[len(SHA256_PREFIX) :].strip().lower()
            if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                digests.add(digest)
            else:
                problems.append((number, "sha256: must be followed by 64 hex digits"))
        elif len(line) < MIN_TOKEN_CHARS or any(c.isspace() for c in line):
            problems.append(
                (number, f"a token must be at least {MIN_TOKEN_CHARS} characters, no spaces")
            )
        else:
            digests.add(token_digest(line))
    return digests, problems


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def presented_token(authorization: str | None, cookie: str | None) -> str | None:
    """The bearer token from `Authorization: Bearer ...`, else from the web view's cookie."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    if cookie:
        try:
            jar = SimpleCookie(cookie)
        except CookieError:
            return None
        morsel = jar.get(COOKIE_NAME)
        return cookie_token(morsel.value) if morsel and morsel.value else None
    return None


def cookie_value(token: str) -> str:
    """The web view's cookie holds the token base64url-encoded: any token is cookie-safe."""
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def cookie_token(value: str) -> str | None:
    try:
        padded = value + "=" * (-len(value) % 4)
        token = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    return token or None


def token_accepted(token: str | None, digests: Iterable[str]) -> bool:
    """True if the token's digest is one of `digests`; compares with every one, in constant time."""
    if not token or len(token) > 4096:
        return False
    presented = token_digest(token).encode()
    accepted = False
    for digest in digests:
        accepted |= hmac.compare_digest(presented, digest.encode())
    return accepted


def allowed(
    client: str,
    authorization: str | None,
    cookie: str | None,
    digests: Iterable[str],
    *,
    allow_loopback: bool,
) -> bool:
    if allow_loopback and is_loopback(client):
        return True
    return token_accepted(presented_token(authorization, cookie), digests)
