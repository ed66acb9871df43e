"""Why this answer: DPO's implicit reward of an answer, token by token.

DPO trains the policy π_θ (the SFT model + a version's LoRA adapter) against a reference π_ref, and that pair
defines a reward for an answer y to a conversation x:
    r(x, y) = β · (log π_θ(y | x) − log π_ref(y | x)),  a sum over y's tokens.
Shown here always with the SFT model as π_ref (adapter off): each token's term says how much more (positive) or less
(negative) the preference-tuned model wants that token than the SFT model did: what the votes pushed up or down, and
comparable across versions. With `--dpo-reference sft` (the default) that is the reward every round trained. A
version trained with `--dpo-reference previous` had its parent as reference: its round raised the margin of
β · (log π_θ − log π_parent), which is shown beside it (`round_reward`, `trained_reference`), and the SFT-relative
reward is the sum of the rounds' own. For a base or SFT answer it shows how the preference-tuned model would score
that answer; at version 0 (no adapter) every term is 0.

The answer is tokenized as trl tokenizes a training pair: the chat template over the conversation with and without
the answer, the answer's tokens being where the two part. So the scored tokens end with the end-of-turn tokens the
template writes after an answer: when to stop is something votes teach too. A conversation too long for the SFT
model's context loses its oldest turns first, as it does for generation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import reward_models
from .prompting import base_prompt, context_budget, fit_conversation
from .settings import RoundSettings
from .store import Store, StoreError

TOP_TOKENS = 5
MOVED = 1e-3  # nats: an answer none of whose tokens moved more than this is shown uncoloured
# Blue/orange: told apart with any colour vision. Gradio lays them at half opacity over the page: these keep a WCAG
# contrast of at least 4.5 with the theme's text on white and on the dark theme's page (the browser test checks).
SHADES = {
    "pushed up a lot": "#2563eb",
    "pushed up": "#60a5fa",
    "pushed down": "#fb923c",
    "pushed down a lot": "#ea580c",
}


@dataclass
class Explanation:
    comparison: int
    answer_id: int
    arm: str
    answer_version: int  # the adapter version that wrote the answer (0 for base, SFT and human answers)
    version: int  # the version whose adapter scored it
    beta: float
    total_reward: float
    logprob_policy: float
    logprob_sft: float
    tokens: list[dict] = field(default_factory=list)  # {"text", "reward", "logprob_policy", "logprob_sft"}
    dropped_turns: int = 0
    reference: str = "the SFT model"  # what total_reward and each token's reward are relative to
    trained_reference: int = 0  # the version this version's last round measured against (0: the SFT model)
    round_reward: float | None = None  # β · (log π_θ − log π_trained_reference), when that is not the SFT model
    # The explicit reward beside the implicit one: the score of this answer by `version`'s reward model (None when
    # that version has none), on its own scale (a Bradley-Terry logit, not β-scaled log-probabilities).
    reward_model_score: float | None = None

    @property
    def top_up(self) -> list[dict]:
        return _top(self.tokens, reverse=True)

    @property
    def top_down(self) -> list[dict]:
        return _top(self.tokens, reverse=False)

    def to_dict(self) -> dict:
        return asdict(self) | {"top_up": self.top_up, "top_down": self.top_down}

    def highlighted(self) -> list[tuple[str, str | None]]:
        """(text, shade) spans for gr.HighlightedText. Shades are relative to the answer's most moved token (at least
        half of its change: "a lot"; at least a tenth: a shade), so the tokens the votes moved most show whatever
        the size of the round; an answer whose tokens all moved less than MOVED nats (version 0) shows none."""
        changes = [token["reward"] / self.beta for token in self.tokens]
        scale = max((abs(c) for c in changes), default=0.0)
        out = []
        for token, change in zip(self.tokens, changes):
            shade = None
            if scale >= MOVED and abs(change) >= 0.1 * scale:
                shade = ("pushed up" if change > 0 else "pushed down") + (
                    " a lot" if abs(change) >= 0.5 * scale else ""
                )
            out.append((token["text"], shade))
        return out


def _top(tokens: list[dict], reverse: bool) -> list[dict]:
    signed = [dict(t, position=i) for i, t in enumerate(tokens) if (t["reward"] > 0 if reverse else t["reward"] < 0)]
    return sorted(signed, key=lambda t: t["reward"], reverse=reverse)[:TOP_TOKENS]


def answer_tokens(tokenizer, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of `answer` after the conversation `messages` (ending with the user's message), as
    trl's DPOTrainer tokenizes a pair: the answer is what the chat template adds after the prompt, end-of-turn tokens
    included. Without a chat template: the base framing, then the answer and the end-of-text token."""
    if getattr(tokenizer, "chat_template", None):
        prompt = _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        full = _ids(tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=True))
        split = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        return full[:split], full[split:]
    text = base_prompt(messages[-1]["content"], messages[:-1])
    prompt = tokenizer(text, add_special_tokens=True).input_ids
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids
    return prompt, answer_ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _ids(encoded) -> list[int]:
    # apply_chat_template returns a list of ids, or a BatchEncoding in some transformers versions.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text, such that they add up to the decoded answer: a character split over several byte tokens
    goes to the token that completes it (decoding one byte token alone would give '�')."""
    texts, before = [], ""
    for end in range(1, len(ids) + 1):
        now = tokenizer.decode(ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if now.endswith("\ufffd") and end < len(ids):
            texts.append("")
            continue
        texts.append(now[len(before) :])
        before = now
    return texts


def find_answer(comparison: dict, arm: str) -> dict:
    """The answer of `comparison` named by `arm`: base, sft, pref or human, or a duel's a / b."""
    answers = comparison["answers"]
    arm = str(arm or "").strip().lower()
    if comparison["mode"] == "duel" and arm in ("a", "b"):
        models = [a for a in answers if a["arm"] != "human"]
        if len(models) >= 2:
            return models["ab".index(arm)]
    named = [a for a in answers if a["arm"] == arm]
    if len(named) == 1 or (named and arm == "human"):
        return named[-1]  # a person's better answer: the latest one
    arms = ", ".join(sorted({a["arm"] for a in answers} | ({"a", "b"} if comparison["mode"] == "duel" else set())))
    if len(named) > 1:
        raise StoreError(f"Comparison {comparison['id']} is a duel with two {arm} answers: name one, a or b.")
    raise StoreError(f"Comparison {comparison['id']} has no {arm or '(empty)'} answer; it has: {arms}.")


