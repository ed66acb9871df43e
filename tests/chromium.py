"""Debian's Chromium (/usr/bin/chromium; see setup.sh), as the browser test, `bench panel` and the screenshots
launch it through Playwright (never `playwright install`).

Tests import it as `chromium` (pytest puts tests/ on sys.path); code run from the repository root (`python -m
bench.panel`, `python -m docs.screenshots.take`) as `tests.chromium`.
"""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
