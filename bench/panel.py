"""Server CPU seconds spent while idle pages are open: every page refreshes its panels every 2 s.

    python -m playground bench panel [--pages 20] [--seconds 60] [--before REV] [--json]

Runs `python app.py` (embedded models, no trainer, a data set seeded with votes, rounds, steps and versions), opens
`--pages` pages in Chromium and measures the server process's CPU time (user + system) over `--seconds`, with no
page open and then with the pages. The baseline is the same measurement on the code at `--before` (a git revision,
checked out into a temporary worktree), run in the same process, so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BEFORE = "1c66cd3"  # the last commit before the panels were shared

# Run with the code under test (cwd = its checkout): fills a data directory through that code's own store, so the
# layout is the one that code reads. Works with the store before and after data sets.
SEED = r"""
import sys
from playground.models import resolve_preset
data_dir, votes = sys.argv[1], int(sys.argv[2])
preset = resolve_preset("embedded")
try:
    from playground.data_sets import DataSet
    store = DataSet.for_models(data_dir, preset.base, preset.sft).open_store()
except ImportError:
    from playground.store import Store
    store = Store.open(data_dir)

def comparison(prompt, texts, version):
    arms = ("base", "sft", "pref") if len(texts) == 3 else ("pref", "pref")
    rows = [dict(arm=arm, text=text, model="bench", adapter_version=version if arm == "pref" else 0, settings={},
                 seed=i, prompt_tokens=5, new_tokens=len(text.split()), seconds=0.1)
            for i, (arm, text) in enumerate(zip(arms, texts))]
    try:
        return store.add_comparison(prompt, "seed", mode="compare" if len(texts) == 3 else "duel", answers=rows)
    except TypeError:
        cid = store.add_comparison(prompt, "seed", mode="compare" if len(texts) == 3 else "duel")
        return cid, [store.add_answer(cid, r.pop("arm"), slot, **r) for slot, r in enumerate(rows)]

version = 0
for i in range(votes):
    if i and i % (votes // 3) == 0:  # a round every third of the votes
        pairs = [p["id"] for p in store.pending_pairs()]
        run = store.start_round(version, pairs, {"beta": 0.1}, pid=None)
        for step in range(1, 41):
            store.log_step(run, step, {"loss": 0.7 - step / 100, "rewards/margins": step / 40,
                                       "rewards/accuracies": min(1, step / 20)})
        version = store.finish_round(run, f"/nonexistent/round-{run}", {"final_loss": 0.3})
    cid, ids = comparison(f"Seeded question {i}?", [f"base {i}", f"sft {i}", f"pref {i}"], version)
    store.vote_best("seed", cid, [ids[i % 3]])
    cid, ids = comparison(f"Seeded duel {i}?", [f"one {i}", f"two {i}"], version)
    store.vote_pairwise("seed", cid, ids[0], ids[1], "ab"[i % 2])
store.set_serving_version(0)  # the versions' folders do not exist: serve none
print(store.counts())
"""


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(checkout: Path, models_cache: Path, work: Path, args) -> dict:
    """Seed, start the app, measure CPU with no page and with `pages` pages, stop."""
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    from bench.common import start_app, stop_app
    from playground.processes import free_port
    from tests.chromium import CHROMIUM, CHROMIUM_ARGS

    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "models").symlink_to(models_cache)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(checkout)}
    subprocess.run(
        [sys.executable, "-c", SEED, str(data_dir), str(args.votes)],
        cwd=checkout,
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = start_app(checkout, port, data_dir, "--preset", "embedded", "--no-trainer", env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if Client(url, verbose=False).predict(api_name="/stats")["ready"]:
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the app at {checkout} did not get ready")
            time.sleep(1)
        time.sleep(3)
        start = cpu_seconds(server.pid)
        time.sleep(args.seconds)
        idle = cpu_seconds(server.pid) - start
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pages = []
            for _ in range(args.pages):
                # A context per page, as separate visitors: one browser profile opens at most 6 connections to a
                # host, and every Gradio page holds one open for its event stream.
                page = browser.new_context().new_page()
                page.goto(url, wait_until="domcontentloaded", timeout=300_000)
                page.locator("#status-line").filter(has_text="Ready").wait_for(timeout=300_000)
                pages.append(page)
            time.sleep(10)  # past every page's first refresh
            start = cpu_seconds(server.pid)
            time.sleep(args.seconds)
            busy = cpu_seconds(server.pid) - start
            browser.close()
    finally:
        stop_app(server)
    return {
        "no_page_cpu_s": round(idle, 2),
        "pages_cpu_s": round(busy, 2),
        "cpu_s_per_page_minute": round((busy - idle) / args.pages * 60 / args.seconds, 3),
    }


def run(args) -> dict:
    from bench.common import report
    from playground.models import model_folder, models_dir, resolve_preset
    from playground.settings import ModelSettings

    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    preset = resolve_preset("embedded")
    for spec in (preset.base, preset.sft):  # converted once into the main cache, which both runs link to
        model_folder(spec, data_dir, trust_remote_code=False)
    models_cache = models_dir(data_dir).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True, capture_output=True
        )
        try:
            results = {
                "before": measure(before, models_cache, Path(tmp) / "run-before", args),
                "after": measure(ROOT, models_cache, Path(tmp) / "run-after", args),
            }
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    b, a = results["before"], results["after"]
    figures = (
        {f"before_{k}": v for k, v in b.items()}
        | {f"after_{k}": v for k, v in a.items()}
        | {
            "ratio_pages_cpu_before_over_after": round(b["pages_cpu_s"] / a["pages_cpu_s"], 2)
            if a["pages_cpu_s"]
            else None,
            "ratio_added_by_pages_before_over_after": round(
                (b["pages_cpu_s"] - b["no_page_cpu_s"]) / max(a["pages_cpu_s"] - a["no_page_cpu_s"], 1e-9), 2
            ),
        }
    )
    settings = {
        "pages": args.pages,
        "seconds": args.seconds,
        "votes_seeded": 2 * args.votes,
        "before": args.before,
        "preset": "embedded",
        "trainer": False,
    }
    return report("panel", settings, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--votes", type=int, default=150, help="best-of-three votes seeded (and as many duel votes)")
    parser.add_argument("--before", default=BEFORE, help="the git revision to compare with")
    parser.add_argument("--data-dir", default=None, help="where the converted models are cached")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
