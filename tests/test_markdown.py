"""An answer's Markdown, the same everywhere it is shown: the final view (finished, cut short or
cancelled), piped ``md`` output (its headings under the persona's), the HTML export and the
dashboard (rendered, sanitised: nothing in an answer becomes markup, nothing is fetched)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from fanout.markdown import answer_html, demote_headings
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Reply
from tests.servehelp import serve_in_thread
from tests.test_dashboard import browser  # noqa: F401  (the fixture: headless Chromium)

MARKDOWN = (
    "## Temperature\n\nIt is the **mean kinetic energy** of the particles, *roughly*.\n\n"
    "- one `point`\n- two\n\n| quantity | unit |\n|---|---|\n| temperature | K |\n"
)
HOSTILE = (
    "<script>document.title='pwned-script'</script>\n\n"
    "<img src=x onerror=\"document.title='pwned-img'\">\n\n"
    '**bold** <b onmouseover="x()">html</b> [click](javascript:alert(1)) '
    "[c2](\x01javascript:alert(1)) ![pic](https://example.invalid/pic.png) "
    '<a href="https://example.invalid">raw link</a>\n\n'
    "```html\n<script>alert(1)</script>\n```\n"
)


# -- piped md: an answer's headings go under the persona's ----------------------------------------


@pytest.mark.parametrize(
    ("answer", "demoted"),
    [
        ("# Title\n\ntext", "### Title\n\ntext"),
        ("## Sub\n\n#### Deep\n\n###### Six", "#### Sub\n\n###### Deep\n\n###### Six"),
        ("Title\n=====\n\nSub\n---\n\ntext", "### Title\n\n#### Sub\n\ntext"),
        ("> # quoted\n\n- # in a list", "> ### quoted\n\n- ### in a list"),
        ("```\n# a comment in code\n```", "```\n# a comment in code\n```"),
        ("#hashtag and a # in the middle", "#hashtag and a # in the middle"),
        ("a - b\n\n---\n\nafter a rule", "a - b\n\n---\n\nafter a rule"),
    ],
)
def test_an_answers_headings_are_demoted_below_the_persona_heading(
    answer: str, demoted: str
) -> None:
    assert demote_headings(answer) == demoted


def test_piped_md_puts_an_answers_headings_under_its_persona(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-alpha", Reply(text="# Heat\n\n## Why\n\nBecause.\n\n```\n# code\n```"))
    result = invoke("ask", "-c", agents_file("alpha"), "Why?")
    assert result.exit_code == 0, result.output
    assert "## alpha\n### Heat\n\n#### Why\n\nBecause.\n\n```\n# code\n```" in result.stdout


# -- the final view: a cut-short answer is Markdown too -------------------------------------------


@pytest.mark.parametrize("view", ["columns", "table"])
def test_an_answer_cut_short_is_rendered_like_a_finished_one(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, view: str
) -> None:
    server.script("m-alpha", Reply(text=MARKDOWN))
    server.script("m-beta", Reply(text=MARKDOWN, cut_after=12))  # the stream loses its end
    config = agents_file("alpha", "beta")
    result = invoke("ask", "-c", config, "--stream", "--retries", "0", "--format", view, "Why?")
    assert result.exit_code == 3, result.output
    out = result.stdout
    assert "✂ cut short" in out and out.count("Temperature") == 2
    assert "mean kinetic energy" in out and "• one" in out
    assert "##" not in out and "**" not in out  # drawn, not shown raw


# -- the HTML export: Markdown rendered, sanitised ------------------------------------------------


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    return parser.tags


def test_answer_html_draws_markdown_and_makes_no_markup_of_an_answers_html() -> None:
    drawn = {tag for tag, _ in elements(answer_html(MARKDOWN))}
    assert {"h2", "p", "strong", "em", "ul", "li", "code", "table", "th", "td"} <= drawn
    html = answer_html(HOSTILE)
    tags = elements(html)
    assert {tag for tag, _ in tags} <= {"p", "strong", "a", "pre", "code"}
    links = [attrs for tag, attrs in tags if tag == "a"]
    assert [a["href"] for a in links] == ["https://example.invalid/pic.png"]  # the image's
    assert all(a["rel"] == "noopener noreferrer nofollow" for a in links)
    assert not any(k.startswith("on") or k == "src" for _, attrs in tags for k in attrs)
    assert "&lt;script&gt;document.title='pwned-script'&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_html_export_renders_answers_as_markdown(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-alpha", Reply(text=MARKDOWN))
    run = invoke("ask", "--json", "-c", agents_file("alpha"), "Why?")
    assert run.exit_code == 0, run.output
    run_id = re.search(r'"run_id": "(\w+)"', run.stdout)
    assert run_id
    page = invoke("runs", "export", run_id[1], "--format", "html").stdout
    assert "<h2>Temperature</h2>" in page and "<strong>mean kinetic energy</strong>" in page
    assert "<table>" in page and "**" not in page and "## Temperature" not in page


# -- in a browser: the export page and the dashboard -----------------------------------------------


def test_in_a_browser_the_exported_page_runs_nothing_from_an_answer(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    browser: object,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    server.script("m-alpha", Reply(text=HOSTILE))
    config = agents_file("alpha")
    assert invoke("ask", "-c", config, "Why?").exit_code == 0
    listed = invoke("runs", "list", "--json").stdout
    run_id = re.search(r'"run_id": "(\w+)"', listed)
    assert run_id
    page = tmp_path / "run.html"
    assert invoke("runs", "export", run_id[1], "--format", "html", "-o", page).exit_code == 0
    browser.get(page.as_uri())
    assert browser.title.startswith("fanout run")  # no script of the answer's ran
    card = browser.find_element(By.CSS_SELECTOR, ".card .text")
    assert "<script>document.title='pwned-script'</script>" in card.text
    assert card.find_elements(By.TAG_NAME, "strong")[0].text == "bold"
    assert not card.find_elements(By.CSS_SELECTOR, "script, img, b")


def test_in_a_browser_the_dashboard_draws_answers_as_markdown_and_runs_nothing(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    browser: object,  # noqa: F811 (the fixture imported above)
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    server.script("m-alpha", Reply(text=MARKDOWN, chunk_delay=0.002))
    server.script("m-beta", Reply(text=HOSTILE, chunk_delay=0.002))
    served = serve_in_thread(agents_file("alpha", "beta"))
    try:
        browser.get(served.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: len(d.find_elements(By.NAME, "persona")) == 2)
        browser.find_element(By.ID, "prompt").send_keys("Why?")
        browser.find_element(By.ID, "opt-synthesize").click()
        browser.find_element(By.ID, "run").click()
        current = browser.find_element(By.ID, "current")
        wait.until(lambda d: current.get_attribute("data-status") == "completed")
        alpha = browser.find_element(By.CSS_SELECTOR, '.pane[data-name="alpha"] .text')
        assert alpha.find_element(By.TAG_NAME, "h2").text == "Temperature"
        assert alpha.find_element(By.TAG_NAME, "strong").text == "mean kinetic energy"
        assert len(alpha.find_elements(By.TAG_NAME, "li")) == 2
        assert alpha.find_element(By.TAG_NAME, "td").text == "temperature"
        assert "**" not in alpha.text and "##" not in alpha.text
        beta = browser.find_element(By.CSS_SELECTOR, '.pane[data-name="beta"] .text')
        assert "<script>document.title='pwned-script'</script>" in beta.text
        assert "<img src=x onerror=\"document.title='pwned-img'\">" in beta.text
        assert not beta.find_elements(By.CSS_SELECTOR, "script, img, b")
        assert [a.get_attribute("href") for a in beta.find_elements(By.TAG_NAME, "a")] == [
            "https://example.invalid/pic.png"
        ]
        assert browser.title == "fanout"  # nothing of the answer ran
    finally:
        served.stop()


def test_the_dashboards_markdown_never_writes_html() -> None:
    script = (resources.files("fanout.serve") / "static" / "markdown.js").read_text("utf-8")
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    assert not re.search(r"https?://", script)
    page = (resources.files("fanout.serve") / "static" / "index.html").read_text("utf-8")
    assert page.index("/static/markdown.js") < page.index("/static/dashboard.js")
