"""The real app (`python app.py`, tiny models, its trainer) in Debian's Chromium, driven with Playwright the way a
person uses it. Screenshots go to the test's tmp dir.

Chromium comes from the system (/usr/bin/chromium; see setup.sh); never `playwright install`.
"""

import json
import re
import sqlite3
from pathlib import Path

import pytest
from app_process import start_app, wait_until
from chromium import CHROMIUM, CHROMIUM_ARGS
from gradio_client import Client
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.browser

SLOW = 180_000  # ms: model loading and training rounds on a busy 2-core machine
ANSWER = 60_000
XSS = "<img src=x onerror=alert(1)><script>window.__xss=1</script>"
ARM_TITLES = {"Base", "SFT", "Preference-tuned"}


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    assert Path(CHROMIUM).exists(), "the browser tests need Chromium at /usr/bin/chromium (see setup.sh)"
    data_dir = tmp_path_factory.mktemp("ui-browser") / "data"
    # 48 new tokens: long enough that the answers visibly stream in several steps.
    # A large learning rate: one round of two pairs visibly changes the tiny model (the explain view colours it).
    app = start_app(
        tiny_models,
        data_dir,
        args=["--min-pairs", "2", "--max-new-tokens", "48", "--learning-rate", "0.05", "--rpo-weight", "0"],
    )
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
    """Watch one column's latest answer from inside the page, so intermediate (streamed) states are seen."""
    page.evaluate(
        """column => {
        window.__lengths = [];
        const last = () => {
            const bots = document.querySelectorAll(`#answer-${column} [data-testid="bot"]`);
            return bots.length ? bots[bots.length - 1] : null;
        };
        window.__watch = setInterval(() => {
            const n = last() ? last().innerText.trim().length : -1;
            if (window.__lengths[window.__lengths.length - 1] !== n) window.__lengths.push(n);
        }, 10);
    }""",
        column,
    )


def ask(page, prompt: str) -> None:
    """Send a message, and return once this turn's answers are complete and recorded (a new comparison number)."""
    status = page.locator("#compare-status")
    before = re.findall(r"Comparison #(\d+)", status.inner_text())
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#prompt textarea").press("Enter")
    not_before = f"(?!{before[0]}\\))" if before else ""
    expect(status).to_contain_text(
        re.compile(rf"Which answer is best\?.*Comparison #{not_before}\d+\)"), timeout=ANSWER
    )


def new_chat(page) -> None:
    page.locator("#new-prompt-btn").click()
    expect(page.locator("#compare-status")).to_contain_text("New conversation", timeout=ANSWER)


def headers(page) -> list[str]:
    return [page.locator(f"#header-{i}").inner_text().strip() for i in (1, 2, 3)]


def bubbles(page, column: int, role: str):
    return page.locator(f'#answer-{column} [data-testid="{role}"]')


def answers(page) -> list[str]:
    """Each column's latest answer, as shown."""
    return [bubbles(page, i, "bot").last.inner_text().strip() for i in (1, 2, 3)]


def settled_version(app) -> int:
    """The serving version once no round runs or is due (so the next version is the one our votes cause)."""
    client = Client(app.url, verbose=False)

    def quiet():
        s = client.predict(api_name="/stats")
        idle = s["ready"] and sum(s["eligible"].values()) < s["min_pairs"] and not s["running_round"]
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
    # Scored once written: before any round there is no reward model to score with, and the page says so.
    expect(page.locator("#meta-3")).to_contain_text("no reward model yet", timeout=ANSWER)

    page.locator("#best-1").click()
    expect(page.locator("#vote-status")).to_contain_text("Thanks! Your vote added", timeout=ANSWER)
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

    page.get_by_role("tab", name="Data").click()
    expect(page.locator("#counts")).to_contain_text(re.compile(r"best-of-three votes\s+1\b"), timeout=ANSWER)
    page.screenshot(path=str(tmp_path / "data.png"), full_page=True)


