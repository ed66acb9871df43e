"""A Space restart, for real: votes through the running app (gradio_client), the server killed with SIGKILL during a
round, the whole local data directory deleted but the model cache (a Space's ephemeral disk), a fresh start with the
same durable copy (`--persist`, a bucket volume on a Space). Everything comes back with the same ids, the adapters
load, the trainer carries on; a further start duplicates nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from app_process import OFFLINE_ENV, REPO, start_app, wait_until
from gradio_client import Client

from playground.processes import pid_alive

pytestmark = pytest.mark.slow  # every test here loads the embedded models or starts a process

SAMPLING = (0.7, 0.9, 16, None, False)  # temperature, top_p, max_new_tokens, seed, blind


def stats(client) -> dict:
    return client.predict(api_name="/stats")


def vote_on_a_comparison(app, prompt: str) -> str:
    client = Client(app.url, verbose=False)  # a new visitor (session) per vote
    client.predict(prompt, *SAMPLING, api_name="/compare")
    return client.predict("1", api_name="/vote_best")[0]


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cli(models, data_dir: Path, *args) -> str:
    command = [
        sys.executable,
        "-m",
        "playground",
        "-q",
        *args,
        "--base",
        str(models["base"]),
        "--sft",
        str(models["sft"]),
        "--data-dir",
        str(data_dir),
    ]
    done = subprocess.run(
        command, cwd=REPO, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def raw_votes(models, data_dir: Path, out: Path) -> list[dict]:
    cli(models, data_dir, "export", "--what", "votes", "--out", str(out))
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_killed_server_with_a_wiped_disk_comes_back_from_the_durable_copy(tiny_models, tmp_path):
    data_dir, bucket = tmp_path / "data", tmp_path / "bucket"
    # Rounds long enough to be caught running (a tiny model trains an epoch in well under a second).
    args = ["--min-pairs", "2", "--epochs", "40", "--persist", str(bucket)]
    app = start_app(tiny_models, data_dir, args=args)
    try:
        client = Client(app.url, verbose=False)
        wait_until(lambda: stats(client)["ready"], 180, "the models to load")
        assert stats(client)["durable_copy"]["binding"] == "started"

        assert "2 training pairs" in vote_on_a_comparison(app, "What makes a good cup of tea?")
        wait_until(lambda: stats(client)["serving_version"] == 1, 300, "round 1 to publish v1")
        for prompt in ("Name a river in Europe.", "Why do cats purr?"):
            assert vote_on_a_comparison(app, prompt).startswith("✓ Thanks!")
        wait_until(lambda: stats(client)["running_round"], 120, "round 2 to start")
        before = stats(client)
        assert before["durable_copy"]["last_error"] is None
        votes_before = raw_votes(tiny_models, data_dir, tmp_path / "votes-before.jsonl")
        assert stats(client)["running_round"], "round 2 ended before the kill; make rounds longer"

        for pid in [app.process.pid, *children(app.process.pid)]:  # the whole machine goes away mid-round
            os.kill(pid, signal.SIGKILL)
        app.process.wait()
    finally:
        app.stop()
    wait_until(lambda: not any(pid_alive(p) for p in [before["trainer_pid"]] if p), 30, "the trainer to be gone")

    for path in data_dir.iterdir():  # a Space's disk after a restart: only what the image or a cache brings back
        if path.name != "models":
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    app = start_app(tiny_models, data_dir, args=args)
    try:
        client = Client(app.url, verbose=False)
        wait_until(lambda: stats(client)["ready"], 180, "the models to load after the restore")
        after = stats(client)
        assert after["durable_copy"]["binding"] == "restored"
        for key in ("prompts", "comparisons", "answers", "votes", "pairs", "versions"):
            assert after["counts"][key] == before["counts"][key], key
        assert after["serving_version"] == before["serving_version"] == 1
        assert after["engine_version"] == 1  # the restored adapter folder loaded
        assert [v["state"] for v in after["versions"]] == ["ready"]
        assert raw_votes(tiny_models, data_dir, tmp_path / "votes-after.jsonl") == votes_before  # same ids, same rows

        # The trainer carries on: the killed round is marked interrupted and its pairs train in a new round.
        wait_until(lambda: stats(client)["serving_version"] == 2, 300, "the interrupted round's pairs to train")
        rounds = stats(client)["rounds"]
        assert [r["status"] for r in rounds] == ["done", "failed", "done"]
        assert rounds[1]["error"] == "interrupted"
        wait_until(lambda: stats(client)["durable_copy"]["pending"] == 0, 30, "the copy to catch up")
        settled = stats(client)
    finally:
        app.stop()

    app = start_app(tiny_models, data_dir, args=args)  # a plain restart: nothing is restored twice
    try:
        client = Client(app.url, verbose=False)
        wait_until(lambda: stats(client)["ready"], 180, "the models to load")
        again = stats(client)
        assert again["durable_copy"]["binding"] == "continued"
        assert again["counts"] == settled["counts"]
        assert again["serving_version"] == 2
    finally:
        app.stop()
