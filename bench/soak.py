"""Nothing lost under random kills: the real app with a durable copy, scripted sessions that chat, vote, rate and
write better answers while rounds train, and a SIGKILL every few seconds to a random part of it.

    python -m playground bench soak --minutes M --sessions N --kill-every S [--runtime onnx|vllm|torch] [--json]
        [--preset P | --base B --sft S] [--tokens T] [--bound SECONDS] [--seed K] [--app-args "..."]

The app runs as a user starts it (`python app.py --persist DIR`), in a process group of its own. Every `--kill-every`
seconds one of these gets SIGKILL, drawn at random among those running: the server's whole process group (its
trainer, decode workers and vLLM server die with it; started again at once, as a Space restarts it), the trainer, a
decode worker, the vLLM server. Sessions are gradio_client clients of the page's own API (compare, duel, best /
ranking, thumbs, better answers); a session that loses its server connects again.

At the end the app stops and every vote, rating and better answer the page acknowledged (a reply starting with ✓) is
looked up, by session, turn and kind, in the store and in a data set restored from the durable copy by the `restore`
command. Figures (`--json`: exactly these keys): acknowledged / stored / restored per vote kind (stored and restored
count the acknowledged ones found), lost (acknowledged but missing from either, summed), kills (at, process, back_s:
seconds until it serves again), stuck (requests over `--bound`), turns_per_minute, p50_s / p95_s (seconds from asking
to the last answer of a turn), errors by kind, rounds {done, interrupted}. A request refused or cut while something
was being restarted is not an error (`refused` beside the figures counts them); one that hangs is.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.load import PROMPTS, percentile

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("best", "pairwise", "thumb", "correction")  # the vote kinds the sessions cast, as the store names them
COMPARISON = re.compile(r"Comparison #(\d+)")
# What a kill can pick besides the server (the group's leader): its children, told apart by bench.common.process_part.
PARTS = ("trainer", "decode_worker", "vllm")


class Hung(Exception):
    """A request that did not finish within the bound."""


class App:
    """`python app.py` in a process group of its own, started again after its group is killed."""

    def __init__(self, command: list[str], work: Path):
        self.command, self.work, self.starts = command, work, 0
        self.process: subprocess.Popen | None = None
        self.url = None
        self.outages: list[list[float]] = []  # [from, to] monotonic times while something was being restarted

    def start(self) -> None:
        from playground.processes import free_port

        self.starts += 1
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        with open(self.work / f"app-{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen(
                [*self.command, "--port", str(port)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the server's group is killed whole
            )

    def stats(self) -> dict | None:
        from gradio_client import Client

        try:
            return Client(self.url, verbose=False).predict(api_name="/stats")
        except Exception:  # not up yet
            return None

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited ({self.process.returncode}): see {self.work}/app-{self.starts}.log")
            if (self.stats() or {}).get("ready"):
                return True
            time.sleep(1)
        return False

    def parts(self, part: str) -> list:
        import psutil

        from bench.common import process_part

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []
        found = []
        for child in children:
            try:
                if process_part(" ".join(child.cmdline())) == part:
                    found.append(child)
            except psutil.Error:  # ended between listing and reading
                continue
        return found

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self) -> None:
        """As a service manager would: SIGTERM (the trainer stops, the durable copy is flushed), then SIGKILL."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            pass
        self.kill_group()

    def restarted_during(self, start: float, end: float) -> bool:
        return any(begin <= end + 2.0 and (until is None or until >= start) for begin, until in self.outages)


