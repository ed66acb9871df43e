"""The web app: Gradio wiring only. Generation goes through `Playground`, votes and numbers through its `Store`,
ratings through `leaderboard`; nothing here knows about models.

Per-browser-session state (`gr.State`) holds ids only: the current comparison, its answers' ids and the column
order. The voter's session id is Gradio's own session hash (one per page load, one per API client), so it cannot
be forged through a State value. The vote rate limit lives on the server, keyed by that session id: Gradio hands
each event its own copy of a State value, so two quick clicks could both pass a limit kept there.

Every answer is shown in a Textbox, which displays text literally: an answer (or a prompt) containing HTML is
never rendered as HTML.
"""

import collections
import hashlib
import hmac
import json
import logging
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import gradio as gr
import pandas as pd

from . import leaderboard
from .core import Playground
from .generation import ARM_TITLES, ARMS, Sampling
from .models import ModelLoadError, Preset, cached_copy
from .prompting import MAX_PROMPT_CHARS, PromptError, check_prompt, load_prompts
from .store import Store, StoreError, VoteError
from .training import RoundSettings

log = logging.getLogger(__name__)

# Generation is CPU-bound and the engine serializes each model anyway: two at once keeps both models busy without
# piling up threads. Votes and panel refreshes are quick database calls with their own, higher limits, so a long
# generation never makes a vote or the training panel wait.
GENERATION = {"concurrency_id": "generation", "concurrency_limit": 2}
VOTES = {"concurrency_id": "votes", "concurrency_limit": 8}
PANEL = {"concurrency_id": "panel", "concurrency_limit": 4}
DATA = {"concurrency_id": "data", "concurrency_limit": 1}
QUEUE_SIZE = 64

VOTES_PER_MINUTE = 20
REFRESH_SECONDS = 2.0
STREAM_INTERVAL = 0.1  # seconds between streamed updates: the browser cannot show more, the socket need not carry it
DUEL_KEYS = ("a", "b")

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber")
CSS = """
.pg-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.pg-progress-fill { height: 100%; background: var(--primary-500); transition: width 0.5s; }
.pg-answer textarea { font-size: 0.95rem; line-height: 1.45; }
.pg-meta { font-size: 0.85rem; opacity: 0.8; min-height: 1.5em; }
"""


# ---- the server side: models loading in the background, limits, admin token -----------------------------------


class RateLimiter:
    """At most `limit` actions per `window` seconds per key (a sliding window)."""

    def __init__(self, limit: int = VOTES_PER_MINUTE, window: float = 60.0):
        self.limit, self.window = limit, window
        self._times: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def wait_time(self, key: str, now: float | None = None) -> float:
        """0 and the action is counted, or the seconds until the key may act again (not counted)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._times.setdefault(key, collections.deque())
            while times and now - times[0] >= self.window:
                times.popleft()
            if len(times) >= self.limit:
                return self.window - (now - times[0])
            times.append(now)
            if len(self._times) > 10_000:  # forget idle sessions so the dict cannot grow without bound
                self._times = {k: v for k, v in self._times.items() if v and now - v[-1] < self.window}
            return 0.0


@dataclass
class Backend:
    """What the page talks to: the store from the start, the Playground once its models are loaded."""

    preset: Preset
    data_dir: Path
    round_settings: RoundSettings = field(default_factory=RoundSettings)
    admin_token: str | None = None
    votes_per_minute: int = VOTES_PER_MINUTE
    trainer: bool = True
    device: str = "cpu"
    trust_remote_code: bool = False
    precision: str = "auto"
    serve_threads: int | None = None

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        self.store = Store.open(self.data_dir)
        self.playground: Playground | None = None
        self.error: str | None = None
        self.limiter = RateLimiter(self.votes_per_minute)
        self.loading_message = _loading_message(self.preset, self.data_dir)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._leaderboard_cache: tuple[int, list[list]] | None = None

    # -- life cycle -----------------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Load the models in the background (the page is up meanwhile), then follow versions and start the trainer."""
        self._thread = threading.Thread(target=self._load, name="load-models", daemon=True)
        self._thread.start()
        return self._thread

    def _load(self) -> None:
        try:
            playground = Playground.open(self.preset, self.data_dir, device=self.device, precision=self.precision,
                                         serve_threads=self.serve_threads,
                                         store=self.store,
                                         trust_remote_code=self.trust_remote_code, round_settings=self.round_settings)
        except Exception as error:  # the page must say why instead of spinning forever
            self.error = str(error) if isinstance(error, ModelLoadError) else f"{type(error).__name__}: {error}"
            log.error("Model loading failed: %s", self.error)
            return
        with self._lock:
            if self._closed.is_set():  # the app stopped while we were loading: start nothing
                playground.close()
                return
            playground.follow_versions(REFRESH_SECONDS)
            if self.trainer:
                playground.start_trainer()
            self.playground = playground
        log.info("Models ready; the app is serving.")

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self.playground is not None:
                self.playground.close()  # stops the follower and the trainer process

    # -- facts for the page ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.playground is not None

    def status_line(self) -> str:
        if self.error:
            return f"✗ **The models could not be loaded.** {_code(self.error)}"
        if not self.ready:
            return f"**{self.loading_message}** The page works meanwhile; answers need the models."
        engine = self.playground.engine
        trainer = "trainer running" if self.playground.trainer_alive() else (
            "trainer stopped" if self.trainer else "no trainer")
        base, sft = (_code(_short_model(m.name)) for m in (engine.base, engine.sft))
        return (f"✓ Ready · base {base} · SFT {sft} · "
                f"preference-tuned arm serves **adapter v{engine.adapter_version}** · {trainer}")

    def not_ready_message(self) -> str:
        if self.error:
            return "⚠ The models could not be loaded, so no answers can be written. See the line at the top."
        return f"⚠ {self.loading_message} Try again when the line at the top says ready."

    def admin_refusal(self, token: str | None) -> str | None:
        """None when allowed; else why not. Without PLAYGROUND_ADMIN_TOKEN everyone is allowed."""
        if not self.admin_token:
            return None
        if not token:
            return "⚠ This server requires the admin token for that: enter it in the admin token box."
        if not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return "⚠ Wrong admin token."
        return None

    def leaderboard_rows(self, votes: int) -> list[list]:
        # Votes are never changed or deleted, so their count identifies the data the ratings were fitted to.
        cached = self._leaderboard_cache
        if cached is None or cached[0] != votes:
            cached = (votes, leaderboard.table(leaderboard.leaderboard(self.store.export_votes())))
            self._leaderboard_cache = cached
        return cached[1]


