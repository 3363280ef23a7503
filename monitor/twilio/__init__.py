"""Twilio's Conference API: the client, its errors and the payload parser."""

from monitor.twilio.client import DEFAULT_BASE_URL, ResponseHook, TwilioClient
from monitor.twilio.errors import (
    BadPayload,
    ConferenceNotFound,
    CredentialsRejected,
    DeadlineExceeded,
    PagingError,
    RateLimited,
    RequestRejected,
    ResourceMismatch,
    ResponseTooLarge,
    TransientError,
    TwilioError,
)
from monitor.twilio.hosts import api_origin
from monitor.twilio.payloads import (
    ConferencePage,
    PayloadError,
    Rejected,
    format_rfc2822,
    listed_sid,
    parse_conference,
    parse_conference_page,
    parse_listed,
    parse_rfc2822,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "BadPayload",
    "ConferenceNotFound",
    "ConferencePage",
    "CredentialsRejected",
    "DeadlineExceeded",
    "PagingError",
    "PayloadError",
    "RateLimited",
    "Rejected",
    "RequestRejected",
    "ResourceMismatch",
    "ResponseHook",
    "ResponseTooLarge",
    "TransientError",
    "TwilioClient",
    "TwilioError",
    "api_origin",
    "format_rfc2822",
    "listed_sid",
    "parse_conference",
    "parse_conference_page",
    "parse_listed",
    "parse_rfc2822",
]