class Tally:
    """What the sessions saw, thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acknowledged: Counter = Counter()  # (kind, session, comparison) -> votes the page thanked for
        self.turns: list[float] = []
        self.errors: Counter = Counter()  # "hang": a request over the bound (the figures' `stuck`)
        self.refused: Counter = Counter()

    def add(self, counter: str, key, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[key] += n


class Session(threading.Thread):
    """One scripted visitor: a turn (compare, sometimes a duel), then a vote, ratings or a better answer."""

    def __init__(self, number: int, app: App, tally: Tally, args, deadline: float):
        super().__init__(name=f"session-{number}", daemon=True)
        self.app, self.tally, self.args, self.deadline = app, tally, args, deadline
        self.rng = random.Random(args.seed * 1000 + number)
        self.client = None

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            started = time.monotonic()
            try:
                if self.client is None or self.client.src != self.app.url:
                    from gradio_client import Client

                    self.client = Client(self.app.url, verbose=False)
                self.turn()
            except Hung:
                self.client = None
            except Exception as error:  # a server that went away, or a defect: which one is decided by the clock
                self.client = None
                if self.app.restarted_during(started, time.monotonic()):
                    self.tally.add("refused", "restart")
                else:
                    self.tally.add("errors", type(error).__name__)
                time.sleep(1.0)

    def call(self, *args, api_name: str):
        job = self.client.submit(*args, api_name=api_name)
        try:
            return job.result(timeout=self.args.bound)
        except TimeoutError:
            job.cancel()
            self.tally.add("errors", "hang")
            raise Hung(f"{api_name} took over {self.args.bound} s") from None

    def refusal(self, message: str, started: float) -> None:
        """A reply that is not a thank-you: why, counted."""
        if "Too many votes" in message:
            self.tally.add("refused", "rate_limit")
            wait = re.search(r"Try again in (\d+) s", message)
            pause = float(wait.group(1)) if wait else 5.0  # as a person told to wait would, until the run ends
            time.sleep(max(0.0, min(pause, self.deadline - time.monotonic())))
        elif "Loading models" in message or "Try again when" in message:
            self.tally.add("refused", "loading")
        elif self.app.restarted_during(started, time.monotonic()):
            self.tally.add("refused", "restart")
        elif "Nothing to vote on yet" in message or "answers are still being written" in message:
            self.tally.add("refused", "session_reset")  # a restarted server knows no earlier session state
        else:
            self.tally.add("errors", "refused: " + message[:60])

    def turn(self) -> None:
        prompt = self.rng.choice(PROMPTS) + f" (visitor {self.name}, {self.rng.randrange(10**6)})"
        sampling = (0.8, 0.95, self.args.tokens, None)
        duel = self.rng.random() < 0.2
        started = time.monotonic()
        if duel:
            out = self.call(prompt, *sampling, api_name="/duel")
        else:
            out = self.call(prompt, *sampling, False, api_name="/compare")
        message = out[-1] if duel else out[9]
        found = COMPARISON.search(str(message))
        if not found:
            return self.refusal(str(message), started)
        with self.tally.lock:
            self.tally.turns.append(time.monotonic() - started)
        self.feedback(int(found.group(1)), duel)

    def feedback(self, comparison: int, duel: bool) -> None:
        def acknowledged(kind: str, reply, started: float) -> None:
            text = str(reply[0] if isinstance(reply, (list, tuple)) else reply)
            if text.startswith("✓"):
                self.tally.add("acknowledged", (kind, self.client.session_hash, comparison))
            else:
                self.refusal(text, started)

        started, roll = time.monotonic(), self.rng.random()
        if duel:
            acknowledged("pairwise", self.call(self.rng.choice(("a", "b", "tie")), api_name="/vote_duel"), started)
        elif roll < 0.5:
            order = self.rng.sample("123", 3)
            ranking = ",".join(order) if self.rng.random() < 0.5 else order[0]
            acknowledged("best", self.call(ranking, api_name="/vote_best"), started)
        elif roll < 0.8:
            for column in self.rng.sample((1, 2, 3), self.rng.choice((1, 2))):
                reply = self.call(column, self.rng.random() < 0.5, api_name="/vote_thumb")
                acknowledged("thumb", reply, started)
        else:
            better = f"A short, plain answer, written by {self.name} at {time.time():.3f}."
            acknowledged("correction", self.call(better, api_name="/correct"), started)


def votes_in(store_file: Path) -> Counter:
    """(kind, session, comparison) -> votes of the store at `store_file`."""
    with sqlite3.connect(f"file:{store_file}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT kind, session_id, comparison_id, count(*) FROM votes GROUP BY 1, 2, 3").fetchall()
    return Counter({(kind, session, comparison): n for kind, session, comparison, n in rows})


def rounds_in(store_file: Path) -> tuple[dict, Counter]:
    """({"done", "interrupted"}, other failures by error) of the store's rounds; a round still 'running' once its app
    has stopped was cut short too."""
    with sqlite3.connect(f"file:{store_file}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT status, error FROM rounds").fetchall()
        unfinished = conn.execute(
            "SELECT count(*) FROM pairs p JOIN rounds r ON r.id = p.round_id WHERE r.status <> 'done'"
        ).fetchone()[0]
    rounds = {"done": 0, "interrupted": 0}
    failures = Counter()
    for status, error in rows:
        if status == "done":
            rounds["done"] += 1
        elif status == "running" or error == "interrupted":
            rounds["interrupted"] += 1
        else:
            failures[f"round failed: {str(error)[:60]}"] += 1
    if unfinished:
        failures["pairs marked trained by an unfinished round"] += unfinished
    return rounds, failures


def restored_store(model_args: list[str], persist: Path, work: Path) -> Path:
    """A data set restored from the durable copy by the real `restore` command, in an empty data directory."""
    target = work / "restored"
    command = [sys.executable, "-m", "playground", "-q", "restore", "--from", str(persist), "--data-dir", str(target)]
    subprocess.run([*command, *model_args], cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    return next(target.rglob("playground.sqlite3"))


def killer(app: App, args, stop: threading.Event, began: float, kills: list) -> None:
    rng = random.Random(args.seed)
    planned = began
    while True:
        planned += args.kill_every  # on a schedule: a slow recovery delays the next kill, never the ones after it
        if stop.wait(max(0.0, planned - time.monotonic())):
            return
        running = {"server": [app.process]} | {part: app.parts(part) for part in PARTS}
        part = rng.choice(sorted(name for name, processes in running.items() if processes))
        at = time.monotonic()
        app.outages.append([at, None])
        if part == "server":
            app.kill_group()
            app.start()  # at once, as a Space restarts a crashed app
            back = app.wait_ready(args.restart_timeout)
        else:
            victim = rng.choice(running[part])
            victim.kill()
            back = _replaced(app, part, victim.pid, args.restart_timeout)
        app.outages[-1][1] = time.monotonic()
        kills.append(
            {"at": round(at - began, 1), "process": part, "back_s": round(time.monotonic() - at, 1) if back else None}
        )


def _replaced(app: App, part: str, old_pid: int, timeout: float) -> bool:
    """Whether a new process of `part` runs (and the app serves) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.pid != old_pid for p in app.parts(part)) and (app.stats() or {}).get("ready"):
            return True
        time.sleep(0.5)
    return False