def _loading_message(preset: Preset, data_dir: Path) -> str:
    specs = (preset.base, preset.sft)
    converts = any((s.startswith("embedded:") or s.endswith(".gguf")) and cached_copy(s, data_dir) is None
                   for s in specs)
    if converts:
        return "Loading models… converting the embedded GGUF once, about a minute."
    return "Loading models…"


# ---- small formatting helpers ---------------------------------------------------------------------------------


def _code(text) -> str:
    """Dynamic text inside Markdown as a code span: shown literally, whatever characters it holds."""
    text = " ".join(str(text).split())[:300].replace("`", "'")
    return f"`{text}`"


def _title(arm: str, model: str, version: int) -> str:
    suffix = f" v{version}" if arm == "pref" else ""
    return f"#### {ARM_TITLES[arm]}{suffix} · {_code(_short_model(model))}"


def _short_model(model: str) -> str:
    # A local folder's full path is long and says nothing to a visitor; its last part names the model.
    return Path(model).name if model.startswith(("/", ".", "~")) else model


def _blind_title(column: int) -> str:
    return f"#### Answer {column + 1}"


def _meta(answer: dict, revealed: bool) -> str:
    if not answer.get("done", True):
        return f"writing… {answer.get('new_tokens') or 0} tokens"
    parts = [f"{answer.get('new_tokens') or 0} tokens", f"{answer.get('seconds') or 0:.1f} s"]
    if answer.get("finish_reason") == "length":
        parts.append("stopped at the token limit")
    if revealed and answer.get("arm") == "pref" and not answer.get("adapter_version"):
        parts.append("v0 = the SFT model itself (no DPO round yet)")
    return " · ".join(parts)


def _answer_dict(answer) -> dict:
    return {"arm": answer.arm, "model": answer.model, "adapter_version": answer.adapter_version, "text": answer.text,
            "new_tokens": answer.new_tokens, "seconds": answer.seconds, "finish_reason": answer.finish_reason,
            "done": answer.done}


def _sampling(temperature, top_p, max_new_tokens, seed) -> Sampling:
    seed = None if seed in (None, "") else int(seed)
    return Sampling(float(temperature), float(top_p), int(max_new_tokens), seed).checked()


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


# ---- the handlers -------------------------------------------------------------------------------------------


