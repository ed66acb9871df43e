"""Retake docs/screenshots/compare.png (the embedded models in a two-turn conversation with a vote) and
training.png (the Training tab after two rounds on every kind of feedback: votes, better answers, ratings).

    python -m docs.screenshots.take [--data-dir DIR]

Starts `python app.py --preset embedded` on a fresh data directory (its model cache linked to the main one), drives
the page in Debian's Chromium (and gives the rest of the feedback through the API) and writes the screenshots next
to this file. Look at them before committing them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def main(argv=None) -> None:
    from playwright.sync_api import expect, sync_playwright

    from bench.common import stop_app
    from playground.models import models_dir
    from playground.processes import free_port
    from playground.settings import ModelSettings
    from tests.chromium import CHROMIUM, CHROMIUM_ARGS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    cache = models_dir(ModelSettings(data_dir=args.data_dir).resolved_data_dir()).resolve()
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "models").symlink_to(cache)
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        server = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--preset",
                "embedded",
                "--port",
                str(port),
                "--data-dir",
                work,
                "--max-new-tokens",
                "64",
                "--temperature",
                "0.3",
                "--seed",
                "3",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                deadline = time.monotonic() + 300
                while True:
                    try:
                        page.goto(f"http://127.0.0.1:{port}/")
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(1)
                expect(page.locator("#status-line")).to_contain_text("Ready", timeout=300_000)
                status = page.locator("#compare-status")
                for number, message in enumerate(("What is a river?", "Which one is longer, a river or a lake?")):
                    page.locator("#prompt textarea").fill(message)
                    page.locator("#prompt textarea").press("Enter")
                    expect(status).to_contain_text(
                        re.compile(rf"Turn {number + 1} · Which answer is best"), timeout=300_000
                    )
                    if number == 0:
                        page.locator("#best-2").click()
                        expect(page.locator("#vote-status")).to_contain_text("Thanks!", timeout=60_000)
                page.screenshot(path=str(HERE / "compare.png"), full_page=False)
                feedback_for_two_rounds(f"http://127.0.0.1:{port}/")
                page.get_by_role("tab", name="Training").click()
                expect(page.locator("#training-status")).to_contain_text("adapter v2", timeout=900_000)
                expect(page.locator("#stages")).to_contain_text("v2")
                time.sleep(3)  # the plots draw
                page.screenshot(path=str(HERE / "training.png"), full_page=True)
                browser.close()
        finally:
            stop_app(server)
    print(f"wrote {HERE / 'compare.png'}")


def feedback_for_two_rounds(url: str) -> None:
    """Enough of every kind of feedback for two rounds (8 pieces start one): duels, a better answer, ratings."""
    from gradio_client import Client

    from playground.processes import wait_for

    client = Client(url, verbose=False)
    questions = [
        "Name a fruit.",
        "Why is the sea salty?",
        "What is a verb?",
        "How do birds fly?",
        "What is rain?",
        "Name a planet.",
        "Why do leaves fall?",
        "What is a noun?",
    ]
    for round_number in (1, 2):
        before = client.predict(api_name="/stats")["serving_version"]
        for question in questions[4 * (round_number - 1) : 4 * round_number]:
            client.predict(api_name="/new_chat")
            client.predict(question, api_name="/chat")
            client.predict("2", api_name="/vote_best")  # the SFT answer: 2 pairs
            client.predict(3, False, api_name="/vote_thumb")  # one rating
        client.predict("A short, clear answer.", api_name="/correct")  # a demonstration and 3 pairs
        if not wait_for(lambda before=before: client.predict(api_name="/stats")["serving_version"] > before, 900):
            raise RuntimeError(f"round {round_number} did not publish a version within 900 s")


if __name__ == "__main__":
    main()
