"""Retake docs/screenshots/compare.png: the embedded models in a two-turn conversation with a vote.

    python docs/screenshots/take.py [--data-dir DIR]

Starts `python app.py --preset embedded` on a fresh data directory (its model cache linked to the main one), drives
the page in Debian's Chromium and writes the screenshot next to this file. Look at it before committing it.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> None:
    from playwright.sync_api import expect, sync_playwright

    from bench.common import free_port, stop_app
    from playground.models import models_dir
    from playground.settings import ModelSettings
    from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    cache = models_dir(ModelSettings(data_dir=args.data_dir).resolved_data_dir()).resolve()
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "models").symlink_to(cache)
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        server = subprocess.Popen([sys.executable, "app.py", "--preset", "embedded", "--port", str(port),
                                   "--data-dir", work, "--max-new-tokens", "64", "--temperature", "0.3",
                                   "--seed", "3"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
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
                    expect(status).to_contain_text(re.compile(rf"Turn {number + 1} · Which answer is best"),
                                                   timeout=300_000)
                    if number == 0:
                        page.locator("#best-2").click()
                        expect(page.locator("#vote-status")).to_contain_text("Thanks!", timeout=60_000)
                page.screenshot(path=str(HERE / "compare.png"), full_page=False)
                browser.close()
        finally:
            stop_app(server)
    print(f"wrote {HERE / 'compare.png'}")


if __name__ == "__main__":
    main()