class Handlers:
    """Every event's function, bound to one Backend (tests can call them without a browser)."""

    def __init__(self, backend: Backend, categories: dict[str, str] | None = None):
        self.backend = backend
        self.categories = categories or {}

    # -- compare (best of three) ----------------------------------------------------------------------------
    def compare(self, prompt, temperature, top_p, max_new_tokens, seed, blind, current, request: gr.Request = None):
        """Stream three answers into the columns; yields (header, text, meta) x 3, status, state."""
        order = random.SystemRandom().sample(ARMS, len(ARMS)) if blind else list(ARMS)
        state = {"mode": "compare", "comparison": None, "answers": {}, "order": order, "blind": bool(blind),
                 "revealed": not blind, "streaming": True}

        def render(answers, recorded):
            rows = {key: _answer_dict(a) for key, a in answers.items()}
            if recorded is None:
                return self._columns(rows, state), "Writing three answers" + (
                    " (blind: names hidden until you vote)…" if blind else "…")
            return self._columns(rows, state), (
                "Which answer is best? Click **Best** under it, rank all three, or mark them all bad. "
                f"Good/Bad rate one answer on its own. (Comparison #{recorded.comparison_id})")

        yield from self._streamed(prompt, (temperature, top_p, max_new_tokens, seed), current, state, 9, render,
                                  lambda sampling: self.backend.playground.compare(
                                      prompt, sampling, _session(request), self.categories.get(prompt.strip())))

    def _streamed(self, prompt, sampling_args, current, state, n_outputs, render, start):
        """What compare and duel share: check the prompt and settings, stream at most every STREAM_INTERVAL (the
        last update, which carries the stored ids, always), and turn any failure into a message on the page."""
        keep = [gr.skip()] * n_outputs
        problem = self._generation_problem(prompt)
        if problem:
            yield *keep, problem, current
            return
        try:
            stream = start(_sampling(*sampling_args))
            last = 0.0
            for answers, recorded in stream:
                now = time.monotonic()
                if recorded is None and now - last < STREAM_INTERVAL:
                    continue
                last = now
                if recorded is not None:
                    state |= {"comparison": recorded.comparison_id, "answers": recorded.answer_ids, "streaming": False}
                outputs, status = render(answers, recorded)
                yield *outputs, status, state
        except (PromptError, ValueError) as error:
            yield *keep, f"⚠ {error}", current if state["comparison"] is None else None
        except Exception as error:  # a crash mid-stream: say so; nothing was recorded
            log.exception("Generation failed")
            yield *keep, f"⚠ Generation failed: {_code(error)}", None

    def regenerate(self, prompt, temperature, top_p, max_new_tokens, blind, current, request: gr.Request = None):
        """The same prompt again with fresh random seeds: new answers to compare (and a new comparison to vote on)."""
        yield from self.compare(prompt, temperature, top_p, max_new_tokens, None, blind, current, request)

    def _generation_problem(self, prompt) -> str | None:
        try:
            check_prompt(prompt)
        except PromptError as error:
            return f"⚠ {error}"
        return None if self.backend.ready else self.backend.not_ready_message()

    @staticmethod
    def _columns(rows: dict[str, dict], state: dict) -> list:
        out = []
        for column, key in enumerate(state["order"]):
            row = rows[key]
            if state["revealed"]:
                title = _title(row["arm"], row["model"], row["adapter_version"])
            else:
                title = _blind_title(column)
            out += [title, row["text"], _meta(row, state["revealed"])]
        return out

    def _revealed(self, state: dict) -> list:
        """Headers and meta lines of the current comparison, names shown (after a verdict)."""
        comparison = self.backend.store.comparison(state["comparison"])
        by_id = {a["id"]: a for a in comparison["answers"]}
        state["revealed"] = True
        rows = {key: by_id[answer_id] for key, answer_id in state["answers"].items()}
        columns = self._columns(rows, state)
        return [columns[i] for i in range(len(columns)) if i % 3 != 1]  # headers and meta lines, not the texts

    # -- votes ------------------------------------------------------------------------------------------------
    def _vote_problem(self, state, request, mode: str) -> str | None:
        wait = self.backend.limiter.wait_time(_session(request))
        if wait:
            return (f"⚠ Too many votes: at most {self.backend.limiter.limit} a minute per session. "
                    f"Try again in {wait:.0f} s.")
        if not state or state.get("mode") != mode:
            return "⚠ Nothing to vote on yet: ask something first."
        if state.get("streaming"):
            return "⚠ The answers are still being written; vote when they are complete."
        return None

    def vote_best(self, ranking, state, request: gr.Request = None):
        """ranking: column numbers best first, "2" (just the best) or "2,1,3" (all three)."""
        problem = self._vote_problem(state, request, "compare")
        if problem:
            return problem, *[gr.skip()] * 6, state
        columns = [int(n) for n in re.findall(r"\d+", str(ranking or ""))]
        if not columns or any(not 1 <= c <= len(state["order"]) for c in columns):
            return ("⚠ Rank by column number: `2` for just the best, or `2,1,3` for all three (best first).",
                    *[gr.skip()] * 6, state)
        ids = [state["answers"][state["order"][c - 1]] for c in columns]
        return self._verdict(state, lambda session: self.backend.store.vote_best(session, state["comparison"], ids),
                             request)

    def vote_all_bad(self, state, request: gr.Request = None):
        problem = self._vote_problem(state, request, "compare")
        if problem:
            return problem, *[gr.skip()] * 6, state
        return self._verdict(state, lambda session: self.backend.store.vote_all_bad(session, state["comparison"]),
                             request)

    def _verdict(self, state, vote, request):
        try:
            receipt = vote(_session(request))
        except VoteError as error:
            return f"⚠ {error}", *[gr.skip()] * 6, state
        state = dict(state)
        reveal = self._revealed(state)
        return f"✓ {receipt.message}", *reveal, state

    def vote_thumb(self, column, up, state, request: gr.Request = None):
        """column: 1-3 as shown; up: True for 👍."""
        problem = self._vote_problem(state, request, "compare")
        if problem:
            return problem
        try:
            column = int(column)
        except (TypeError, ValueError):
            column = 0
        if not 1 <= column <= len(state["order"]):
            return f"⚠ Name a column from 1 to {len(state['order'])}."
        key = state["order"][column - 1]
        try:
            receipt = self.backend.store.vote_thumb(_session(request), state["answers"][key], bool(up))
        except VoteError as error:
            return f"⚠ {error}"
        return f"✓ {receipt.message}"

    # -- duel (two samples of the preference-tuned model) ---------------------------------------------------
    def duel(self, prompt, temperature, top_p, max_new_tokens, seed, source, current, request: gr.Request = None):
        """source: "pref" (two samples of the preference-tuned model) or "random" (two arms drawn at random,
        names hidden until the vote)."""
        arms = tuple(random.SystemRandom().sample(ARMS, 2)) if source == "random" else None
        state = {"mode": "duel", "comparison": None, "answers": {}, "streaming": True, "blind": arms is not None}

        def render(answers, recorded):
            out = []
            for key in DUEL_KEYS:
                row = _answer_dict(answers[key])
                who = "" if state["blind"] else f" · preference-tuned v{row['adapter_version']}"
                out += [row["text"], _meta(row, False) + who]
                if recorded is not None:
                    state.setdefault("titles", {})[key] = _title(row["arm"], row["model"], row["adapter_version"])
            if recorded is None:
                return out, "Writing two answers…"
            return out, f"Which is better, A or B? (Or a tie, or both bad.) (Comparison #{recorded.comparison_id})"

        yield from self._streamed(prompt, (temperature, top_p, max_new_tokens, seed), current, state, 4, render,
                                  lambda sampling: self.backend.playground.duel(
                                      prompt, sampling, _session(request), self.categories.get(prompt.strip()),
                                      arms=arms))

    def vote_duel(self, outcome, state, request: gr.Request = None):
        """outcome: 'a', 'b', 'tie' or 'both_bad'."""
        problem = self._vote_problem(state, request, "duel")
        if problem:
            return problem
        try:
            receipt = self.backend.store.vote_pairwise(_session(request), state["comparison"], state["answers"]["a"],
                                                       state["answers"]["b"], str(outcome))
        except VoteError as error:
            return f"⚠ {error}"
        if state.get("blind") and state.get("titles"):
            return f"✓ {receipt.message} A was {state['titles']['a']}; B was {state['titles']['b']}."
        return f"✓ {receipt.message}"

    # -- training ---------------------------------------------------------------------------------------------
    def train_now(self):
        pending = self.backend.store.counts()["pairs_pending"]
        if not pending:
            return "⚠ No new training pairs wait: vote first (a tie, all-bad or thumbs vote makes none)."
        if self.backend.store.running_round():
            return "A round is already running; the pairs that arrived since wait for the next one."
        if self.backend.ready:
            self.backend.playground.train_now()
        else:
            self.backend.store.request_round()
        trainer = "" if self.backend.ready and self.backend.playground.trainer_alive() else (
            " The trainer process is not running yet; it starts when the models are ready.")
        return f"✓ Asked for a round on {pending} pending pair{'s' * (pending != 1)}.{trainer}"

    def rollback(self, version, admin_token):
        refusal = self.backend.admin_refusal(admin_token)
        if refusal:
            return refusal
        try:
            version = int(version)
            if self.backend.ready:
                serving = self.backend.playground.rollback(version)
            else:
                self.backend.store.set_serving_version(version)
                serving = version
        except (TypeError, ValueError):
            return "⚠ Enter a version number (0 = no adapter)."
        except StoreError as error:
            return f"⚠ {error}"
        if serving != version:
            return f"⚠ Version {version} could not be loaded; version {serving} serves instead."
        return f"✓ Now serving version {serving}" + (" (no adapter: the SFT model)." if serving == 0 else ".")

    # -- numbers ------------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        store, pg = self.backend.store, self.backend.playground
        running = store.running_round()
        return {
            "ready": self.backend.ready,
            "status": self.backend.status_line(),
            "error": self.backend.error,
            "serving_version": store.serving_version(),
            "engine_version": pg.engine.adapter_version if pg else None,
            "trainer_alive": bool(pg and pg.trainer_alive()),
            "trainer_pid": pg.trainer.pid if pg and pg.trainer else None,
            "min_pairs": self.backend.round_settings.min_pairs,
            "counts": store.counts(),
            "running_round": _round_summary(running) if running else None,
            "rounds": [_round_summary(r) for r in store.rounds()],
            "versions": [{k: v.get(k) for k in ("version", "parent_version", "state", "reason", "pairs_used",
                                                  "serving", "metrics")} for v in store.versions()],
        }

    def panel(self, sent):
        """The timer's refresh: everything that changes as votes arrive and rounds run.

        Outputs whose value did not change since this session last got them are skipped (gr.skip()), so the
        plots and tables do not redraw every two seconds."""
        stats = self.stats()
        sent = dict(sent or {})
        steps = _steps_frame(self.backend.store.round_steps(), stats["rounds"])
        values = {
            "status": stats["status"],
            "training": _training_status(stats),
            "progress": _progress_html(stats["running_round"]),
            "loss": _plot_frame(steps, "loss"),
            "margin": _plot_frame(steps, "reward_margin"),
            "accuracy": _plot_frame(steps, "reward_accuracy"),
            "versions": _versions_table(stats, self.backend.store.vote_win_rates()),
            "leaderboard": self.backend.leaderboard_rows(stats["counts"]["votes"]),
            "counts": _counts_table(stats["counts"]),
            "stats": stats,
        }
        out = []
        for key, value in values.items():
            digest = _digest(value)
            out.append(gr.skip() if sent.get(key) == digest else value)
            sent[key] = digest
        return *out, sent

    def leaderboard(self):
        return self.backend.leaderboard_rows(self.backend.store.counts()["votes"])

    # -- data -----------------------------------------------------------------------------------------------
    def export(self, what):
        path, n = export_file(self.backend.store, "votes" if what == "votes" else "pairs")
        noun = ("vote" if what == "votes" else "preference pair") + ("" if n == 1 else "s")
        detail = " with their answers" if what == "votes" else " in TRL's format"
        return str(path), f"✓ {n} {noun}{detail}: {path.name}"

    def push(self, hf_token, dataset_repo, model_repo, private, admin_token):
        refusal = self.backend.admin_refusal(admin_token)
        if refusal:
            return refusal
        store = self.backend.store
        serving = store.serving_version()
        adapter = (store.version(serving) or {}).get("path") if serving else None
        return push_to_hub(store, hf_token, dataset_repo, model_repo, adapter, serving, private=bool(private))