def test_blind_mode_hides_names_until_the_vote(page):
    page.locator("#blind input").check()
    new_chat(page)  # blind mode applies to a new conversation
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
    for column in (1, 2, 3):  # the message is shown as the text it is, in every column
        assert bubbles(page, column, "user").last.inner_text().strip() == XSS
    assert all(answers(page))  # the models answered it like any message
    page.screenshot(path=str(tmp_path / "html-prompt.png"), full_page=True)


def test_a_three_turn_conversation_with_a_vote_and_a_correction(app, page, tmp_path):
    new_chat(page)
    ask(page, "What is a river?")
    ask(page, "And a lake?")
    for column in (1, 2, 3):  # turn 2 follows the preference-tuned answer (nothing was voted on turn 1)
        expect(bubbles(page, column, "bot").first).to_contain_text("kept: Preference-tuned's answer")
    page.locator("#best-2").click()  # vote on turn 2: the SFT answer is best
    expect(page.locator("#vote-status")).to_contain_text("Thanks!", timeout=ANSWER)

    ask(page, "Which one is bigger?")
    for column in (1, 2, 3):
        expect(bubbles(page, column, "bot").nth(1)).to_contain_text("kept: SFT's answer")
    page.get_by_text("Write a better answer to the latest turn").click()
    page.locator("#correction textarea").fill("A **lake** is often bigger than a river's width, but shorter.")
    page.locator("#correction-btn").click()
    expect(page.locator("#vote-status")).to_contain_text("demonstration", timeout=ANSWER)

    ask(page, "Thanks!")  # turn 4 follows the correction, and its Markdown renders in the answer bubbles
    kept = bubbles(page, 1, "bot").nth(2)
    expect(kept).to_contain_text("the person's own answer")
    expect(kept.locator("strong")).to_have_text("lake")
    assert "**" not in kept.inner_text()
    page.screenshot(path=str(tmp_path / "conversation.png"), full_page=True)

    client = Client(app.url, verbose=False)
    with open(client.predict("pairs", api_name="/export")[0], encoding="utf-8") as rows:
        pairs = [json.loads(line) for line in rows]
    turn2 = [p for p in pairs if p["prompt"][-1]["content"] == "And a lake?"]
    assert turn2 and all([m["role"] for m in p["prompt"]] == ["user", "assistant", "user"] for p in turn2)
    # The answers as stored (the page shows them rendered as Markdown, white space collapsed).
    db = sqlite3.connect(next(app.data_dir.rglob("playground.sqlite3")))
    stored = lambda prompt, arm: db.execute(  # noqa: E731  the latest turn with this prompt, its answer of this arm
        "SELECT a.text FROM answers a JOIN comparisons c ON c.id = a.comparison_id JOIN prompts p ON p.id = c.prompt_id "
        "WHERE p.text = ? AND a.arm = ? ORDER BY c.id DESC LIMIT 1",
        (prompt, arm),
    ).fetchone()[0]
    first_pref, voted = stored("What is a river?", "pref"), stored("And a lake?", "sft")
    db.close()
    assert turn2[0]["prompt"][1]["content"] == first_pref
    corrected = [p for p in pairs if p["chosen"][0]["content"].startswith("A **lake**")]
    assert len(corrected) == 3
    assert [m["content"] for m in corrected[0]["prompt"]] == [
        "What is a river?",
        first_pref,
        "And a lake?",
        voted,
        "Which one is bigger?",
    ]


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
    # The Stages view: the two datasets side by side, the stage each trains, the version that learned from them.
    stages = page.locator("#stages")
    for text in (
        "Dataset 1: demonstrations",
        "Dataset 2: preferences",
        "instruction alignment: SFT",
        "preference alignment: DPO",
        "written",
        "ranked comparison",
    ):
        expect(stages).to_contain_text(text)
    expect(stages.locator("table tr").filter(has_text="latest version that learned from it")).to_contain_text(
        f"v{version + 1} (pairs)"
    )
    expect(page.locator("#stage-loss canvas, #stage-loss svg").first).to_be_visible(timeout=ANSWER)
    expect(page.locator("#versions")).to_contain_text("demonstrations")
    page.screenshot(path=str(tmp_path / "training.png"), full_page=True)

    page.get_by_role("tab", name="Compare").click()
    ask(page, "Which version answers now?")
    assert headers(page)[2].startswith(f"Preference-tuned v{version + 1}")

    # Why this answer: the SFT answer's tokens coloured by the new version's implicit reward.
    page.get_by_text("Why this answer? What the votes taught the model").click()
    page.locator("#compare-explain-arm").get_by_text("SFT", exact=True).click()
    page.locator("#compare-explain-btn").click()
    summary = page.locator("#compare-explain-summary")
    expect(summary).to_contain_text(f"under v{version + 1}", timeout=ANSWER)
    expect(summary).to_contain_text("Pushed up most")
    tokens = page.locator("#compare-explain-tokens")
    shown = re.sub(r"\s+", "", tokens.inner_text())
    assert re.sub(r"\s+", "", answers(page)[1])[:20] in shown, "the view shows the SFT answer's own tokens"
    shades = token_shades(page)
    assert shades, "no token was coloured"
    for span in shades:  # dark text on every shade over the light page: WCAG contrast ≥ 4.5
        assert contrast(span["text"], over(span["background"], span["page"])) >= 4.5, span
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)

    # Drift per version: the trainer measures the new version (and v0) and the Training tab plots it.
    page.get_by_role("tab", name="Training").click()
    expect(page.locator("#drift-kl")).to_be_visible()
    client = Client(app.url, verbose=False)
    wait_until(
        lambda: (s := client.predict(api_name="/stats"))["sft_drift"] and s["versions"][-1]["drift"],
        SLOW / 1000,
        "the drift of v0 and the new version",
    )
    expect(page.locator("#drift-kl canvas, #drift-kl svg").first).to_be_visible(timeout=ANSWER)
    page.screenshot(path=str(tmp_path / "drift.png"), full_page=True)


