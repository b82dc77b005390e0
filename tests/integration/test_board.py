"""The lead board in a real browser: Debian's headless chromium, driven by Selenium.

A worker and ``scorestream board`` run with an API token on the test's topics. The test
signs in, sees a contact it made sales-ready among the hottest, watches a new crossing
appear without a reload, searches a contact and checks its page: the chart draws, the
rules behind the points and the attributes are there. Screenshots go to
``tests/artifacts/`` (kept, not committed).

Selenium gets the system browser and driver explicitly, so Selenium Manager never
downloads anything; ``make setup`` installs both (``scripts/system-deps``). Without
them the test fails rather than skips.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WorkerProc, free_port, produce, spawn, stop_process, wait_processed

from scorestream.engine.timeutil import US_PER_SECOND, format_ts

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "tests" / "artifacts"
PLAN = ROOT / "rules" / "b2b.yaml"
TOKEN = "board-it-token-7c41"
HOT = "c-hot-1"
NEW = "c-hot-2"


class BoardProc:
    """One ``scorestream board`` subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc = spawn("board", {**env, "SCORESTREAM_BOARD_PORT": str(self.port)}, log_path)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.url(path), headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"board exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"board not ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc, 20)


def browser(profile: Path) -> Any:
    """Headless chromium through chromedriver, both from Debian (nothing downloaded)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: run `make setup` (scripts/system-deps "
            "installs Debian's chromium and chromium-driver)",
            pytrace=False,
        )
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def pricing_visits(contact: str, start_us: int, count: int, tag: str) -> list[dict[str, Any]]:
    """Pricing page views (15 points each in the B2B plan: mql at 50, sales_ready at 100)."""
    return [
        {
            "event_id": f"{tag}-{i}",
            "type": "page_view",
            "contact_id": contact,
            "occurred_at": format_ts(start_us + i * 1000),
            "properties": {"url": "/pricing"},
        }
        for i in range(count)
    ]


def wait_text(driver: Any, css: str, *needles: str, timeout: float = 30.0) -> str:
    """The text of the element at ``css`` once it holds every needle.

    Found again on every try: the live page re-renders its lists as updates arrive.
    """
    from selenium.common.exceptions import (  # noqa: PLC0415
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    seen: list[str] = []

    def check(d: Any) -> str | bool:
        try:
            text = str(d.find_element(By.CSS_SELECTOR, css).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        seen[:] = [text]
        return text if all(n in text for n in needles) else False

    try:
        result = str(WebDriverWait(driver, timeout).until(check))
    except TimeoutException:
        raise AssertionError(f"{css}: {needles} not in {seen}") from None
    return result


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Iterator[Path]:
    folder = ARTIFACTS / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


def test_a_sales_person_sees_hot_contacts_live_crossings_and_a_contact_page(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.common.keys import Keys  # noqa: PLC0415
    from selenium.webdriver.support import expected_conditions as ec  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    worker = WorkerProc(
        "w",
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "state",
        PLAN,
        extra_env={"SCORESTREAM_API_TOKEN": TOKEN},
    )
    worker.start()
    board = BoardProc(
        {
            "SCORESTREAM_BOOTSTRAP": kafka_bootstrap,
            "SCORESTREAM_TOPIC_PREFIX": topic_prefix,
            "SCORESTREAM_API_TOKEN": TOKEN,
            "SCORESTREAM_BOARD_WORKER_URL": worker.url(""),
        },
        tmp_path / "board.log",
    )
    driver = None
    try:
        worker.wait_ready()
        board.wait_ready()
        now = int(time.time() * US_PER_SECOND)
        profile = {
            "event_id": "profile-1",
            "type": "profile_update",
            "contact_id": HOT,
            "occurred_at": format_ts(now),
            "properties": {"attributes": {"job_title": "CTO", "company_size": 500}},
        }
        visits = pricing_visits(HOT, now + US_PER_SECOND, 8, "hot")
        # Three rounds, each processed and checkpointed: the board sees several states.
        for batch in ([profile, *visits[:3]], visits[3:6], visits[6:]):
            produce(kafka_bootstrap, topic_prefix, batch)
            wait_processed(kafka_bootstrap, topic_prefix, [worker])
            time.sleep(0.8)  # checkpoint interval in tests: 0.3 s
        deadline = time.monotonic() + 30
        while True:
            code, top = board.api("/api/top")
            hottest = [e["contact_id"] for e in (top or {}).get("models", {}).get("engagement", [])]
            if HOT in hottest or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert hottest[:1] == [HOT], (code, top)

        driver = browser(tmp_path / "chromium-profile")
        wait = WebDriverWait(driver, 30)
        # Signing in: the board sends the browser to its login form first.
        driver.get(board.url("/"))
        wait.until(ec.url_contains("/login"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        wait_text(
            driver,
            f'table[data-model="engagement"] tr[data-contact-id="{HOT}"]',
            "120.0",
            "sales_ready",
        )
        wait_text(driver, "#live", "live")
        # crossing ids number each threshold's crossings of a contact from 1
        wait_text(driver, f'li[data-crossing-id="{HOT}:engagement:sales_ready:1"]', "105.0")
        driver.save_screenshot(str(artifacts / "1-board.png"))

        # A new crossing appears without a reload: the page's own state survives it.
        driver.execute_script("window.__sameDocument = 'yes';")
        produce(
            kafka_bootstrap, topic_prefix, pricing_visits(NEW, now + 20 * US_PER_SECOND, 4, "new")
        )
        wait_text(driver, f'li[data-crossing-id="{NEW}:engagement:mql:1"]', NEW, "mql")
        assert driver.execute_script("return window.__sameDocument;") == "yes"
        driver.save_screenshot(str(artifacts / "2-live-crossing.png"))

        # Search, then the contact's page.
        search = driver.find_element(By.ID, "search-input")
        search.send_keys(HOT)
        search.send_keys(Keys.ENTER)
        wait.until(ec.url_contains(f"/contact/{HOT}"))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, 'body[data-loaded="1"]')))
        wait_text(driver, '.score-card[data-model="engagement"]', "120.0", "sales_ready")
        line = driver.find_element(By.CSS_SELECTOR, 'svg.history polyline[data-model="engagement"]')
        points = line.get_attribute("points").split()
        assert len(points) >= 4, points  # states seen, the two crossings, the score now
        ys = {float(p.split(",")[1]) for p in points}
        assert len(ys) >= 3, points  # the score rose: the line is not flat
        assert line.size["width"] > 100
        marks = driver.find_elements(By.CSS_SELECTOR, "svg.history text.mark.up")
        assert len(marks) >= 2  # mql and sales_ready crossings marked
        wait_text(driver, '#rules table[data-model="engagement"]', "pricing-visit", "+120.0")
        wait_text(driver, "#attributes", "job_title", "CTO", "company_size", "500")
        driver.save_screenshot(str(artifacts / "3-contact.png"))

        # The board's data needs the token; its probe does not.
        assert board.api("/api/top")[0] == 200
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(board.url("/api/top"), timeout=10)
        assert denied.value.code == 401
        denied.value.close()
    finally:
        if driver is not None:
            driver.quit()
        board.stop()
        worker.stop()
    log = board.log_path.read_text(errors="replace")
    assert "index loaded" in log
    assert HOT not in log and NEW not in log
    assert TOKEN not in log