def _round_summary(r: dict) -> dict:
    return {k: r.get(k) for k in ("id", "status", "version", "parent_version", "pairs_used", "steps_done",
                                  "steps_total", "error", "started_at", "finished_at")}


def _digest(value) -> str:
    if isinstance(value, pd.DataFrame):
        value = value.to_json()
    return hashlib.sha1(json.dumps(value, default=str, sort_keys=True).encode()).hexdigest()


def _training_status(stats: dict) -> str:
    counts, running = stats["counts"], stats["running_round"]
    pending, need = counts["pairs_pending"], stats["min_pairs"]
    lines = [f"**Serving:** adapter **v{stats['serving_version']}**"
             + (" (none yet: the preference-tuned arm is the SFT model)" if stats["serving_version"] == 0 else "")]
    if stats["engine_version"] is not None and stats["engine_version"] != stats["serving_version"]:
        lines.append(f"Swapping in v{stats['serving_version']} (v{stats['engine_version']} answers meanwhile)…")
    if running:
        lines.append(f"**Round {running['id']} running** on {running['pairs_used']} pairs.")
    elif pending >= need:
        lines.append(f"**{pending} pairs wait**: the trainer starts a round within seconds.")
    else:
        lines.append(f"**Pending pairs:** {pending} of the {need} that start a round (or press Train now).")
    lines.append(f"**Trainer process:** {'running' if stats['trainer_alive'] else 'not running'} · "
                 f"**rounds:** {sum(r['status'] == 'done' for r in stats['rounds'])} done, "
                 f"{sum(r['status'] == 'failed' for r in stats['rounds'])} failed")
    failed = [r for r in stats["rounds"] if r["status"] == "failed"]
    if failed and failed[-1] is stats["rounds"][-1]:
        lines.append(f"Last round failed (its pairs stay pending): {_code(failed[-1]['error'])}")
    return "  \n".join(lines)


