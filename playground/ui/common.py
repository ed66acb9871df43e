"""What every tab of the page shares: the `Page` (the playground and the server's policies: vote limits per session
and per address, who the voter is, the admin token), queue groups, theme, and small formatting helpers.

Every answer is shown in a Textbox, which displays text literally: an answer (or a prompt) containing HTML is never
rendered as HTML. Dynamic text inside Markdown goes through `code()`.
"""

from __future__ import annotations

import collections
import hmac
import html
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ..core import Playground
from ..generation import ARM_TITLES
from ..models import cached_copy
from ..prompting import MAX_PROMPT_CHARS, PromptError, check_prompt
from ..settings import Sampling

log = logging.getLogger(__name__)

# Generation is CPU-bound and the engine serializes each model anyway: two at once keeps both models busy without
# piling up threads. Votes and panel refreshes are quick database calls with their own, higher limits, so a long
# generation never makes a vote or the training panel wait.
GENERATION = {"concurrency_id": "generation", "concurrency_limit": 2}
VOTES = {"concurrency_id": "votes", "concurrency_limit": 8}
PANEL = {"concurrency_id": "panel", "concurrency_limit": 4}
DATA = {"concurrency_id": "data", "concurrency_limit": 1}
QUEUE_SIZE = 64

REFRESH_SECONDS = 2.0
STREAM_INTERVAL = 0.1  # seconds between streamed updates: the browser cannot show more, the socket need not carry it

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber")
CSS = """
.pg-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.pg-progress-fill { height: 100%; background: var(--primary-500); transition: width 0.5s; }
.pg-answer textarea { font-size: 0.95rem; line-height: 1.45; }
.pg-meta { font-size: 0.85rem; opacity: 0.8; min-height: 1.5em; }
/* A chat column's own "clear" empties only the browser's copy of the conversation: the next turn would bring it
   back, so it is hidden (New chat is the way to start over). */
.pg-answer button[aria-label="Clear"] { display: none; }
/* Why this answer: tokens stay one flowing text (a token is often part of a word), and the shades, which Gradio lays
   at half opacity over the page, carry the theme's text colour: black on them is unreadable in the dark theme. */
.pg-explain .token.highlighted { margin: 0 1px; padding: 0 1px; }
.dark .pg-explain .token, .dark .pg-explain .token *, .dark .pg-explain .legend-item {
    color: var(--body-text-color) !important; }
"""


class RateLimiter:
    """At most `limit` actions per `window` seconds per key (a sliding window)."""

    def __init__(self, limit: int, window: float = 60.0):
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


ENABLE_ADMIN = (
    "To enable it, set PLAYGROUND_ADMIN_TOKEN as a Space secret (Settings → Variables and secrets), "
    "restart the Space, and type the token in the admin token box."
)


