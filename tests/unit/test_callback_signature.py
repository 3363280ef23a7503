"""Signature checks against the official SDK's `RequestValidator` as the reference."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator

from monitor.callbacks import signature
from monitor.simulator import twilio_signature

TOKEN = "12345678901234567890123456789012"
URL = "https://monitor.example.com/twilio/conference-events?site=eu"
PARAMS = {
    "AccountSid": "AC" + "a" * 32,
    "ConferenceSid": "CF" + "b" * 32,
    "FriendlyName": "room ä & = ?",
    "SequenceNumber": "3",
    "StatusCallbackEvent": "conference-end",
    "Timestamp": "Tue, 01 Dec 2026 04:14:26 +0000",
}


def official(url: str = URL, params: dict[str, str] = PARAMS, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


def test_same_signature_as_the_sdk() -> None:
    assert signature.compute(URL, PARAMS.items(), TOKEN) == official()
    assert twilio_signature(URL, PARAMS, TOKEN) == official()  # the simulator agrees too


def test_valid_signature_verifies() -> None:
    assert signature.verify(URL, PARAMS.items(), TOKEN, official())
    assert RequestValidator(TOKEN).validate(URL, PARAMS, official())


def test_wrong_token_is_refused() -> None:
    forged = official(token="0" * 32)
    assert not signature.verify(URL, PARAMS.items(), TOKEN, forged)


def test_tampered_parameter_is_refused() -> None:
    tampered = {**PARAMS, "StatusCallbackEvent": "conference-start"}
    assert not signature.verify(URL, tampered.items(), TOKEN, official())
    added = {**PARAMS, "Extra": "1"}
    assert not signature.verify(URL, added.items(), TOKEN, official())


@pytest.mark.parametrize(
    "other",
    [
        "https://monitor.example.com/twilio/conference-events",  # query dropped
        "http://monitor.example.com/twilio/conference-events?site=eu",  # scheme
        "https://evil.example.com/twilio/conference-events?site=eu",  # host
        "https://monitor.example.com/twilio/other?site=eu",  # path
    ],
)
def test_wrong_url_is_refused(other: str) -> None:
    assert not signature.verify(other, PARAMS.items(), TOKEN, official())


def test_default_port_is_tried_both_ways_like_the_sdk() -> None:
    with_port = "https://monitor.example.com:443/twilio/conference-events?site=eu"
    validator = RequestValidator(TOKEN)
    for signed, received in ((with_port, URL), (URL, with_port)):
        sig = official(url=signed)
        assert validator.validate(received, PARAMS, sig)
        assert signature.verify(received, PARAMS.items(), TOKEN, sig)
    odd = "https://monitor.example.com:8443/twilio/conference-events?site=eu"
    assert not signature.verify(odd, PARAMS.items(), TOKEN, official())


def test_missing_signature_or_token_never_verifies() -> None:
    assert not signature.verify(URL, PARAMS.items(), TOKEN, "")
    assert not signature.verify(URL, PARAMS.items(), "", official())


class MultiValues(dict[str, list[str]]):
    """A Django-style multi-value form, which the SDK reads with `getlist`."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def test_repeated_names_are_signed_as_the_sdk_does() -> None:
    pairs = [*PARAMS.items(), ("Tag", "b"), ("Tag", "a")]
    multi = MultiValues()
    for name, value in pairs:
        multi.setdefault(name, []).append(value)
    expected = RequestValidator(TOKEN).compute_signature(URL, multi)
    assert signature.compute(URL, pairs, TOKEN) == expected