def _progress_html(running: dict | None) -> str:
    # Built from integers only: nothing a user typed reaches this HTML.
    if not running:
        return ("<div class='pg-progress'><div class='pg-progress-fill' style='width: 0%'></div></div>"
                "<div class='pg-meta'>No round running.</div>")
    done, total = int(running["steps_done"] or 0), int(running["steps_total"] or 0)
    percent = int(100 * done / total) if total else 0
    return (f"<div class='pg-progress' role='progressbar' aria-valuenow='{done}' aria-valuemax='{total}'>"
            f"<div class='pg-progress-fill' style='width: {percent}%'></div></div>"
            f"<div class='pg-meta'>Round {int(running['id'])}: step {done} of {total or '?'}</div>")


def _steps_frame(steps: list[dict], rounds: list[dict]) -> pd.DataFrame:
    """One row per logged step, x = step index across all rounds, colour = round (with the version it made)."""
    made = {r["id"]: r["version"] for r in rounds}
    rows = []
    for index, s in enumerate(steps, 1):
        version = made.get(s["round_id"])
        label = f"round {s['round_id']}" + (f" → v{version}" if version else "")
        rows.append({"step": index, "round": label, "loss": s["loss"], "reward_margin": s["reward_margin"],
                     "reward_accuracy": s["reward_accuracy"]})
    return pd.DataFrame(rows, columns=["step", "round", "loss", "reward_margin", "reward_accuracy"])


def _plot_frame(steps: pd.DataFrame, column: str) -> pd.DataFrame:
    return steps[["step", "round", column]].dropna().reset_index(drop=True)


VERSION_HEADERS = ["version", "serving", "parent", "state", "pairs", "final loss", "reward margin", "reward acc",
                   "vote win rate"]