@dataclass
class Page:
    """What the page's handlers talk to: the playground, and the server's policies."""

    playground: Playground
    votes_per_minute: int = 20
    admin_token: str | None = None
    defaults: Sampling = field(default_factory=Sampling)
    categories: dict[str, str] = field(default_factory=dict)
    votes_per_minute_per_address: int = 60
    # A Space is public: without an admin token its admin actions are closed, not open to every visitor.
    on_space: bool = False
    hub_dataset: str | None = None  # where the durable copy (prompts and votes included) is published
    require_login: bool = False

    def __post_init__(self):
        self.limiter = RateLimiter(self.votes_per_minute)
        self.address_limiter = RateLimiter(self.votes_per_minute_per_address)
        self.loading_message = loading_message(self.playground)

    @property
    def admin_gated(self) -> bool:
        """Whether rollback, Hub pushes and the raw-vote export need the admin token (so its boxes show): whenever
        one is configured, and on a Space always (there they are disabled until one is)."""
        return bool(self.admin_token) or self.on_space

    @property
    def ready(self) -> bool:
        return self.playground.ready

    def not_ready_message(self) -> str:
        if self.playground.error:
            return "⚠ The models could not be loaded, so no answers can be written. See the line at the top."
        return f"⚠ {self.loading_message} Try again when the line at the top says ready."

    def admin_refusal(self, token: str | None, action: str = "That") -> str | None:
        """None when allowed; else why not. With PLAYGROUND_ADMIN_TOKEN configured, only that token is allowed; without
        it, a Space allows nobody (and says how to enable `action`), any other server everyone (one local user)."""
        if self.admin_token:
            if not token:
                return "⚠ This server requires the admin token for that: enter it in the admin token box."
            if not self.admin_authorized(token):
                return "⚠ Wrong admin token."
            return None
        if self.on_space:
            return f"⚠ {action} is disabled on this Space: no admin token is configured. {ENABLE_ADMIN}"
        return None

    def admin_authorized(self, token: str | None) -> bool:
        """An admin token is configured and `token` is it: the only caller who may use the server's own Hugging Face
        login."""
        return bool(self.admin_token and token) and hmac.compare_digest(token.encode(), self.admin_token.encode())

    def data_notice(self) -> str:
        """What happens to what visitors type and vote (shown at the top of the page)."""
        published = (
            f" They are also published to the dataset repo {code(self.hub_dataset)} on the Hugging Face Hub."
            if self.hub_dataset
            else ""
        )
        return (
            "Prompts, answers and votes are stored on this server and used to train the preference-tuned model."
            f"{published} A vote records your Hugging Face user name when you are signed in, else a keyed hash of "
            "your network address (never the address itself)."
        )

    def voter(self, request: gr.Request | None, profile: gr.OAuthProfile | None) -> str | None:
        """Who casts a vote: 'hf:<user>' when signed in, else 'ip:<keyed hash of the client's address>'."""
        return self.playground.voter_of(getattr(profile, "username", None), client_address(request, self.on_space))

    def vote_limit_problem(self, request: gr.Request | None) -> str | None:
        """The per-session limit, then the per-address one (scripts open many sessions from one address); attempts
        count, refused ones too."""
        wait = self.limiter.wait_time(session(request))
        if wait:
            return (
                f"⚠ Too many votes: at most {self.limiter.limit} a minute per session. "
                f"Try again in {math.ceil(wait)} s."
            )
        address = client_address(request, self.on_space)
        wait = self.address_limiter.wait_time(address) if address else 0.0
        if wait:
            return (
                f"⚠ Too many votes from your network address: at most {self.address_limiter.limit} a minute per "
                f"address, whatever the sessions. Try again in {math.ceil(wait)} s."
            )
        return None

    def status_line(self) -> str:
        pg = self.playground
        data_set = f"data set {code(pg.data_set.name)}"
        if pg.error:
            return f"✗ **The models could not be loaded.** {code(pg.error)} · {data_set}"
        if not pg.ready:
            return f"**{self.loading_message}** The page works meanwhile; answers need the models. · {data_set}"
        engine = pg.engine
        trainer = (
            "trainer running" if pg.trainer_alive() else ("trainer stopped" if pg.trainer.wanted else "no trainer")
        )
        base, sft = (code(short_model(m.name)) for m in (engine.base, engine.sft))
        runtimes = engine.describe()
        runtime = f"runtime {code(engine.runtime)}" + (
            " (onnx unavailable, see the log)" if engine.runtime_note else ""
        )
        if runtimes.get("base") != engine.runtime:
            runtime += f" (base arm: {code(runtimes.get('base'))})"
        problem = engine.problem
        if problem:
            return (
                f"⚠ **Serving problem:** {problem} · base {base} · SFT {sft} · {runtime} · adapter "
                f"v{engine.adapter_version} · {trainer} · {data_set}"
            )
        return (
            f"✓ Ready · base {base} · SFT {sft} · {runtime} · "
            f"preference-tuned arm serves **adapter v{engine.adapter_version}** · {trainer} · {data_set}"
            + durable_copy_note(pg.durable_status())
        )


# How long the durable copy may trail before the status line says so (it normally catches up within a second).
COPY_LAG_SECONDS = 10.0


def durable_copy_note(status: dict | None) -> str:
    """The durable copy's part of the status line: quiet while it keeps up, loud when it lags or fails."""
    if status is None:
        return ""
    problem = status.get("last_error") or status.get("hub_error")
    if problem or status["lagging_seconds"] > COPY_LAG_SECONDS:
        behind = f"{status['pending']} changes not copied yet" if status["pending"] else "copy retrying"
        return f" · ⚠ **durable copy lags**: {behind} (votes are safe in the local store meanwhile)" + (
            f": {code(problem)}" if problem else ""
        )
    return f" · durable copy {code(status['target'])}"


