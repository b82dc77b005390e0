"""``tracker.js`` in a real browser (Debian's chromium, headless, through Selenium).

A local test page carries the snippet; the browser navigates (page loads and
single-page navigation), submits a form, and the events reach Kafka through the
collector; the worker scores them and the visitor, now known by the e-mail address of
the form, crosses ``sales_ready``. Also: nothing before consent on a site that requires
it; retries with back-off when the collector says "later" (429); ``sendBeacon`` when the
page goes away. Screenshots are kept under ``tests/artifacts/``.

Selenium is given the driver and the browser explicitly, so Selenium Manager never runs
and nothing is downloaded. Without chromium these tests fail (``make setup`` installs it).
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from collector_support import KEY, CollectorProc, events_in, site, write_sites
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from support import ROOT, WorkerProc, read_topic

from scorestream.pipeline.routing import INPUT_TOPICS
from scorestream.settings import Settings
from scorestream.topics import TopicDecl

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "tests" / "artifacts"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,900",
)

# The snippet as the README shows it: a stub that queues calls until tracker.js is loaded.
SNIPPET = """<script>
!function(w){var s=w.scorestream=w.scorestream||{q:[]};["track","identify","consent","page"]
.forEach(function(m){s[m]=s[m]||function(){s.q.push([m,arguments])}})}(window);
</script>
<script async src="COLLECTOR/tracker.js?key=KEY"></script>"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>TITLE - Test Shop</title>
SNIPPET
<style>
body {font-family: sans-serif; margin: 2em auto; max-width: 46em; color: #222}
nav a {margin-right: 1em} form {margin-top: 2em; padding: 1em; border: 1px solid #ccc}
label {display: block; margin: .5em 0} input {margin-left: .5em}
</style></head>
<body>
<h1 id="title">TITLE</h1>
<nav>
  <a href="/pricing/team" data-spa>Team plan</a>
  <a href="/pricing/enterprise" data-spa>Enterprise</a>
  <a href="/pricing/compare" data-spa>Compare</a>
  <a href="/blog/why-scoring" data-spa>Blog: why</a>
  <a href="/blog/decay" data-spa>Blog: decay</a>
</nav>
<p>A test page of a single-page shop: the links above change the address without a page
load; the form below posts to <code>/thanks</code>.</p>
<form id="contact" action="/thanks" method="post">
  <label>Name <input name="name" value=""></label>
  <label>E-mail <input name="email" type="email" value=""></label>
  <label>Card number (never sent) <input name="card_number" value=""></label>
  <label>Password (never sent) <input name="pw" type="password" value=""></label>
  <button type="submit" id="send">Talk to sales</button>
</form>
<script>
document.addEventListener("click", function (e) {
  var a = e.target.closest("a[data-spa]");
  if (!a) return;
  e.preventDefault();
  history.pushState({}, "", a.getAttribute("href"));
  document.getElementById("title").textContent = a.textContent;
  document.title = a.textContent + " - Test Shop";
});
</script>
</body></html>"""


class Pages:
    """A local web site whose every page carries the snippet (its own origin)."""

    def __init__(self) -> None:
        self.collector = ""
        self.key = KEY
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def _page(self) -> None:
                title = "Thank you" if self.path.startswith("/thanks") else "Pricing"
                snippet = SNIPPET.replace("COLLECTOR", pages.collector).replace("KEY", pages.key)
                body = PAGE.replace("SNIPPET", snippet).replace("TITLE", html.escape(title))
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._page()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._page()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pages() -> Iterator[Pages]:
    site_ = Pages()
    yield site_
    site_.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} "
            "missing): run `make setup` (scripts/system-deps installs them)",
            pytrace=False,
        )
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager may not download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def start_collector(
    settings: Settings, tmp_path: Path, pages: Pages, **site_over: Any
) -> CollectorProc:
    sites = write_sites(tmp_path / "sites.yaml", [site([pages.origin], **site_over)])
    proc = CollectorProc(settings.bootstrap, settings.topic_prefix, sites, tmp_path / "c.log")
    proc.start().wait_ready()
    pages.collector = proc.base
    return proc


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def tracker_ready(driver: webdriver.Chrome) -> None:
    wait_for("tracker.js", lambda: driver.execute_script("return !!window.scorestream.loaded"))


def title_starts(driver: webdriver.Chrome, text: str) -> bool:
    return bool(driver.title.startswith(text))


def queued(driver: webdriver.Chrome) -> int:
    count: int = driver.execute_script("return window.scorestream.queued()")
    return count


def all_events(settings: Settings) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for topic in INPUT_TOPICS:
        out.extend(value for _, value, _ in events_in(settings.bootstrap, settings.topic(topic)))
    return out


def shot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    return path


@pytest.mark.timeout(360)
def test_a_visitor_clicks_around_submits_the_form_and_becomes_a_sales_ready_lead(
    kafka_settings: Settings,
    kafka_topics: list[TopicDecl],
    tmp_path: Path,
    pages: Pages,
    browser: webdriver.Chrome,
) -> None:
    worker = WorkerProc(
        "w1",
        kafka_settings.bootstrap,
        kafka_settings.topic_prefix,
        tmp_path / "state",
        ROOT / "rules" / "b2b.yaml",
    ).start()
    collector = start_collector(kafka_settings, tmp_path, pages, email_field="email")
    try:
        worker.wait_ready()
        browser.get(pages.origin + "/pricing?utm_source=newsletter")
        tracker_ready(browser)
        for link in ("Team plan", "Enterprise", "Compare", "Blog: why", "Blog: decay"):
            browser.find_element(By.LINK_TEXT, link).click()
            wait_for(link, partial(title_starts, browser, link))
        anonymous = browser.execute_script("return scorestream.anonymousId()")
        cookie = browser.get_cookie("_ss_aid")
        assert cookie is not None and cookie["value"] == anonymous  # first-party cookie
        browser.find_element(By.NAME, "name").send_keys("Ada Lovelace")
        browser.find_element(By.NAME, "email").send_keys(" Ada@Example.com ")
        browser.find_element(By.NAME, "card_number").send_keys("4111111111111111")
        browser.find_element(By.NAME, "pw").send_keys("hunter2")
        shot(browser, "tracker-test-page.png")
        browser.find_element(By.ID, "send").click()
        wait_for("the thank-you page", lambda: browser.title.startswith("Thank you"))
        tracker_ready(browser)
        wait_for("the queue to empty", lambda: queued(browser) == 0)
        shot(browser, "tracker-thanks-page.png")

        def arrived() -> list[dict[str, Any]] | None:
            events = all_events(kafka_settings)
            kinds = {e["type"] for e in events}
            return events if {"identify", "form_submit"} <= kinds else None

        events = wait_for("the events in Kafka", arrived)
        views = [e for e in events if e["type"] == "page_view"]
        assert {e["properties"]["url"] for e in views} == {
            "/pricing",
            "/pricing/team",
            "/pricing/enterprise",
            "/pricing/compare",
            "/blog/why-scoring",
            "/blog/decay",
            "/thanks",
        }
        first = next(e for e in views if e["properties"]["url"] == "/pricing")
        assert first["properties"]["utm_source"] == "newsletter"
        assert first["anonymous_id"] == anonymous and "contact_id" not in first
        team = next(e for e in views if e["properties"]["url"] == "/pricing/team")
        assert team["properties"]["referrer"].endswith("/pricing?utm_source=newsletter")
        (identify,) = {e["event_id"]: e for e in events if e["type"] == "identify"}.values()
        assert identify["contact_id"] == "ada@example.com"
        assert identify["anonymous_id"] == anonymous
        (form,) = {e["event_id"]: e for e in events if e["type"] == "form_submit"}.values()
        assert form["contact_id"] == "ada@example.com"
        assert form["properties"]["form_id"] == "contact"
        assert form["properties"]["fields"] == {
            "name": "Ada Lovelace",
            "email": "Ada@Example.com",  # the browser trims an e-mail input
        }
        thanks = next(e for e in views if e["properties"]["url"] == "/thanks")
        assert thanks["contact_id"] == "ada@example.com"  # known from now on
        for e in events:
            assert "received_at" in e and "sent_at" not in e and "client_address" not in e

        def crossing() -> dict[str, Any] | None:
            for _, value, _, _ in read_topic(
                kafka_settings.bootstrap, kafka_settings.topic("leads.sales_ready"), timeout=5
            ):
                doc: dict[str, Any] = json.loads(value or b"{}")
                if doc.get("contact_id") == "ada@example.com" and (
                    doc["threshold"] == "sales_ready" and doc["direction"] == "up"
                ):
                    return doc
            return None

        lead = wait_for("the sales-ready crossing", crossing, timeout=90)
        assert lead["model"] == "engagement" and lead["score"] >= 100
        assert {c["rule_id"] for c in lead["top_contributors"]} >= {"pricing-visit"}
        assert (ARTIFACTS / "tracker-test-page.png").stat().st_size > 10_000
    finally:
        collector.stop()
        worker.stop()


def test_nothing_is_stored_or_sent_before_consent(
    kafka_settings: Settings,
    kafka_topics: list[TopicDecl],
    tmp_path: Path,
    pages: Pages,
    browser: webdriver.Chrome,
) -> None:
    collector = start_collector(kafka_settings, tmp_path, pages, consent_required=True)
    try:
        browser.get(pages.origin + "/pricing")
        tracker_ready(browser)
        browser.execute_script("scorestream.track('video_play', {video: 'intro'})")
        time.sleep(3.0)  # three flush intervals
        assert queued(browser) == 2  # held in memory
        assert browser.get_cookies() == []
        assert browser.execute_script("return window.localStorage.length") == 0
        assert browser.execute_script("return scorestream.anonymousId()") is None
        assert collector.metric("scorestream_collector_requests_total", 'code="200"') == 0
        assert all_events(kafka_settings) == []

        browser.execute_script("scorestream.consent(true)")
        wait_for("the queue to empty", lambda: queued(browser) == 0)
        cookie = browser.get_cookie("_ss_aid")
        assert cookie is not None
        anonymous = cookie["value"]
        events = wait_for("the events", lambda: all_events(kafka_settings))
        assert sorted(e["type"] for e in events) == ["page_view", "video_play"]
        assert {e["anonymous_id"] for e in events} == {anonymous}
        shot(browser, "tracker-consent-page.png")
    finally:
        collector.stop()


def test_refused_batches_are_retried_with_back_off_and_beacons_leave_with_the_page(
    kafka_settings: Settings,
    kafka_topics: list[TopicDecl],
    tmp_path: Path,
    pages: Pages,
    browser: webdriver.Chrome,
) -> None:
    collector = start_collector(
        kafka_settings, tmp_path, pages, rate_limit={"events_per_second": 2, "burst": 2}
    )
    try:
        browser.get(pages.origin + "/pricing")
        tracker_ready(browser)
        # the first batch (page view and 3 clicks) empties the bucket; the next is refused
        # (429) until the rate has refilled it, and the tracker sends it again then
        for n in ((0, 1, 2), (3, 4, 5)):
            browser.execute_script(
                "arguments[0].forEach(function (n) { scorestream.track('demo_click', {n: n}); });"
                "scorestream.flush();",
                list(n),
            )
            wait_for(
                "a request",
                lambda: (
                    queued(browser) == 0
                    or collector.metric("scorestream_collector_requests_total", 'code="429"')
                ),
            )
        wait_for("the queue to empty", lambda: queued(browser) == 0, timeout=60)
        assert collector.metric("scorestream_collector_requests_total", 'code="429"') >= 1
        assert collector.metric("scorestream_collector_requests_total", 'code="200"') == 2
        events = all_events(kafka_settings)
        assert sorted(e["properties"].get("n", -1) for e in events) == [-1, 0, 1, 2, 3, 4, 5]

        # events still queued when the page goes away leave with sendBeacon
        time.sleep(3.0)  # a full bucket again
        browser.execute_script("scorestream.track('last_words', {n: 9})")
        assert queued(browser) == 1
        browser.get("about:blank")  # pagehide: no fetch timer will run any more
        last = wait_for(
            "the beacon",
            lambda: [e for e in all_events(kafka_settings) if e["type"] == "last_words"],
        )
        assert len(last) == 1
    finally:
        collector.stop()