def _versions_table(stats: dict, win_rates: list[dict]) -> list[list]:
    wins = {(w["arm"], w["adapter_version"]): w for w in win_rates}

    def rate(arm, version):
        w = wins.get((arm, version))
        return f"{w['win_rate']:.0%} of {w['votes']}" if w else "–"

    def number(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "–"

    rows = [["v0 (SFT, no adapter)", "✓" if stats["serving_version"] == 0 else "", "", "ready", "", "", "", "",
             rate("pref", 0)]]
    for v in stats["versions"]:
        m = v["metrics"] or {}
        rows.append([f"v{v['version']}", "✓" if v["serving"] else "", f"v{v['parent_version'] or 0}",
                     v["state"] + (f" ({v['reason']})" if v["reason"] else ""), number(v["pairs_used"], "d"),
                     number(m.get("final_loss"), ".3f"), number(m.get("final_reward_margin"), ".3f"),
                     number(m.get("final_reward_accuracy"), ".2f"), rate("pref", v["version"])])
    return rows


COUNT_HEADERS = ["what", "count"]


def _counts_table(counts: dict) -> list[list]:
    kinds = {"best": "best-of-three votes", "all_bad": "all-bad votes", "pairwise": "duel (A/B) votes",
             "thumb": "thumbs"}
    rows = [[label, counts["votes_by_kind"].get(kind, 0)] for kind, label in kinds.items()]
    return rows + [["votes in all", counts["votes"]], ["prompts", counts["prompts"]],
                   ["comparisons", counts["comparisons"]], ["training pairs", counts["pairs"]],
                   ["pairs waiting for a round", counts["pairs_pending"]], ["training rounds", counts["rounds"]],
                   ["adapter versions", counts["versions"]]]


# ---- export and the Hub -------------------------------------------------------------------------------------


EXPORT_KEEP_SECONDS = 3600


def export_file(store: Store, what: str = "pairs") -> tuple[Path, int]:
    """Write the store's export to a fresh JSONL file: 'pairs' (TRL conversational format) or 'votes' (raw).

    Files go to the system temp dir (Gradio serves files from there); exports older than an hour are deleted,
    so a long-running server does not fill its disk with them."""
    folder = Path(tempfile.gettempdir()) / "alignment-playground-exports"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        try:
            if time.time() - old.stat().st_mtime > EXPORT_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another export pruned it first
            pass
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = "preference-pairs" if what == "pairs" else "votes"
    path = Path(tempfile.mkdtemp(prefix=f"{name}-{stamp}-", dir=folder)) / f"{name}-{stamp}.jsonl"
    rows = store.export_pairs() if what == "pairs" else store.export_votes()
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            n += 1
    return path, n


def push_to_hub(store: Store, token: str | None, dataset_repo: str, model_repo: str | None = None,
                adapter_path: str | None = None, adapter_version: int = 0, *, private: bool = True,
                endpoint: str | None = None) -> str:
    """Upload the preference pairs (and the serving adapter) to the Hugging Face Hub; a message either way."""
    import huggingface_hub

    dataset_repo, model_repo = (dataset_repo or "").strip(), (model_repo or "").strip()
    if not dataset_repo:
        return "⚠ Enter a dataset repo id, like `your-name/alignment-playground-votes`."
    if huggingface_hub.is_offline_mode():
        return ("⚠ Cannot push: this server runs offline (HF_HUB_OFFLINE is set), so the Hugging Face Hub is out "
                "of reach. Download the export instead.")
    if model_repo and not adapter_path:
        return "⚠ No adapter serves yet (version 0), so there is nothing to upload to a model repo."
    api = huggingface_hub.HfApi(endpoint=endpoint, token=(token or "").strip() or None)
    path, n = export_file(store, "pairs")
    step = "creating the dataset repo"
    try:
        api.create_repo(dataset_repo, repo_type="dataset", exist_ok=True, private=private)
        step = "uploading the pairs"
        api.upload_file(path_or_fileobj=str(path), path_in_repo="preference_pairs.jsonl", repo_id=dataset_repo,
                        repo_type="dataset", commit_message=f"Alignment Playground export: {n} preference pairs")
        done = f"✓ Pushed {n} pairs to the dataset `{dataset_repo}`"
        if model_repo:
            step = "uploading the adapter"
            api.create_repo(model_repo, exist_ok=True, private=private)
            api.upload_folder(folder_path=adapter_path, repo_id=model_repo,
                              commit_message=f"Alignment Playground adapter v{adapter_version}")
            done += f" and adapter v{adapter_version} to `{model_repo}`"
        return done + "."
    except Exception as error:  # network, auth, permissions: all end in one readable line
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        return (f"⚠ Push failed while {step}: {type(error).__name__}: {detail}. "
                "Check the token, the repo id and the network.")


# ---- layout -------------------------------------------------------------------------------------------------


def _sampling_controls(max_new_tokens: int):
    with gr.Accordion("Sampling settings", open=False):
        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
        top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="top_p")
        tokens = gr.Slider(8, 512, value=max_new_tokens, step=8, label="Max new tokens")
        seed = gr.Number(value=None, precision=0, label="Seed (empty = random)")
    return [temperature, top_p, tokens, seed]


def _prompt_box(elem_id: str) -> gr.Textbox:
    return gr.Textbox(label="Prompt", placeholder="Ask something…", lines=2, max_lines=8, elem_id=elem_id,
                      info=f"Up to {MAX_PROMPT_CHARS:,} characters.")