def explain(engine, store: Store, comparison_id: int, arm: str, version: int | None = None) -> Explanation:
    """The implicit reward of one stored answer under `version` (default: the serving one). `engine`: any Engine
    holding the SFT model (scoring.Scorer.answer_logprobs). Raises StoreError for an unknown comparison, answer or version,
    PromptError when even the answer's own turn does not fit the model's context."""
    comparison = store.comparison(int(comparison_id))
    if comparison is None:
        raise StoreError(f"Comparison {comparison_id} does not exist.")
    answer = find_answer(comparison, arm)
    version = store.serving_version() if version is None else int(version)
    path, beta, trained_reference = None, RoundSettings.beta, None
    if version:
        row = store.version(version)
        if row is None:
            raise StoreError(f"Adapter version {version} does not exist.")
        path = row["path"]
        hyperparams = row.get("hyperparams") or {}
        beta = float(hyperparams.get("beta") or beta)  # the β it was trained with
        if hyperparams.get("reference_version"):  # trained against its parent (--dpo-reference previous)
            trained_reference = store.version(hyperparams["reference_version"])
    tokenizer = engine.sft.tokenizer
    messages = [*comparison["history"], {"role": "user", "content": comparison["prompt"]}]
    answer_text = answer["text"]
    length = len(answer_tokens(tokenizer, messages[-1:], answer_text)[1])
    messages, dropped = fit_conversation(
        messages,
        lambda m: len(answer_tokens(tokenizer, m, "")[0]),
        context_budget(engine.sft.config, tokenizer),
        answer_tokens=length,
        model="the SFT model",
    )
    prompt_ids, ids = answer_tokens(tokenizer, messages, answer_text)
    policy, reference = engine.scoring.answer_logprobs(prompt_ids, ids, version, path)
    round_reward = None
    if trained_reference:  # that round's own reward too
        parent, _ = engine.scoring.answer_logprobs(
            prompt_ids, ids, trained_reference["version"], trained_reference["path"]
        )
        round_reward = beta * (sum(policy) - sum(parent))
    reward_model_score = None
    if version and reward_models.exists(path):
        scored = engine.rewards.score(version, reward_models.folder_of(path), [(messages, answer_text)])
        reward_model_score = scored[0]
    texts = token_texts(tokenizer, ids)
    tokens = [
        {"text": text, "reward": beta * (p - r), "logprob_policy": p, "logprob_sft": r}
        for text, p, r in zip(texts, policy, reference)
    ]
    return Explanation(
        comparison=comparison["id"],
        answer_id=answer["id"],
        arm=answer["arm"],
        answer_version=answer["adapter_version"],
        version=version,
        beta=beta,
        total_reward=beta * (sum(policy) - sum(reference)),
        logprob_policy=sum(policy),
        logprob_sft=sum(reference),
        tokens=tokens,
        dropped_turns=dropped,
        trained_reference=trained_reference["version"] if trained_reference else 0,
        round_reward=round_reward,
        reward_model_score=reward_model_score,
    )