def test_the_reward_models_score_shows_under_each_answer_and_it_judges_the_vote(app, page, tmp_path):
    """Once a round trained a reward model: its score under each answer after streaming, its verdict on the vote."""
    client = Client(app.url, verbose=False)
    wait_until(lambda: client.predict(api_name="/stats")["reward_agreement"], SLOW / 1000, "a reward model")
    ask(page, "Name a fruit.")
    for column in (1, 2, 3):
        expect(page.locator(f"#meta-{column}")).to_contain_text(
            re.compile(r"reward model v\d+: [+-]\d+\.\d\d"), timeout=ANSWER
        )
    page.locator("#best-2").click()
    expect(page.locator("#vote-status")).to_contain_text(
        re.compile(r"The reward model \(v\d+\) agreed with \d of the 2")
    )
    page.screenshot(path=str(tmp_path / "reward.png"), full_page=True)


def test_why_this_answer_reads_in_the_dark_theme(app, browser, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app.url + "?__theme=dark")
    expect(page.locator("#status-line")).to_contain_text("Ready", timeout=SLOW)
    if settled_version(app) == 0:  # run on its own: a version first, or nothing would be coloured
        ask(page, "How do I boil an egg?")
        page.locator("#best-1").click()
        wait_until(lambda: settled_version(app) > 0, SLOW / 1000, "a version")
    ask(page, "Name a color.")
    page.get_by_text("Why this answer? What the votes taught the model").click()
    page.locator("#compare-explain-btn").click()  # the preference-tuned answer, the latest turn: the defaults
    expect(page.locator("#compare-explain-summary")).to_contain_text("Implicit reward", timeout=ANSWER)
    spans = token_shades(page)
    page.screenshot(path=str(tmp_path / "explain-dark.png"), full_page=True)
    context.close()
    assert spans, "no token was coloured"
    for span in spans:  # light text on every shade, each shade laid over the dark page: WCAG contrast ≥ 4.5
        assert contrast(span["text"], over(span["background"], span["page"])) >= 4.5, span


