"""Standard Webhooks signatures (https://www.standardwebhooks.com/), our own code.

A receiver checks `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
with the shared `whsec_` secret; the `standardwebhooks` library must accept what
`sign` produces. `verify` is the same check for our own receivers (demo, tests).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
# The reference libraries reject messages more than five minutes off either way.
DEFAULT_TOLERANCE_S = 300.0


def decode_secret(secret: str) -> bytes:
    """The HMAC key inside a `whsec_<base64>` secret; errors never repeat the value."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        # Unpadded base64 is common in the wild; the reference library pads too.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"webhook secret is not valid base64 after {SECRET_PREFIX!r}") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: str | bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` over `msg_id.timestamp.body` (body as UTF-8 bytes)."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    signed = f"{msg_id}.{int(timestamp)}.".encode() + payload
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def headers_for(key: bytes, msg_id: str, timestamp: int, body: str | bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: str | bytes,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether `headers` carry a valid, fresh signature of `body` (constant-time compare).

    Header names are matched case-insensitively; any one of several space-separated
    `v1,` signatures may match (key rotation). A timestamp outside `now ± tolerance_s`
    fails, so a captured request cannot be replayed later.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    if not msg_id or not stamp.isascii() or not stamp.isdigit():
        return False
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(key, msg_id, timestamp, body).encode("ascii")
    candidates = lowered.get("webhook-signature", "").split()
    # Compare every candidate so the time taken does not depend on which one matched.
    matches = [hmac.compare_digest(expected, c.encode("utf-8", "replace")) for c in candidates]
    return any(matches)
