"""The `Page`: what every tab's handlers talk to. The playground, and the server's policies: vote limits per session
and per address, who the voter is, the admin token; and who is calling (session, network address)."""

from __future__ import annotations

import collections
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import gradio as gr

from ..core import Playground
from ..settings import Sampling
from .status import loading_message, status_line
from .text import code

log = logging.getLogger(__name__)


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

    def reward_verdict(self, receipt) -> str:
        """After a vote that made pairs: whether the serving reward model agreed (judged before any round trains on
        it); empty without a reward model, or if judging failed (the vote is recorded either way)."""
        if not receipt.pairs_created or not self.ready:
            return ""
        try:
            verdict = self.playground.judge_vote(receipt.vote_id)
        except Exception:  # a judgment is a measurement: the vote stands without it
            log.exception("Judging vote %s failed", receipt.vote_id)
            return ""
        return f" {verdict}" if verdict else ""

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
        return status_line(self.playground, self.loading_message)


# ---- who is calling -------------------------------------------------------------------------------------------


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
