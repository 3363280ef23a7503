"""Twilio JSON -> Conference: every documented example parses; malformed shapes are named."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from monitor.domain import (
    DROPPED_FIELDS_KEY,
    MAX_DROPPED_NAMES,
    RAW_JSON_CAP_BYTES,
    Conference,
    fingerprint,
)
from monitor.twilio import (
    ConferencePage,
    PayloadError,
    TwilioClient,
    format_rfc2822,
    listed_sid,
    parse_conference,
    parse_conference_page,
    parse_listed,
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
        ("dublin", None, None, "https://api.dublin.us1.twilio.com"),  # the SDK's rule
        (None, "ie1", None, "https://api.dublin.ie1.twilio.com"),  # the newer SDKs' default edge
        (None, "AU1", None, "https://api.sydney.au1.twilio.com"),
        (None, "us1", None, "https://api.ashburn.us1.twilio.com"),
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
        (None, "de1", None),  # would be the retired short form api.de1.twilio.com
        (None, "ie1.evil.com", None),
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


# -- list items, parsed one by one ----------------------------------------------

ACCOUNT = "AC" + "a" * 32


def _item(sid: str, **changes: Any) -> dict[str, Any]:
    return _valid() | {"sid": sid, "account_sid": ACCOUNT} | changes


def test_a_page_keeps_items_raw_and_one_bad_item_fails_only_itself() -> None:
    good, bad, foreign = "CF" + "1" * 32, "CF" + "2" * 32, "CF" + "3" * 32
    items = [
        _item(good),
        _item(bad, date_created=12),
        _item(foreign, account_sid="AC" + "b" * 32),
        "not an object",
        _item("CF" + "4" * 32),
    ]
    page = parse_conference_page({"conferences": items, "next_page_uri": None}, ACCOUNT)
    assert page.items == (items[0], items[1], items[2], items[4])  # the very objects, in order
    assert page.items[0] is items[0] and page.dropped == 1
    conferences, rejected = page.parsed
    assert [c.sid for c in conferences] == [good, "CF" + "4" * 32]
    assert [(r.index, r.sid, r.error.field) for r in rejected] == [
        (1, bad, "date_created"),
        (2, foreign, "account_sid"),
    ]
    assert page.conferences == conferences


def test_listed_sid_only_for_well_formed_sids() -> None:
    sid = "CF" + "a" * 32
    assert listed_sid({"sid": sid, "date_created": 12}) == sid
    for item in ({"sid": sid + "\n"}, {"sid": "CFnope"}, {"sid": 5}, {}, [sid], None, sid):
        assert listed_sid(item) is None


def test_parse_listed_refuses_another_account_and_accepts_a_null_one() -> None:
    sid = "CF" + "a" * 32
    assert parse_listed(_item(sid), ACCOUNT).sid == sid
    assert parse_listed(_item(sid), ACCOUNT.upper().replace("AC", "AC", 1)).sid == sid
    assert parse_listed(_item(sid, account_sid=None), ACCOUNT).account_sid is None
    with pytest.raises(PayloadError, match="AC" + "b" * 32) as caught:
        parse_listed(_item(sid, account_sid="AC" + "b" * 32), ACCOUNT)
    assert caught.value.field == "account_sid"
    with pytest.raises(PayloadError) as caught:
        parse_listed(_item(sid, status=["in-progress"]), ACCOUNT)
    assert caught.value.field == "status"


@pytest.mark.parametrize("field", ["sid", "account_sid", "call_sid_ending_conference"])
def test_a_sid_with_a_trailing_newline_is_refused(field: str) -> None:
    obj = _valid() | {"call_sid_ending_conference": "CA" + "c" * 32}
    obj[field] = obj[field] + "\n"
    with pytest.raises(PayloadError) as caught:
        parse_conference(obj)
    assert caught.value.field == field


def test_the_fast_parse_equals_validated_construction() -> None:
    for name, example in SINGLES:
        fast = parse_conference(example)
        slow = Conference(
            raw=example,
            **{f: getattr(fast, f) for f in FIELDS},
        )
        assert fast == slow and fast.raw is example, name
        assert fast.content_hash == fingerprint(example) == slow.content_hash


def test_dict_and_str_subclasses_take_the_slow_path_and_still_parse() -> None:
    class Sub(dict):  # type: ignore[type-arg]
        pass

    class Text(str):
        pass

    obj = Sub(_valid())
    obj["friendly_name"] = Text(obj["friendly_name"])
    assert parse_conference(obj) == parse_conference(_valid())


# -- what a snapshot stores ------------------------------------------------------


def test_raw_json_is_the_object_as_received_under_the_cap() -> None:
    obj = _valid() | {"mixer_zone": "us1", "new_thing": {"a": [1, 2]}}
    assert json.loads(parse_conference(obj).raw_json()) == obj


def test_raw_json_drops_unknown_fields_past_the_cap_but_the_hash_covers_them() -> None:
    bulky = {f"extra_{i:03d}": "x" * 200 for i in range(100)}
    obj = _valid() | bulky
    conference = parse_conference(obj)
    stored = json.loads(conference.raw_json())
    assert len(conference.raw_json().encode()) < RAW_JSON_CAP_BYTES
    marker = stored.pop(DROPPED_FIELDS_KEY)
    assert stored == _valid()  # the documented fields, exactly as received
    assert marker["count"] == 100 and marker["bytes"] > RAW_JSON_CAP_BYTES
    assert marker["names"] == sorted(bulky)[:MAX_DROPPED_NAMES]
    assert conference.content_hash == fingerprint(obj) != fingerprint(_valid())


def test_raw_json_marker_names_are_bounded() -> None:
    obj = _valid() | {"n" * 500: "x" * RAW_JSON_CAP_BYTES}
    marker = json.loads(parse_conference(obj).raw_json())[DROPPED_FIELDS_KEY]
    assert marker["names"] == ["n" * 64]
