"""Twilio JSON -> Conference: every documented example parses; malformed shapes are named."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from monitor.domain import Conference
from monitor.twilio import (
    ConferencePage,
    PayloadError,
    TwilioClient,
    format_rfc2822,
    parse_conference,
    parse_conference_page,
)
from tests.openapi import OPENAPI_PATH

FETCH_PATH = "/2010-04-01/Accounts/{AccountSid}/Conferences/{Sid}.json"
LIST_PATH = "/2010-04-01/Accounts/{AccountSid}/Conferences.json"
FIELDS = (
    "sid",
    "account_sid",
    "friendly_name",
    "status",
    "region",
    "reason_conference_ended",
    "call_sid_ending_conference",
    "date_created",
    "date_updated",
    "api_version",
    "uri",
    "subresource_uris",
)


def _response_examples(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    content = doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]
    return {name: ex["value"] for name, ex in content["examples"].items()}


def _collect() -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    doc = json.loads(OPENAPI_PATH.read_text())
    singles = [
        (f"{method}:{name}", value)
        for method in ("get", "post")
        for name, value in _response_examples(doc, FETCH_PATH, method).items()
    ]
    pages = list(_response_examples(doc, LIST_PATH, "get").items())
    singles += [
        (f"list:{name}[{i}]", item)
        for name, page in pages
        for i, item in enumerate(page["conferences"])
    ]
    return singles, pages


SINGLES, PAGES = _collect()


def test_the_document_has_examples_of_every_kind() -> None:
    names = [name for name, _ in SINGLES]
    assert any(n.startswith("get:") for n in names)
    assert any(n.startswith("post:") for n in names)
    assert any(n.startswith("list:") for n in names)
    assert len(PAGES) >= 2


@pytest.mark.parametrize(("name", "example"), SINGLES, ids=[n for n, _ in SINGLES])
def test_every_conference_example_parses(name: str, example: dict[str, Any]) -> None:
    conference = parse_conference(example)
    assert isinstance(conference, Conference)
    for field in ("sid", "account_sid", "friendly_name", "status", "region", "api_version", "uri"):
        assert getattr(conference, field) == example[field], field
    assert conference.reason_conference_ended == example["reason_conference_ended"]
    assert conference.call_sid_ending_conference == example["call_sid_ending_conference"]
    assert conference.subresource_uris == example["subresource_uris"]
    for field in ("date_created", "date_updated"):
        value = getattr(conference, field)
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert format_rfc2822(value) == example[field]
    assert conference.raw == example


@pytest.mark.parametrize(("name", "page"), PAGES, ids=[n for n, _ in PAGES])
def test_every_list_example_parses(name: str, page: dict[str, Any]) -> None:
    parsed = parse_conference_page(page)
    assert isinstance(parsed, ConferencePage)
    assert [c.sid for c in parsed.conferences] == [c["sid"] for c in page["conferences"]]
    assert parsed.next_page_uri == page["next_page_uri"]
    assert (parsed.page, parsed.page_size) == (page["page"], page["page_size"])


def test_dates_become_aware_utc() -> None:
    base = _valid()
    base["date_created"] = "Fri, 18 Feb 2011 21:26:50 +0200"
    conference = parse_conference(base)
    assert conference.date_created == datetime(2011, 2, 18, 19, 26, 50, tzinfo=UTC)
    assert conference.date_created is not None and conference.date_created.tzinfo == UTC


def test_every_field_but_sid_may_be_null() -> None:
    obj = {field: None for field in FIELDS} | {"sid": "CF" + "0" * 32}
    conference = parse_conference(obj)
    assert conference.sid == "CF" + "0" * 32
    assert all(getattr(conference, f) is None for f in FIELDS if f != "sid")


def test_unknown_fields_are_ignored_and_kept_in_raw() -> None:
    obj = _valid() | {"mixer_zone": "us1", "new_thing": {"a": [1, 2]}}
    conference = parse_conference(obj)
    assert conference.raw["new_thing"] == {"a": [1, 2]}
    assert conference.raw["mixer_zone"] == "us1"
    assert conference == parse_conference(_valid())


def test_unknown_status_and_region_are_kept() -> None:
    conference = parse_conference(_valid() | {"status": "paused", "region": "mars1"})
    assert (conference.status, conference.region) == ("paused", "mars1")


MALFORMED: list[tuple[str, object, str]] = [
    ("not an object", ["CF" + "a" * 32], "JSON object"),
    ("null", None, "JSON object"),
    ("missing sid", {"status": "init"}, "sid"),
    ("sid null", {"sid": None}, "sid"),
    ("sid bad pattern", {"sid": "CFxyz"}, "sid"),
    ("sid wrong prefix", {"sid": "CA" + "a" * 32}, "sid"),
    ("sid number", {"sid": 12}, "sid"),
    ("bad account_sid", {"account_sid": "AC123"}, "account_sid"),
    ("account_sid number", {"account_sid": 5}, "account_sid"),
    ("bad call sid", {"call_sid_ending_conference": "CF" + "a" * 32}, "call_sid_ending_conference"),
    ("unparseable date", {"date_created": "yesterday"}, "date_created"),
    ("date without zone", {"date_updated": "Fri, 18 Feb 2011 19:26:50 -0000"}, "date_updated"),
    ("date as number", {"date_created": 1298057210}, "date_created"),
    ("status as number", {"status": 2}, "status"),
    ("region as list", {"region": ["us1"]}, "region"),
    ("friendly_name as bool", {"friendly_name": True}, "friendly_name"),
    ("subresource_uris as list", {"subresource_uris": ["a"]}, "subresource_uris"),
    ("subresource_uris with number", {"subresource_uris": {"participants": 1}}, "subresource_uris"),
]


@pytest.mark.parametrize(("case", "change", "field"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_payloads_name_the_field(case: str, change: object, field: str) -> None:
    if isinstance(change, dict):
        obj: object = _valid() | change
        if case == "missing sid":
            assert isinstance(obj, dict)
            del obj["sid"]
    else:
        obj = change
    with pytest.raises(PayloadError) as caught:
        parse_conference(obj)
    assert field in str(caught.value)
    if field != "JSON object":
        assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


PAGE_MALFORMED: list[tuple[str, object, str]] = [
    ("not an object", "[]", "JSON object"),
    ("no conferences", {"next_page_uri": None}, "conferences"),
    ("conferences not a list", {"conferences": {}}, "conferences"),
    ("bad item", {"conferences": [{"sid": "CF" + "a" * 32}, {"sid": "bad"}]}, "conferences[1].sid"),
    ("next_page_uri number", {"conferences": [], "next_page_uri": 3}, "next_page_uri"),
    ("page as string", {"conferences": [], "page": "0"}, "page"),
    ("page_size as bool", {"conferences": [], "page_size": True}, "page_size"),
]


@pytest.mark.parametrize(
    ("case", "obj", "field"), PAGE_MALFORMED, ids=[m[0] for m in PAGE_MALFORMED]
)
def test_malformed_pages_name_the_field(case: str, obj: object, field: str) -> None:
    with pytest.raises(PayloadError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_conference_page(obj)


def test_format_rfc2822_converts_to_utc_and_refuses_naive() -> None:
    eastern = timezone(timedelta(hours=-5))
    assert format_rfc2822(datetime(2011, 2, 18, 14, 26, 50, tzinfo=eastern)) == (
        "Fri, 18 Feb 2011 19:26:50 +0000"
    )
    with pytest.raises(ValueError, match="naive"):
        format_rfc2822(datetime(2011, 2, 18, 19, 26, 50))


@pytest.mark.parametrize(
    ("edge", "region", "base_url", "expected"),
    [
        (None, None, None, "https://api.twilio.com"),
        ("dublin", "ie1", None, "https://api.dublin.ie1.twilio.com"),
        ("Sydney", "AU1", None, "https://api.sydney.au1.twilio.com"),
        ("dublin", "ie1", "http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        (None, None, "http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("", "", None, "https://api.twilio.com"),
    ],
)
def test_host_for(
    edge: str | None, region: str | None, base_url: str | None, expected: str
) -> None:
    assert TwilioClient.host_for(edge, region, base_url) == expected


@pytest.mark.parametrize(
    ("edge", "region", "base_url"),
    [
        (None, "ie1", None),  # the retired short form api.ie1.twilio.com
        ("dublin", None, None),
        ("dub lin", "ie1", None),
        ("dublin", "ie1.evil.com/", None),
        (None, None, "ftp://api.twilio.com"),
        (None, None, "https://api.twilio.com/2010-04-01"),
        (None, None, "https://user:secret@api.twilio.com"),
    ],
)
def test_host_for_refuses(edge: str | None, region: str | None, base_url: str | None) -> None:
    with pytest.raises(ValueError) as caught:
        TwilioClient.host_for(edge, region, base_url)
    assert "secret" not in str(caught.value)


def _valid() -> dict[str, Any]:
    single = dict(SINGLES[0][1])
    return copy.deepcopy(single)
