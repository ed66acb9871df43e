"""The real app (`python app.py`, tiny models, its trainer) in Debian's Chromium, driven with Playwright the way a
person uses it. Screenshots go to the test's tmp dir.

Chromium comes from the system (/usr/bin/chromium; see setup.sh); never `playwright install`.
"""

import re
from pathlib import Path

import pytest
from gradio_client import Client
from playwright.sync_api import expect, sync_playwright

from app_process import start_app, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SLOW = 180_000  # ms: model loading and training rounds on a busy 2-core machine
ANSWER = 60_000
XSS = "<img src=x onerror=alert(1)><script>window.__xss=1</script>"
ARM_TITLES = {"Base", "SFT", "Preference-tuned"}


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    assert Path(CHROMIUM).exists(), "the browser tests need Chromium at /usr/bin/chromium (see setup.sh)"
    data_dir = tmp_path_factory.mktemp("ui-browser") / "data"
    # 48 new tokens: long enough that the answers visibly stream in several steps.
    app = start_app(tiny_models, data_dir, args=["--min-pairs", "2", "--max-new-tokens", "48"])
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(app, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app.url)
    expect(page.locator("#status-line")).to_contain_text("Ready", timeout=SLOW)
    yield page
    context.close()


def record_answer_lengths(page, column: int) -> None:
    """Watch one answer box from inside the page, so intermediate (streamed) states are seen."""
    page.evaluate("""column => {
        window.__lengths = [];
        const box = () => document.querySelector(`#answer-${column} textarea`);
        window.__watch = setInterval(() => {
            const n = box() ? box().value.length : -1;
            if (window.__lengths[window.__lengths.length - 1] !== n) window.__lengths.push(n);
        }, 10);
    }""", column)


def ask(page, prompt: str) -> None:
    """Compare, and return once this prompt's answers are complete and recorded (a new comparison number)."""
    status = page.locator("#compare-status")
    before = re.findall(r"Comparison #(\d+)", status.inner_text())
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#compare-btn").click()
    not_before = f"(?!{before[0]}\\))" if before else ""
    expect(status).to_contain_text(re.compile(rf"Which answer is best\?.*Comparison #{not_before}\d+\)"),
                                   timeout=ANSWER)


def headers(page) -> list[str]:
    return [page.locator(f"#header-{i}").inner_text().strip() for i in (1, 2, 3)]


def answers(page) -> list[str]:
    return [page.locator(f"#answer-{i} textarea").input_value() for i in (1, 2, 3)]


def settled_version(app) -> int:
    """The serving version once no round runs or is due (so the next version is the one our votes cause)."""
    client = Client(app.url, verbose=False)

    def quiet():
        s = client.predict(api_name="/stats")
        idle = s["ready"] and s["counts"]["pairs_pending"] < s["min_pairs"] and not s["running_round"]
        return idle and s["engine_version"] == s["serving_version"] and s

    return wait_until(quiet, SLOW / 1000, "the trainer to be idle")["serving_version"]


def test_three_answers_stream_and_a_vote_is_counted(page, tmp_path):
    record_answer_lengths(page, 3)
    ask(page, "Why is the sky blue?")
    texts = answers(page)
    assert all(t.strip() for t in texts)
    lengths = [n for n in page.evaluate("window.__lengths") if n > 0]
    assert len(lengths) >= 2 and lengths[-1] == len(texts[2]), f"no intermediate states seen: {lengths}"
    assert [h.split(" · ")[0] for h in headers(page)] == ["Base", "SFT", "Preference-tuned v0"]

    page.locator("#best-1").click()
    expect(page.locator("#vote-status")).to_contain_text("Thanks! Your vote added", timeout=ANSWER)
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

    page.get_by_role("tab", name="Data").click()
    expect(page.locator("#counts")).to_contain_text(re.compile(r"best-of-three votes\s+1\b"), timeout=ANSWER)
    page.screenshot(path=str(tmp_path / "data.png"), full_page=True)


def test_blind_mode_hides_names_until_the_vote(page):
    page.locator("#blind input").check()
    ask(page, "Give me one tip for sleeping better.")
    assert headers(page) == ["Answer 1", "Answer 2", "Answer 3"]
    details = " ".join(page.locator(f"#meta-{i}").inner_text() for i in (1, 2, 3))
    assert "tokens" in details and not any(name in details for name in ARM_TITLES | {"SFT model"})

    page.locator("#best-2").click()
    expect(page.locator("#vote-status")).to_contain_text("Thanks!", timeout=ANSWER)
    expect(page.locator("#header-1")).not_to_have_text("Answer 1", timeout=ANSWER)
    revealed = {re.sub(r" v\d+$", "", h.split(" · ")[0]) for h in headers(page)}
    assert revealed == ARM_TITLES


def test_an_html_prompt_is_shown_as_text(page, tmp_path):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    ask(page, XSS)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("img[src='x']").count() == 0 and dialogs == []
    assert page.locator("#prompt textarea").input_value() == XSS
    assert all(t.strip() for t in answers(page))  # the models answered it like any prompt
    page.screenshot(path=str(tmp_path / "html-prompt.png"), full_page=True)


def test_votes_start_a_round_and_the_panel_shows_the_new_version(app, page, tmp_path):
    version = settled_version(app)
    ask(page, "How do I boil an egg?")
    page.locator("#best-1").click()  # the base answer beats the two others: 2 pairs = --min-pairs
    expect(page.locator("#vote-status")).to_contain_text("2 training pairs", timeout=ANSWER)

    page.get_by_role("tab", name="Training").click()
    training = page.locator("#training-status")
    expect(training).to_contain_text(f"adapter v{version + 1}", timeout=SLOW)
    expect(page.locator("#status-line")).to_contain_text(f"adapter v{version + 1}", timeout=ANSWER)
    expect(page.locator("#versions")).to_contain_text(f"v{version + 1}")
    expect(page.locator("#progress")).to_contain_text("No round running")
    page.screenshot(path=str(tmp_path / "training.png"), full_page=True)

    page.get_by_role("tab", name="Compare").click()
    ask(page, "Which version answers now?")
    assert headers(page)[2].startswith(f"Preference-tuned v{version + 1}")


def test_leaderboard_lists_the_players(page, tmp_path):
    ask(page, "Name a fruit.")
    page.locator("#best-3").click()
    expect(page.locator("#vote-status")).to_contain_text("Thanks!", timeout=ANSWER)
    page.get_by_role("tab", name="Leaderboard").click()
    board = page.locator("#leaderboard")
    expect(board).to_contain_text("base", timeout=ANSWER)
    expect(board).to_contain_text("sft")
    expect(board).to_contain_text(re.compile(r"\d{3,4} – \d{3,4}"))  # the bootstrap interval
    page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
