"""The dashboard in a real browser: headless Chromium driven by selenium, against a real server
and the loopback LLM server. Skipped where Chromium is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from collections.abc import Callable, Iterator
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
        assert browser.find_element(By.ID, "synthesize").is_selected()
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
        assert browser.find_element(By.ID, "verdict").text == VERDICT
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
        browser.find_element(By.ID, "synthesize").click()  # a bare panel this time
        browser.find_element(By.ID, "run").click()
        current = browser.find_element(By.ID, "current")
        wait.until(lambda d: current.get_attribute("data-status") == "completed")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".pane[data-state=ok]")) == 3
        assert not browser.find_element(By.ID, "verdict-box").is_displayed()
    finally:
        served.stop()


# -- a page of another origin, in the same browser ------------------------------------------------

FETCHES = """<!doctype html><title>elsewhere</title><body><script>
const target = "TARGET";
const tries = [
  ["/api/runs", '{"prompt": "json as text"}', "text/plain"],
  ["/api/runs", "a plain prompt", "text/plain"],
  ["/api/runs", '{"prompt": "json as a form"}', "application/x-www-form-urlencoded"],
  ["/api/multiagent/run", "the samples' route", "text/plain"],
  ["/v1/chat/completions",
   '{"model": "fanout", "messages": [{"role": "user", "content": "chat"}]}', "text/plain"],
];
Promise.all(tries.map(([path, body, type]) =>
  fetch(target + path, {mode: "no-cors", method: "POST", body, headers: {"Content-Type": type}})
    .then(() => "sent", () => "failed")))
  .then((outcomes) => { document.body.dataset.done = outcomes.join(","); });
</script></body>"""

FORM = """<!doctype html><title>elsewhere</title><body>
<form id="smuggle" method="POST" enctype="text/plain" action="TARGET/v1/chat/completions">
<input type="hidden" value='"}'
 name='{"model": "fanout", "messages": [{"role": "user", "content": "smuggled"}], "x": "'>
</form><script>document.getElementById("smuggle").submit();</script></body>"""


@pytest.fixture
def elsewhere() -> Iterator[Callable[[dict[str, str]], str]]:
    """Serve pages from another origin (``localhost``, another port): returns their base URL."""
    pages: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def publish(given: dict[str, str]) -> str:
        pages.update(given)
        return f"http://localhost:{httpd.server_address[1]}"

    try:
        yield publish
    finally:
        httpd.shutdown()


def test_a_page_of_another_origin_starts_nothing(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    browser: object,
    elsewhere: Callable[[dict[str, str]], str],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    served = serve_in_thread(agents_file())
    try:
        other = elsewhere(
            {
                "/fetches": FETCHES.replace("TARGET", served.url),
                "/form": FORM.replace("TARGET", served.url),
            }
        )
        wait = WebDriverWait(browser, 30)
        browser.get(other + "/fetches")
        body = browser.find_element(By.TAG_NAME, "body")
        wait.until(lambda d: body.get_attribute("data-done"))
        # Each one was answered (a refusal, with headers that keep a page from reading it).
        assert len(str(body.get_attribute("data-done")).split(",")) == 5
        browser.get(other + "/form")  # the form sends itself: the browser follows to our answer
        wait.until(lambda d: d.current_url.startswith(served.url))
        with served.client() as client:
            assert client.get("/api/runs").json() == {"runs": []}
        assert server.requests == []
    finally:
        served.stop()


def test_past_runs_show_how_they_stand_and_each_run_has_a_link(
    server: FakeOpenAI, agents_file: AgentsFile, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    release = threading.Event()
    server.default = Reply(hold=release)
    served = serve_in_thread(agents_file())
    prompt = "What is temperature?\nAnswer for a ten-year-old,\nin three sentences."
    try:
        with served.client() as client:  # started by another client, not by this page
            run_id = client.post("/api/runs", json={"prompt": prompt}).json()["id"]
        server.wait_for_requests(3)
        browser.get(served.url + "/")
        wait = WebDriverWait(browser, 30)
        row = f'#runs tbody tr[data-id="{run_id}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        assert browser.find_element(By.CSS_SELECTOR, row + " .status").text == "Running"
        release.set()  # the run ends while the page just sits there: its row follows
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status")
                   == "Completed")  # fmt: skip
        assert browser.find_element(By.CSS_SELECTOR, row + " .answered").text == "3/3"
        link = browser.find_element(By.CSS_SELECTOR, row + " a")
        assert link.text == "What is temperature?"
        assert link.get_attribute("href") == f"{served.url}/#run={run_id}"

        browser.get("about:blank")
        browser.get(f"{served.url}/#run={run_id}")  # the link, opened on its own
        current = browser.find_element(By.ID, "current")
        wait.until(lambda d: current.get_attribute("data-status") == "completed")
        assert current.get_attribute("data-run") == run_id
        assert browser.find_element(By.ID, "run-title").text == "What is temperature?"
        whole = browser.find_element(By.ID, "run-prompt")
        assert whole.get_attribute("textContent") == prompt
        assert len(browser.find_elements(By.CSS_SELECTOR, ".pane[data-state=ok]")) == 3
    finally:
        release.set()
        served.stop()