def loading_message(playground: Playground) -> str:
    specs = (playground.preset.base, playground.preset.sft)
    converts = any(
        (s.startswith("embedded:") or s.endswith(".gguf")) and cached_copy(s, playground.data_dir) is None
        for s in specs
    )
    if converts:
        return "Loading models… converting the embedded GGUF once, about a minute."
    return "Loading models…"


def code(text) -> str:
    """Dynamic text inside Markdown as a code span: shown literally, whatever characters it holds."""
    text = " ".join(str(text).split())[:300].replace("`", "'")
    return f"`{text}`"


def short_model(model: str) -> str:
    # A local folder's full path is long and says nothing to a visitor; its last part names the model.
    return Path(model).name if model.startswith(("/", ".", "~")) else model


def title(arm: str, model: str, version: int) -> str:
    suffix = f" v{version}" if arm == "pref" else ""
    return f"#### {ARM_TITLES[arm]}{suffix} · {code(short_model(model))}"


def blind_title(column: int) -> str:
    return f"#### Answer {column + 1}"


def meta(answer: dict, revealed: bool) -> str:
    if not answer.get("done", True):
        return f"writing… {answer.get('new_tokens') or 0} tokens"
    if answer.get("error"):
        return f"⚠ not written: {answer['error']}"
    parts = [f"{answer.get('new_tokens') or 0} tokens", f"{answer.get('seconds') or 0:.1f} s"]
    if answer.get("finish_reason") == "length":
        parts.append("stopped at the token limit")
    if revealed and answer.get("arm") == "pref" and not answer.get("adapter_version"):
        parts.append("v0 = the SFT model itself (no DPO round yet)")
    if answer.get("dropped_turns"):
        parts.append(f"did not see the {answer['dropped_turns']} oldest turn(s): the conversation no longer fits")
    return " · ".join(parts)


# ---- chat columns -----------------------------------------------------------------------------------------

_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.DOTALL)  # fenced blocks (also unfinished ones) and code spans


def shown(text: str) -> str:
    """Text for a Chatbot, which renders Markdown: HTML in a prompt or an answer is escaped, so it shows as text and
    never runs (code blocks and spans are left alone: Markdown shows them literally already, and escaping there
    would print `&lt;`)."""
    parts = _CODE.split(str(text))
    return "".join(part if i % 2 else html.escape(part, quote=False) for i, part in enumerate(parts))


def transcript(history: list[dict], kept: list[str]) -> list[dict]:
    """The earlier turns as chat messages, each answer marked with whose answer the conversation kept."""
    messages = []
    for i, message in enumerate(history):
        content = shown(message["content"])
        if message["role"] == "assistant" and i // 2 < len(kept):
            content += f"\n\n*↪ kept: {kept[i // 2]}*"
        messages.append({"role": message["role"], "content": content})
    return messages


EMPTY_ANSWER = "*(no answer: the model stopped at once)*"


def chat_column(earlier: list[dict], prompt: str, text: str | None, done: bool = False) -> list[dict]:
    """One column's chat: the shared earlier turns, the new question and this column's answer (while it streams;
    a finished empty answer says so rather than vanish)."""
    messages = earlier + [{"role": "user", "content": shown(prompt)}]
    if text or done:
        messages.append({"role": "assistant", "content": shown(text) if text else EMPTY_ANSWER})
    return messages


def kept_label(answer: dict | None) -> str:
    if answer is None:
        return ""
    if answer["arm"] == "human":
        return "the person's own answer"
    return f"{ARM_TITLES[answer['arm']]}'s answer"


def answer_dict(answer) -> dict:
    return {
        "arm": answer.arm,
        "model": answer.model,
        "adapter_version": answer.adapter_version,
        "text": answer.text,
        "new_tokens": answer.new_tokens,
        "seconds": answer.seconds,
        "finish_reason": answer.finish_reason,
        "done": answer.done,
        "dropped_turns": answer.dropped_turns,
        "error": answer.error,
    }


def sampling(temperature, top_p, max_new_tokens, seed) -> Sampling:
    seed = None if seed in (None, "") else int(seed)
    return Sampling(float(temperature), float(top_p), int(max_new_tokens), seed).checked()


