"""Twilio's Conference API: the client, its errors and the payload parser."""

from monitor.twilio.client import DEFAULT_BASE_URL, ResponseHook, TwilioClient
from monitor.twilio.errors import (
    BadPayload,
    ConferenceNotFound,
    CredentialsRejected,
    RateLimited,
    RequestRejected,
    TransientError,
    TwilioError,
)
from monitor.twilio.payloads import (
    ConferencePage,
    PayloadError,
    format_rfc2822,
    parse_conference,
    parse_conference_page,
    parse_rfc2822,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "BadPayload",
    "ConferenceNotFound",
    "ConferencePage",
    "CredentialsRejected",
    "PayloadError",
    "RateLimited",
    "RequestRejected",
    "ResponseHook",
    "TransientError",
    "TwilioClient",
    "TwilioError",
    "format_rfc2822",
    "parse_conference",
    "parse_conference_page",
    "parse_rfc2822",
]
