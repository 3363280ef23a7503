"""Standard Webhooks signing: our code, checked against the reference library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from monitor.notify.signing import decode_secret, headers_for, sign, verify

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = '{"type":"conference.ended","timestamp":"2024-05-01T12:00:00Z","data":{"x":"é"}}'


def test_decode_secret_returns_the_key() -> None:
    assert decode_secret(SECRET) == KEY


def test_decode_secret_accepts_unpadded_base64() -> None:
    assert decode_secret(SECRET.rstrip("=")) == KEY


@pytest.mark.parametrize(
    "secret",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_not base64!!",
        "whsec_",
        "whsec_abcde",  # impossible base64 length
        "",
    ],
)
def test_decode_secret_rejects_without_echoing(secret: str) -> None:
    with pytest.raises(ValueError) as raised:
        decode_secret(secret)
    body = secret.removeprefix("whsec_")
    if body:
        assert body not in str(raised.value)


def test_sign_matches_the_published_example() -> None:
    # The example from the Standard Webhooks reference test suite.
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("body", [BODY, BODY.encode()])
def test_sign_matches_the_reference_library(body: str | bytes) -> None:
    ours = sign(KEY, "evt_1", 1_700_000_000, body)
    theirs = Webhook(SECRET).sign("evt_1", datetime.fromtimestamp(1_700_000_000, UTC), BODY)
    assert ours == theirs


def test_headers_verify_with_the_reference_library() -> None:
    headers = headers_for(KEY, "evt_abc", int(time.time()), BODY)
    assert headers["webhook-id"] == "evt_abc"
    assert Webhook(SECRET).verify(BODY, headers)["data"]["x"] == "é"


def test_reference_library_rejects_a_changed_body_or_wrong_secret() -> None:
    headers = headers_for(KEY, "evt_abc", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace("ended", "started"), headers)
    other = "whsec_" + base64.b64encode(b"another key, same length, really").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_verify_accepts_its_own_headers_any_case() -> None:
    headers = headers_for(KEY, "evt_abc", 1_700_000_000, BODY)
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify(KEY, upper, BODY.encode(), now=1_700_000_010)


def test_verify_accepts_one_good_signature_among_several() -> None:
    headers = headers_for(KEY, "evt_abc", 1_700_000_000, BODY)
    stale = sign(b"old key", "evt_abc", 1_700_000_000, BODY)
    headers["webhook-signature"] = f"{stale} v2,xyz {headers['webhook-signature']}"
    assert verify(KEY, headers, BODY, now=1_700_000_000)


@pytest.mark.parametrize(
    ("change", "now"),
    [
        ({}, 1_700_000_000 + 301),  # too old
        ({}, 1_700_000_000 - 301),  # too new
        ({"webhook-id": "evt_other"}, 1_700_000_000),
        ({"webhook-timestamp": "1700000001"}, 1_700_000_000),
        ({"webhook-timestamp": "17e8"}, 1_700_000_000),
        ({"webhook-signature": ""}, 1_700_000_000),
        ({"webhook-signature": "v1,not-base64"}, 1_700_000_000),
        ({"webhook-id": ""}, 1_700_000_000),
    ],
)
def test_verify_rejects(change: dict[str, str], now: float) -> None:
    headers = {**headers_for(KEY, "evt_abc", 1_700_000_000, BODY), **change}
    assert not verify(KEY, headers, BODY, now=now)


def test_verify_rejects_a_changed_body_or_wrong_key() -> None:
    headers = headers_for(KEY, "evt_abc", 1_700_000_000, BODY)
    assert verify(KEY, headers, BODY, now=1_700_000_000)
    assert not verify(KEY, headers, BODY + " ", now=1_700_000_000)
    assert not verify(b"wrong", headers, BODY, now=1_700_000_000)