def session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def client_address(request: gr.Request | None, behind_proxy: bool) -> str | None:
    """The client's network address: the connection's peer, or behind a Space's proxy the forwarded address.

    Behind the proxy the peer is the proxy itself, so the address comes from X-Forwarded-For. Only its LAST entry is
    trusted: each proxy appends the address it received the connection from, and everything to the left of that
    was in the request already, written by the client or whatever it passed through; a script could put a fresh
    address there for every vote and dodge the per-address limit. The last entry is what the Space's proxy saw and
    the client cannot choose it. (Should the Hub's edge ever add hops of its own, the last entry would name a hop
    shared by many visitors: the limit would get stricter, never looser.)"""
    if request is None:
        return None
    if behind_proxy:
        forwarded = _last_forwarded_for(getattr(request, "headers", None))
        if forwarded:
            return forwarded
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or None


def _last_forwarded_for(headers) -> str | None:
    if not headers:
        return None
    # Starlette's headers keep repeated lines (getlist); a dict (a pickled request) keeps one value.
    lines = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [headers.get("x-forwarded-for")]
    entries = [entry.strip() for line in lines if line for entry in line.split(",") if entry.strip()]
    return entries[-1] if entries else None


def fixed(method, *fixed_args):
    """`method` with its first arguments fixed (a button per column), keeping gr.Request and gr.OAuthProfile
    injection working: Gradio finds those parameters by their annotations, which functools.partial would hide."""

    def handler(state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        return method(*fixed_args, state, request, profile)

    return handler


# ---- what the compare and duel tabs share: streaming answers into the page, checking a vote -----------------


def generation_problem(page: Page, prompt) -> str | None:
    try:
        check_prompt(prompt)
    except PromptError as error:
        return f"⚠ {error}"
    return None if page.ready else page.not_ready_message()


def stream_answers(page: Page, prompt, sampling_args, current, state, n_outputs, render, start):
    """Check the prompt and settings, stream at most every STREAM_INTERVAL (the last update, which carries the
    stored ids, always), and turn any failure into a message on the page. Yields (*outputs, message, state)."""
    keep = [gr.skip()] * n_outputs
    problem = generation_problem(page, prompt)
    if problem:
        yield *keep, problem, current
        return
    try:
        stream = start(sampling(*sampling_args))
        last = 0.0
        for answers, recorded in stream:
            now = time.monotonic()
            finished = all(answer.done for answer in answers.values())
            if recorded is None and not finished and now - last < STREAM_INTERVAL:
                continue
            last = now
            if recorded is not None:
                state |= {"comparison": recorded.comparison_id, "answers": recorded.answer_ids, "streaming": False}
            outputs, status = render(answers, recorded)
            failed = next((answer.error for answer in answers.values() if answer.error), None)
            if failed and finished:
                state |= {"streaming": False}
                status = f"⚠ Not saved: an answer could not be written. {failed} Ask again once it is back."
            yield *outputs, status, state
    except (PromptError, ValueError) as error:
        yield *keep, f"⚠ {error}", current if state["comparison"] is None else None
    except Exception as error:  # a crash mid-stream: say so; nothing was recorded
        log.exception("Generation failed")
        yield *keep, f"⚠ Generation failed: {code(error)}", None


def vote_problem(page: Page, state, request, mode: str, profile=None) -> str | None:
    if page.require_login and profile is None:
        return "⚠ Sign in with Hugging Face to vote: the button at the top of the page."
    problem = page.vote_limit_problem(request)
    if problem:
        return problem
    if not state or state.get("mode") != mode:
        return "⚠ Nothing to vote on yet: ask something first."
    if state.get("streaming"):
        return "⚠ The answers are still being written; vote when they are complete."
    if state.get("comparison") is None:  # a new chat, or answers stopped before they were saved
        return "⚠ Nothing to vote on yet: ask something first."
    return None


def sampling_controls(defaults: Sampling):
    with gr.Accordion("Sampling settings", open=False):
        temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
        top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="top_p")
        tokens = gr.Slider(8, 512, value=min(max(defaults.max_new_tokens, 8), 512), step=8, label="Max new tokens")
        seed = gr.Number(value=defaults.seed, precision=0, label="Seed (empty = random)")
    return [temperature, top_p, tokens, seed]


def prompt_box(elem_id: str) -> gr.Textbox:
    return gr.Textbox(
        label="Prompt",
        placeholder="Ask something…",
        lines=2,
        max_lines=8,
        elem_id=elem_id,
        info=f"Up to {MAX_PROMPT_CHARS:,} characters.",
    )