def build_app(backend: Backend, *, max_new_tokens: int = 128) -> gr.Blocks:
    prompts = load_prompts()
    categories = {p["prompt"]: p["category"] for p in prompts}
    examples = [p["prompt"] for p in prompts][:10]
    h = Handlers(backend, categories)

    with gr.Blocks(title="Alignment Playground") as demo:
        gr.Markdown("# Alignment Playground\nOne prompt, three models: **base** (pretrained only), **SFT** "
                    "(instruction-tuned) and **preference-tuned** (SFT + a LoRA adapter trained with DPO on "
                    "the votes cast here). Your votes become training pairs; new adapter versions swap in live.")
        status = gr.Markdown(backend.status_line(), elem_id="status-line", label="status")
        compare_state, duel_state, sent = gr.State(None), gr.State(None), gr.State({})

        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                prompt = _prompt_box("prompt")
                with gr.Row():
                    go = gr.Button("Compare", variant="primary", elem_id="compare-btn", scale=3)
                    regenerate = gr.Button("Regenerate", elem_id="regenerate-btn", scale=1)
                    new_prompt = gr.Button("New prompt", elem_id="new-prompt-btn", scale=1)
                    blind = gr.Checkbox(label="Blind mode (hide model names until you vote)", value=False,
                                        elem_id="blind", scale=2)
                sampling = _sampling_controls(max_new_tokens)
                gr.Examples([[e] for e in examples], inputs=[prompt], label="Example prompts")
                message = gr.Markdown(elem_id="compare-status", label="message")
                columns, best_buttons, thumbs = [], [], []
                with gr.Row(equal_height=True):
                    for i, arm in enumerate(ARMS):
                        with gr.Column():
                            header = gr.Markdown(f"#### {ARM_TITLES[arm]}", elem_id=f"header-{i + 1}",
                                                 label=f"title {i + 1}")
                            # A fixed height (lines = max_lines) keeps the vote buttons of the columns aligned.
                            text = gr.Textbox(label=f"answer {i + 1}", show_label=False, lines=12, max_lines=12,
                                              interactive=False, elem_id=f"answer-{i + 1}", elem_classes=["pg-answer"],
                                              placeholder="The answer appears here.")
                            with gr.Row():
                                best_buttons.append(gr.Button("★ Best", elem_id=f"best-{i + 1}", size="sm"))
                                thumbs.append((gr.Button("Good", elem_id=f"up-{i + 1}", size="sm", min_width=40),
                                               gr.Button("Bad", elem_id=f"down-{i + 1}", size="sm", min_width=40)))
                            meta = gr.Markdown(elem_id=f"meta-{i + 1}", elem_classes=["pg-meta"],
                                               label=f"details {i + 1}")
                        columns.append((header, text, meta))
                with gr.Row():
                    all_bad = gr.Button("All three are bad", elem_id="all-bad")
                    ranking = gr.Textbox(label="Or rank all three (column numbers, best first), then Enter",
                                         placeholder="e.g. 2,1,3", elem_id="ranking", scale=2)
                vote_message = gr.Markdown(elem_id="vote-status", label="vote message")
                # API-only inputs: a thumb names its column and direction.
                thumb_column = gr.Number(visible=False, precision=0, label="column")
                thumb_up = gr.Checkbox(visible=False, label="up")
                thumb_api = gr.Button(visible=False)

            with gr.Tab("Duel", id="duel"):
                gr.Markdown("Two answers from the **preference-tuned** model (same adapter, different random seeds). "
                            "Picking the better one makes an *on-policy* training pair: DPO learns most from choices "
                            "between answers the model itself would give.")
                duel_prompt = _prompt_box("duel-prompt")
                duel_source = gr.Radio([("Preference-tuned model, two samples (on-policy)", "pref"),
                                        ("Two arms drawn at random (blind until you vote)", "random")],
                                       value="pref", label="Answers from", elem_id="duel-source")
                duel_go = gr.Button("Duel", variant="primary", elem_id="duel-btn")
                duel_sampling = _sampling_controls(max_new_tokens)
                duel_message = gr.Markdown(elem_id="duel-status", label="message")
                duel_columns = []
                with gr.Row(equal_height=True):
                    for key in DUEL_KEYS:
                        with gr.Column():
                            gr.Markdown(f"#### Answer {key.upper()}")
                            duel_columns.append((
                                gr.Textbox(label=f"answer {key}", show_label=False, lines=12, max_lines=12,
                                           interactive=False, elem_id=f"duel-answer-{key}", elem_classes=["pg-answer"]),
                                gr.Markdown(elem_classes=["pg-meta"], label=f"details {key}")))
                with gr.Row():
                    duel_buttons = {"a": gr.Button("A is better", elem_id="duel-a"),
                                    "b": gr.Button("B is better", elem_id="duel-b"),
                                    "tie": gr.Button("Tie", elem_id="duel-tie"),
                                    "both_bad": gr.Button("Both bad", elem_id="duel-both-bad")}
                duel_vote_message = gr.Markdown(elem_id="duel-vote-status", label="vote message")
                duel_outcome = gr.Textbox(visible=False, label="outcome")
                duel_api = gr.Button(visible=False)

            with gr.Tab("Training", id="training"):
                training = gr.Markdown(elem_id="training-status", label="training status")
                progress = gr.HTML(_progress_html(None), elem_id="progress", label="progress")
                with gr.Row():
                    train_btn = gr.Button("Train now", elem_id="train-now")
                    train_message = gr.Markdown(label="message")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="step", y="loss", color="round", title="DPO loss", height=260,
                                            x_title="step (all rounds)")
                    margin_plot = gr.LinePlot(x="step", y="reward_margin", color="round", title="Reward margin",
                                              height=260, x_title="step (all rounds)")
                    accuracy_plot = gr.LinePlot(x="step", y="reward_accuracy", color="round", title="Reward accuracy",
                                                height=260, x_title="step (all rounds)", y_lim=[0, 1])
                gr.Markdown("Reward margin: how much more the adapter prefers the chosen answer than the SFT model "
                            "does (in β-scaled log-probability); accuracy: the share of pairs where it prefers the "
                            "chosen one. Both are measured on the round's own training pairs.")
                versions = gr.Dataframe(headers=VERSION_HEADERS, interactive=False, elem_id="versions",
                                        label="Adapter versions")
                with gr.Row():
                    rollback_version = gr.Number(label="Serve version (0 = no adapter)", precision=0, value=0)
                    rollback_token = gr.Textbox(label="Admin token", type="password", visible=bool(backend.admin_token))
                    rollback_btn = gr.Button("Roll back / forward", elem_id="rollback")
                rollback_message = gr.Markdown(label="message")

            with gr.Tab("Leaderboard", id="leaderboard"):
                gr.Markdown(
                    "Bradley-Terry ratings (Elo scale, mean 1000) from the votes: a best-of-three winner beats each "
                    "other answer, a full ranking gives every implied pair, a duel vote is one game and a tie half a "
                    "win each way; all-bad, both-bad and thumbs are left out. The preference-tuned arm at version 0 "
                    "is the SFT model, so it counts as **sft**. 95% intervals: 200 bootstrap resamples of the votes.")
                board = gr.Dataframe(headers=leaderboard.TABLE_HEADERS, interactive=False, elem_id="leaderboard",
                                     label="Ratings")
                board_btn = gr.Button("Refresh", size="sm")

            with gr.Tab("Data", id="data"):
                counts = gr.Dataframe(headers=COUNT_HEADERS, interactive=False, label="Counts", elem_id="counts")
                with gr.Row():
                    export_what = gr.Radio([("Preference pairs (TRL format)", "pairs"), ("Raw votes", "votes")],
                                           value="pairs", label="Export")
                    export_btn = gr.Button("Export JSONL", elem_id="export")
                export_file_out = gr.File(label="Download", elem_id="export-file", height=90)
                export_message = gr.Markdown(label="message")
                with gr.Accordion("Push to the Hugging Face Hub", open=False):
                    hub_token = gr.Textbox(label="Hugging Face token (write access; empty = the server's HF_TOKEN)",
                                           type="password")
                    with gr.Row():
                        dataset_repo = gr.Textbox(label="Dataset repo",
                                                  placeholder="your-name/alignment-playground-votes")
                        model_repo = gr.Textbox(label="Model repo for the serving adapter (optional)",
                                                placeholder="your-name/alignment-playground-adapter")
                    with gr.Row():
                        hub_private = gr.Checkbox(label="Private repos", value=True)
                        push_token = gr.Textbox(label="Admin token", type="password", visible=bool(backend.admin_token))
                        push_btn = gr.Button("Push")
                    push_message = gr.Markdown(label="message")
                with gr.Accordion("Raw numbers (JSON)", open=False):
                    stats_json = gr.JSON(label="stats")
                    stats_btn = gr.Button("Refresh", size="sm")

        # ---- events ----
        compare_inputs = [prompt, *sampling, blind, compare_state]
        compare_outputs = [c for column in columns for c in column] + [message, compare_state]
        go.click(h.compare, compare_inputs, compare_outputs, api_name="compare", **GENERATION)
        prompt.submit(h.compare, compare_inputs, compare_outputs, api_visibility="private", **GENERATION)
        regenerate_inputs = [prompt, *sampling[:3], blind, compare_state]
        regenerate.click(h.regenerate, regenerate_inputs, compare_outputs, api_name="regenerate", **GENERATION)
        fresh_columns = [(f"#### {ARM_TITLES[arm]}", "", "") for arm in ARMS]
        new_prompt.click(lambda: ["", *[c for column in fresh_columns for c in column], "", "", None],
                         None, [prompt, *compare_outputs[:-2], message, vote_message, compare_state],
                         api_visibility="private", queue=False)

        reveal_outputs = [vote_message] + [c for column in columns for c in (column[0], column[2])] + [compare_state]
        ranking.submit(h.vote_best, [ranking, compare_state], reveal_outputs, api_name="vote_best", **VOTES)
        for i, button in enumerate(best_buttons):
            button.click(_fixed(h.vote_best, str(i + 1)), [compare_state], reveal_outputs, api_visibility="private",
                         **VOTES)
        all_bad.click(h.vote_all_bad, [compare_state], reveal_outputs, api_name="vote_all_bad", **VOTES)
        thumb_api.click(h.vote_thumb, [thumb_column, thumb_up, compare_state], [vote_message], api_name="vote_thumb",
                        **VOTES)
        for i, (up, down) in enumerate(thumbs):
            up.click(_fixed(h.vote_thumb, i + 1, True), [compare_state], [vote_message], api_visibility="private",
                     **VOTES)
            down.click(_fixed(h.vote_thumb, i + 1, False), [compare_state], [vote_message], api_visibility="private",
                       **VOTES)

        duel_inputs = [duel_prompt, *duel_sampling, duel_source, duel_state]
        duel_outputs = [c for column in duel_columns for c in column] + [duel_message, duel_state]
        duel_go.click(h.duel, duel_inputs, duel_outputs, api_name="duel", **GENERATION)
        duel_prompt.submit(h.duel, duel_inputs, duel_outputs, api_visibility="private", **GENERATION)
        duel_api.click(h.vote_duel, [duel_outcome, duel_state], [duel_vote_message], api_name="vote_duel", **VOTES)
        for outcome, button in duel_buttons.items():
            button.click(_fixed(h.vote_duel, outcome), [duel_state], [duel_vote_message], api_visibility="private",
                         **VOTES)

        train_btn.click(h.train_now, None, [train_message], api_name="train_now", **VOTES)
        rollback_btn.click(h.rollback, [rollback_version, rollback_token], [rollback_message], api_name="rollback",
                           **VOTES)
        board_btn.click(h.leaderboard, None, [board], api_name="leaderboard", **PANEL)
        stats_btn.click(h.stats, None, [stats_json], api_name="stats", **PANEL)
        export_btn.click(h.export, [export_what], [export_file_out, export_message], api_name="export", **DATA)
        push_btn.click(h.push, [hub_token, dataset_repo, model_repo, hub_private, push_token], [push_message],
                       api_name="push", **DATA)

        panel_outputs = [status, training, progress, loss_plot, margin_plot, accuracy_plot, versions, board, counts,
                         stats_json, sent]
        timer = gr.Timer(REFRESH_SECONDS)
        timer.tick(h.panel, [sent], panel_outputs, api_name="panel", show_progress="hidden", **PANEL)
        demo.load(h.panel, [sent], panel_outputs, api_visibility="private", show_progress="hidden", **PANEL)
    return demo


def _fixed(method, *fixed):
    """`method` with its first arguments fixed (a button per column), keeping gr.Request injection working:
    Gradio finds the request parameter by its annotation, which functools.partial would hide."""
    def handler(state, request: gr.Request = None):
        return method(*fixed, state, request)

    return handler


def launch(demo: gr.Blocks, host: str, port: int, **kwargs) -> None:
    """Queue and start the server without blocking (the caller decides how to wait and how to stop)."""
    demo.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, theme=THEME, css=CSS,
                show_error=True, **kwargs)
