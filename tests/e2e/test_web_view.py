"""The web view in a real headless Chromium (Debian's package, driven by Selenium).

Skips with the reason when chromium or chromedriver is missing, except under CI=true,
where .ci/run installs both and a missing browser is a failure.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from PIL import Image

from monitor.httpapi import HealthServer, Route
from monitor.metrics import Metrics
from monitor.web.pages import WebView
from monitor.web.timeline import COLOURS
from tests.historydata import add_conference, sid
from tests.integration.test_history_api import T0, TOKEN, Api, running, seed

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
HOSTILE = "<script>alert('x')</script> & \x1b[2J"


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    paths = _browser_paths()
    if paths is None:
        reason = (
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true: the web view tests must run")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cm-chromium-")
    options = Options()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("web")
    with running(f"sqlite:///{folder}/monitor.db") as api:
        seed(api.engine)
        add_conference(api.engine, 30, created=T0 + timedelta(hours=20), name=HOSTILE)
        yield api


@pytest.fixture
def signed_in(browser, site: Api):  # type: ignore[no-untyped-def]
    """The browser with the token's cookie, set through the login form as a person would."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(site.base + "/ui/login")
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    submit(browser, "form button")
    assert browser.current_url.endswith("/ui/")
    return browser


def submit(browser, selector: str) -> None:  # type: ignore[no-untyped-def]
    """Click a form's button and wait for the page it leads to."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    button = browser.find_element(By.CSS_SELECTOR, selector)
    button.click()

    def left_the_page(driver) -> bool:  # type: ignore[no-untyped-def]
        # Chromium reports a node of the old page either as stale or as "does not
        # belong to the document", depending on when it is asked: both mean gone.
        try:
            button.is_enabled()
        except WebDriverException:
            return driver.execute_script("return document.readyState") == "complete"
        return False

    WebDriverWait(browser, 10).until(left_the_page)


def colour_columns(png: bytes, colour: str) -> list[int]:
    """The x positions where a pixel of `colour` (#rrggbb, within a small tolerance) appears."""
    want = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    return [
        x
        for x in range(width)
        if any(
            all(abs(c - w) <= 6 for c, w in zip(pixels[x, y], want, strict=True))
            for y in range(0, height, 2)
        )
    ]


def test_signing_in_and_out(browser, site: Api) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(site.base + "/ui/events")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sign in"
    browser.find_element(By.NAME, "token").send_keys("not-the-token-at-all")
    submit(browser, "form button")
    assert "not accepted" in browser.page_source
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    submit(browser, "form button")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Active conferences now"


def test_active_conferences_now(signed_in, site: Api) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    signed_in.get(site.base + "/ui/")
    shown = {a.text for a in signed_in.find_elements(By.CSS_SELECTOR, "td a.sid")}
    assert shown == {sid(n) for n in (8, 9, 20, 21, 22, 30)}
    resources = signed_in.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources == []  # nothing fetched beyond the page itself: works offline


def test_recent_events_filtered_with_the_form(signed_in, site: Api) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    signed_in.get(site.base + "/ui/events")
    Select(signed_in.find_element(By.NAME, "type")).select_by_value("conference.ended")
    signed_in.find_element(By.NAME, "since").send_keys("2026-11-20T03:00:00Z")
    submit(signed_in, "form.filters button")
    rows = signed_in.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 5  # conferences 3..7 ended after 03:00
    assert all("conference.ended" in row.text for row in rows)
    assert "type=conference.ended" in signed_in.current_url


def test_conference_page_draws_the_timeline_to_scale(signed_in, site: Api) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    signed_in.get(site.base + f"/ui/conferences/{sid(3)}")
    page = signed_in.find_element(By.TAG_NAME, "main").text
    assert "conference-ended-via-api" in page and "CA" + f"{3:032x}" in page
    assert "lasted 13m" in page
    deliveries = signed_in.find_elements(
        By.XPATH, "//h2[text()='Deliveries']/following-sibling::table[1]//tbody/tr"
    )
    assert len(deliveries) == 2 and all("204" in row.text for row in deliveries)
    shot = signed_in.find_element(By.ID, "timeline").screenshot_as_png
    init = colour_columns(shot, COLOURS["init"])
    live = colour_columns(shot, COLOURS["in-progress"])
    assert init and live, "both phases must be drawn"
    assert max(init) <= min(live) + 2  # init comes first
    # 1 minute of init, 12 of in-progress: the bars' widths keep that ratio.
    ratio = len(live) / len(init)
    assert 9 <= ratio <= 15, ratio


def test_hostile_names_are_shown_as_text(signed_in, site: Api) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    signed_in.get(site.base + f"/ui/conferences/{sid(30)}")
    assert "<script>alert('x')</script>" in signed_in.find_element(By.TAG_NAME, "main").text
    assert signed_in.find_elements(By.TAG_NAME, "script") == []


def test_day_view_has_a_bar_per_conference_where_it_happened(signed_in, site: Api) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    signed_in.get(site.base + "/ui/day?date=2026-11-20")
    bars = signed_in.find_elements(By.CSS_SELECTOR, "svg.day-bar")
    assert len(bars) == 14  # 0..9, 20..22 and 30; the never-seen 50 has nothing to draw
    table = signed_in.find_element(By.CSS_SELECTOR, "table.day")
    shot = table.screenshot_as_png
    assert colour_columns(shot, COLOURS["in-progress"])
    first = bars[0]  # conference 0, 00:00 to 00:10: at the left edge
    third = bars[3]  # conference 3 starts at 03:00: an eighth of the way along
    rect = third.find_element(By.CSS_SELECTOR, "rect.phase")
    x = float(rect.get_attribute("x"))
    assert 120 <= x <= 130, x
    assert float(first.find_element(By.CSS_SELECTOR, "rect.phase").get_attribute("x")) < 2
    signed_in.get(signed_in.find_element(By.LINK_TEXT, "2026-11-21 →").get_attribute("href"))
    assert "2026-11-21" in signed_in.find_element(By.TAG_NAME, "h1").text


def next_link(html: str) -> str:
    if 'rel="next"' not in html:
        return ""
    return html.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]


def test_lists_page_with_an_older_link(tmp_path: Path) -> None:
    """Paging in the web view: a small page size, every conference once across pages."""
    with running(f"sqlite:///{tmp_path}/monitor.db") as api:
        for n in range(7):
            add_conference(api.engine, n, created=T0 + timedelta(minutes=n))
        server = HealthServer("127.0.0.1:0", Metrics(process_metrics=False), lambda: (True, ""))
        view = WebView(api.engine, lambda: api.settings.api, page_rows=3)
        server.add_route(Route("/ui/", view, prefix=True))
        server.start()
        try:
            base = f"http://127.0.0.1:{server.address[1]}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            link, seen = "/ui/conferences?label=", []
            while link:
                url = base + link.replace("&amp;", "&")
                html = requests.get(url, headers=headers, timeout=10).text
                found = [s for s in (sid(n) for n in range(7)) if f">{s}<" in html]
                seen += sorted(found, key=lambda s: html.index(f">{s}<"))
                link = next_link(html)
        finally:
            server.stop()
    assert seen == [sid(n) for n in range(6, -1, -1)]
