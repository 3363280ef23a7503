"""Who may read history over HTTP: tokens on and off, loopback, cookies, and what stays open."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
import requests

from monitor.api.auth import token_digest
from monitor.config import Settings, load_settings
from tests.integration.test_history_api import TOKEN, running

PROBES = ["/api/v1/events", "/api/v1/nothing", "/api/v1/conferences/CF123", "/api/v1/openapi.json"]


def raw_get(base: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    resp = requests.get(base + path, headers=headers, timeout=10, allow_redirects=False)
    return resp.status_code, resp.content, dict(resp.headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Cookie": "cm_token=bm90LXRoZS10b2tlbi0wMTIzNDU2Nzg5"},
    ],
)
def test_without_a_valid_token_every_api_path_is_the_same_401(
    sqlite_url: str, headers: dict[str, str]
) -> None:
    with running(sqlite_url) as api:
        answers = {raw_get(api.base, path, headers)[:2] for path in PROBES}
        status, _, got = raw_get(api.base, PROBES[0], headers)
    assert answers == {(401, b'{"error":"unauthorized"}')}  # nothing tells one path from another
    assert got["WWW-Authenticate"].startswith("Bearer")


def test_the_token_opens_the_api_and_health_and_metrics_stay_open(sqlite_url: str) -> None:
    with running(sqlite_url) as api:
        assert api.get("/api/v1/events").status_code == 200
        assert api.get("/api/v1/openapi.json").json()["openapi"].startswith("3.")
        for path in ("/healthz", "/readyz", "/metrics"):
            assert requests.get(api.base + path, timeout=10).status_code == 200


def test_loopback_needs_no_token_only_when_allowed(sqlite_url: str) -> None:
    with running(sqlite_url) as api:
        assert api.get("/api/v1/events", token=None).status_code == 401
    with running(sqlite_url, CONFERENCE_MONITOR_API_ALLOW_LOOPBACK="true") as api:
        assert api.get("/api/v1/events", token=None).status_code == 200
        assert api.get("/ui/", token=None).status_code == 200


def test_a_disabled_api_is_not_served(sqlite_url: str) -> None:
    with running(sqlite_url, CONFERENCE_MONITOR_API_ENABLED="false") as api:
        assert api.get("/api/v1/events").status_code == 404
        assert api.get("/ui/").status_code == 404
        assert requests.get(api.base + "/healthz", timeout=10).status_code == 200


def test_tokens_from_a_file_and_a_reload_that_changes_them(sqlite_url: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"# ops\nsha256:{token_digest('second-token-abcdefgh')}\nthird-token-abcdefgh\n"
    )
    env = {
        "CONFERENCE_MONITOR_DATABASE_URL": sqlite_url,
        "CONFERENCE_MONITOR_API_TOKEN_FILE": str(tokens),
    }
    current: list[Settings] = [load_settings(None, env)]
    with running(sqlite_url, settings=lambda: current[0]) as api:
        assert api.get("/api/v1/events", token="second-token-abcdefgh").status_code == 200
        assert api.get("/api/v1/events", token="third-token-abcdefgh").status_code == 200
        assert api.get("/api/v1/events", token=TOKEN).status_code == 401
        tokens.write_text("fourth-token-abcdefgh\n")
        current[0] = load_settings(None, env)  # what a SIGHUP does
        assert api.get("/api/v1/events", token="second-token-abcdefgh").status_code == 401
        assert api.get("/api/v1/events", token="fourth-token-abcdefgh").status_code == 200
        current[0] = load_settings(None, {**env, "CONFERENCE_MONITOR_API_ENABLED": "false"})
        assert api.get("/api/v1/events", token="fourth-token-abcdefgh").status_code == 404
        assert api.get("/ui/", token="fourth-token-abcdefgh").status_code == 404


def test_the_web_view_signs_in_with_a_cookie(sqlite_url: str) -> None:
    with running(sqlite_url) as api:
        assert requests.get(api.base + "/ui/", timeout=10).status_code == 401
        wrong = requests.post(api.base + "/ui/login", data={"token": "nope"}, timeout=10)
        assert wrong.status_code == 401 and "not accepted" in wrong.text
        fields = {f"f{i}": "x" for i in range(9)}
        crowded = requests.post(api.base + "/ui/login", data=fields, timeout=10)
        assert crowded.status_code == 401
        session = requests.Session()
        login = session.post(
            api.base + "/ui/login", data={"token": TOKEN}, timeout=10, allow_redirects=False
        )
        assert login.status_code == 303 and login.headers["Location"] == "/ui/"
        cookie = login.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert session.get(api.base + "/ui/events", timeout=10).status_code == 200
        assert session.get(api.base + "/api/v1/events", timeout=10).status_code == 200
        session.post(api.base + "/ui/logout", timeout=10)
        assert session.get(api.base + "/ui/events", timeout=10).status_code == 401


def test_web_pages_forbid_scripts_and_framing(sqlite_url: str) -> None:
    with running(sqlite_url) as api:
        resp = api.get("/ui/events")
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert "frame-ancestors 'none'" in policy
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_a_login_body_over_the_cap_is_refused(sqlite_url: str) -> None:
    with running(sqlite_url) as api:
        host, port = api.base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/ui/login", body=b"token=" + b"a" * 10_000)
        assert conn.getresponse().status == 413
        conn.close()
