"""The dashboard in a real browser: headless Chromium driven by selenium, against a real server
and the loopback LLM server. Skipped where Chromium is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Reply
from tests.servehelp import Served, serve_in_thread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"

ANSWERS = {
    "physicist": "Temperature measures the average kinetic energy of the particles in a system: "
    "the faster they move, the hotter it is. It sets the direction heat flows.",
    "chemist": "Temperature governs reaction rates: roughly, every ten degrees doubles how "
    "often molecules collide hard enough to react, and it shifts equilibria.",
    "biologist": "For living things temperature is a constraint: enzymes work in a narrow "
    "range, so organisms regulate it by sweating, shivering or basking.",
}
VERDICT = (
    "All three agree that temperature is about particle motion. The physicist defines it as "
    "average kinetic energy, the chemist shows why it speeds reactions, and the biologist why "
    "organisms must keep theirs within a narrow range."
)


def test_page_loads_nothing_from_elsewhere() -> None:
    static = resources.files("fanout.serve") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links and all(link.startswith("/static/") for link in links)
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert not re.search(r"https?://", (static / name).read_text(encoding="utf-8")), name


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=1400,1050"):  # fmt: skip
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_runs_a_prompt_and_every_pane_fills(
    server: FakeOpenAI, agents_file: AgentsFile, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    for name, text in ANSWERS.items():
        server.script(f"m-{name}", Reply(text=text, chunk_delay=0.005))
    server.script("gpt-4o-mini", Reply(text=VERDICT, chunk_delay=0.005))  # the synthesizer
    served: Served = serve_in_thread(agents_file())
    try:
        # One run beforehand, so the list of past runs has something in it.
        with served.client() as client:
            body = {"prompt": "What is heat?", "agents": ["chemist"], "model": "m-earlier"}
            client.post("/api/runs?wait=30", json=body)
        browser.get(served.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: len(d.find_elements(By.NAME, "persona")) == 3)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 1)
        browser.find_element(By.ID, "prompt").send_keys("What is temperature?")
        assert browser.find_element(By.ID, "opt-synthesize").is_selected()
        browser.find_element(By.ID, "run").click()
        current = browser.find_element(By.ID, "current")
        wait.until(lambda d: current.get_attribute("data-status") == "completed")

        panes = browser.find_elements(By.CSS_SELECTOR, ".pane")
        names = [p.get_attribute("data-name") for p in panes]
        assert names == ["physicist", "chemist", "biologist", "synthesizer"]
        for pane in panes:
            assert pane.get_attribute("data-state") == "ok"
        texts = {p.get_attribute("data-name"): p.find_element(By.CLASS_NAME, "text").text
                 for p in panes}  # fmt: skip
        assert texts == {**ANSWERS, "synthesizer": VERDICT}
        verdict = browser.find_element(By.ID, "verdict").text
        assert verdict.startswith("Synthesis · synthesizer") and VERDICT in verdict
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row")) == 4
        assert browser.find_elements(By.CSS_SELECTOR, "#timeline .bar.streaming")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 2)
        assert "completed" in browser.find_element(By.ID, "run-status").text

        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    finally:
        served.stop()


def test_dashboard_asks_for_the_token_and_then_works(
    server: FakeOpenAI, agents_file: AgentsFile, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    served = serve_in_thread(agents_file(), token="dashboard-token")
    try:
        browser.get(served.url + "/")
        wait = WebDriverWait(browser, 30)
        form = browser.find_element(By.ID, "token-form")
        wait.until(lambda d: form.is_displayed())
        browser.find_element(By.ID, "token").send_keys("dashboard-token")
        form.submit()
        wait.until(lambda d: len(d.find_elements(By.NAME, "persona")) == 3)
        browser.find_element(By.ID, "prompt").send_keys("Why?")
        browser.find_element(By.ID, "opt-synthesize").click()  # a bare panel this time
        browser.find_element(By.ID, "run").click()
        current = browser.find_element(By.ID, "current")
        wait.until(lambda d: current.get_attribute("data-status") == "completed")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".pane[data-state=ok]")) == 3
        assert not browser.find_element(By.ID, "verdict-box").is_displayed()
    finally:
        served.stop()