def run(args) -> dict:
    from bench.common import report
    from playground.models import models_dir
    from playground.settings import ModelSettings

    model_args = ["--base", args.base, "--sft", args.sft] if args.base else ["--preset", args.preset]
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    data_dir, persist = work / "data", work / "durable"
    data_dir.mkdir()
    cache = models_dir(ModelSettings(data_dir=args.data_dir).resolved_data_dir())
    cache.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(cache.resolve())  # the converted models, not the votes, are shared
    command = [sys.executable, "app.py", *model_args, "--data-dir", str(data_dir), "--persist", str(persist)]
    command += ["--runtime", args.runtime, "--host", "127.0.0.1"]
    # Every session comes from 127.0.0.1: the per-address limit would refuse most votes of a crowd from one address.
    command += ["--votes-per-minute-per-address", str(60 * args.sessions), *shlex.split(args.app_args)]
    app, tally, kills, stop = App(command, work), Tally(), [], threading.Event()
    app.start()
    if not app.wait_ready(args.start_timeout):
        app.kill_group()
        raise RuntimeError(f"the app did not get ready in {args.start_timeout:.0f} s: see {work}/app-1.log")
    began = time.monotonic()
    sessions = [Session(n, app, tally, args, began + 60 * args.minutes) for n in range(args.sessions)]
    for session in sessions:
        session.start()
    kill_thread = threading.Thread(target=killer, args=(app, args, stop, began, kills), daemon=True)
    kill_thread.start()
    for session in sessions:
        session.join(timeout=max(0.0, began + 60 * args.minutes - time.monotonic()) + args.bound + 60)
    stop.set()
    kill_thread.join()
    minutes = (min(time.monotonic(), began + 60 * args.minutes) - began) / 60  # no turn starts after the end
    app.wait_ready(args.restart_timeout)
    app.stop()

    store_file = next(data_dir.rglob("playground.sqlite3"))
    stored, restored = votes_in(store_file), votes_in(restored_store(model_args, persist, work))
    rounds, failures = rounds_in(store_file)
    by_kind = {name: Counter() for name in ("acknowledged", "stored", "restored")}
    lost = 0
    for key, n in tally.acknowledged.items():
        by_kind["acknowledged"][key[0]] += n
        by_kind["stored"][key[0]] += min(n, stored[key])
        by_kind["restored"][key[0]] += min(n, restored[key])
        lost += n - min(n, stored[key], restored[key])
    figures = {
        **{name: {kind: counts[kind] for kind in KINDS} for name, counts in by_kind.items()},
        "lost": lost,
        "kills": kills,
        "stuck": tally.errors["hang"],
        "turns_per_minute": round(len(tally.turns) / minutes, 1),
        "p50_s": round(percentile(tally.turns, 0.5), 2) if tally.turns else None,
        "p95_s": round(percentile(tally.turns, 0.95), 2) if tally.turns else None,
        "errors": dict(tally.errors + failures),
        "rounds": rounds,
    }
    settings = {
        "minutes": args.minutes,
        "sessions": args.sessions,
        "kill_every_s": args.kill_every,
        "runtime": args.runtime,
        "models": model_args,
        "max_new_tokens": args.tokens,
        "bound_s": args.bound,
        "seed": args.seed,
        "app_args": args.app_args,
        "refused": dict(tally.refused),  # not errors: cut by a restart, or the rate limit
        "work": str(work),
    }
    return report("soak", settings, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the sessions run")
    parser.add_argument("--sessions", type=int, default=6, help="scripted sessions at once")
    parser.add_argument("--kill-every", type=float, default=100.0, help="seconds between two kills")
    parser.add_argument("--runtime", default="onnx", choices=("onnx", "vllm", "torch"))
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--base", default=None, help="with --sft: these models instead of the preset's")
    parser.add_argument("--sft", default=None)
    parser.add_argument("--data-dir", default=None, help="whose model cache the app uses (default: the app's own)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    parser.add_argument("--bound", type=float, default=300.0, help="seconds after which a request counts as stuck")
    parser.add_argument("--seed", type=int, default=0, help="what the sessions say and which process a kill picks")
    parser.add_argument("--app-args", default="", help='more options of app.py, e.g. "--min-pairs 4"')
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds the first start may take")
    parser.add_argument("--restart-timeout", type=float, default=600.0, help="seconds a restart may take")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if bool(args.base) != bool(args.sft):
        parser.error("--base and --sft go together")
    run(args)


if __name__ == "__main__":
    main()