def summary(explanation: Explanation) -> str:
    """Markdown: the total, what it means, and the tokens pushed most each way."""
    e = explanation
    wrote = {
        "base": "the base model",
        "sft": "the SFT model",
        "human": "a person",
        "pref": f"preference-tuned v{e.answer_version}" if e.answer_version else "the SFT model (v0)",
    }[e.arm]
    if e.version == 0:
        return (
            f"**Implicit reward 0** for this answer by {wrote}: version 0 has no adapter, so the "
            "preference-tuned model *is* the SFT model and nothing was learned yet."
        )

    def listed(tokens):
        return ", ".join(f"`{_visible(t['text'])}` {t['reward']:+.3f}" for t in tokens) or "none"

    lean = "more" if e.total_reward > 0 else "less" if e.total_reward < 0 else "exactly as"
    return (
        f"**Implicit reward {e.total_reward:+.3f}** under v{e.version} (β = {e.beta:g}) for this answer by "
        f"{wrote}: the preference-tuned model finds it {lean} likely {'as' if lean == 'exactly as' else 'than'} the SFT model does "
        f"(log-probability {e.logprob_policy:.1f} vs {e.logprob_sft:.1f} over {len(e.tokens)} tokens).  \n"
        + (
            f"Relative to the SFT model, as for every version. v{e.version} was trained against "
            f"v{e.trained_reference} (`--dpo-reference previous`): relative to v{e.trained_reference} its reward "
            f"is {e.round_reward:+.3f}.  \n"
            if e.trained_reference
            else ""
        )
        + (
            f"The reward model of v{e.version} scores it {e.reward_model_score:+.2f} (an explicit reward, on its own "
            "scale).  \n"
            if e.reward_model_score is not None
            else ""
        )
        + f"**Pushed up most:** {listed(e.top_up)}  \n**Pushed down most:** {listed(e.top_down)}"
        + (f"  \n(The oldest {e.dropped_turns} turn(s) did not fit the model's context.)" if e.dropped_turns else "")
    )


def _visible(text: str) -> str:
    """A token as it can be read inside a code span (white space made visible, backticks kept out)."""
    return text.replace("`", "'").replace("\n", "⏎").replace(" ", "·") or "∅"