def token_shades(page) -> list[dict]:
    """The explain view's coloured tokens: each one's text colour, shade, and the opaque colour behind the view."""
    return page.evaluate("""() => {
        const see_through = c => /rgba\\(0, 0, 0, 0\\)|transparent/.test(c);
        let page = 'rgb(255, 255, 255)';
        for (let n = document.querySelector('#compare-explain-tokens'); n; n = n.parentElement) {
            const bg = getComputedStyle(n).backgroundColor;
            if (!see_through(bg)) { page = bg; break; }
        }
        return [...document.querySelectorAll('#compare-explain-tokens span')]
            .filter(s => s.innerText.trim() && !see_through(getComputedStyle(s).backgroundColor))
            .map(s => ({text: getComputedStyle(s).color, background: getComputedStyle(s).backgroundColor, page}));
    }""")


def contrast(one: str, other: str) -> float:
    """WCAG's contrast ratio of two rgb colours (1 to 21)."""

    def luminance(colour):
        channels = [float(v) / 255 for v in re.findall(r"[\d.]+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(one), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def over(colour: str, page: str) -> str:
    """`colour` (rgb or rgba) as it shows on the opaque `page` colour."""
    *rgb, alpha = ([float(v) for v in re.findall(r"[\d.]+", colour)] + [1.0])[:4]
    base = [float(v) for v in re.findall(r"[\d.]+", page)[:3]]
    return "rgb({}, {}, {})".format(*(alpha * c + (1 - alpha) * b for c, b in zip(rgb, base)))


def test_leaderboard_lists_the_players(page, tmp_path):
    ask(page, "Name a fruit.")
    page.locator("#best-3").click()
    expect(page.locator("#vote-status")).to_contain_text("Thanks!", timeout=ANSWER)
    page.get_by_role("tab", name="Leaderboard").click()
    board = page.locator("#leaderboard")
    expect(board).to_contain_text("base", timeout=ANSWER)
    expect(board).to_contain_text("sft")
    expect(board).to_contain_text(re.compile(r"\d{3,4} – \d{3,4}"))  # the bootstrap interval
    picture = page.locator("#leaderboard-plot svg")
    expect(picture).to_be_visible()
    expect(picture).to_contain_text("base")
    page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
    light = colours_of_the_picture(page)

    page.goto(page.url.split("?")[0] + "?__theme=dark")  # the same picture in the dark theme
    page.get_by_role("tab", name="Leaderboard").click()
    expect(page.locator("#leaderboard-plot svg")).to_contain_text("base", timeout=ANSWER)
    dark = colours_of_the_picture(page)
    page.screenshot(path=str(tmp_path / "leaderboard-dark.png"), full_page=True)
    assert light["text"] != dark["text"], "the labels follow the theme"
    for theme in (light, dark):  # dark text on a light page, light text on a dark one
        assert abs(brightness(theme["text"]) - brightness(theme["page"])) > 100, theme


def colours_of_the_picture(page) -> dict:
    return page.evaluate("""() => {
        const text = document.querySelector('#leaderboard-plot svg text');
        let node = text, page = 'rgba(0, 0, 0, 0)';
        while (node && /rgba\\(0, 0, 0, 0\\)|transparent/.test(page)) {
            node = node.parentElement;
            page = node ? getComputedStyle(node).backgroundColor : 'rgb(255, 255, 255)';
        }
        return {text: getComputedStyle(text).fill, page};
    }""")


def brightness(colour: str) -> float:
    r, g, b = (float(v) for v in re.findall(r"[\d.]+", colour)[:3])
    return 0.299 * r + 0.587 * g + 0.114 * b


def test_stop_drops_the_answers_being_written(page):
    new_chat(page)
    page.get_by_text("Sampling settings").first.click()
    page.get_by_label("Max new tokens").first.fill("512")  # long enough to be stopped midway
    page.get_by_label("Max new tokens").first.press("Enter")
    page.locator("#prompt textarea").fill("Tell me a long story about a river.")
    page.locator("#prompt textarea").press("Enter")
    expect(bubbles(page, 3, "bot")).to_have_count(1, timeout=ANSWER)  # the answers are being written
    page.locator("#stop-btn").click()
    expect(page.locator("#compare-status")).to_contain_text("Stopped: those answers were not saved", timeout=ANSWER)
    page.locator("#best-1").click()
    expect(page.locator("#vote-status")).to_contain_text("Nothing to vote on yet", timeout=ANSWER)
    ask(page, "A short question now?")  # the conversation goes on
