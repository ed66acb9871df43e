"""Multi-turn conversations on the engine side: validation, each arm's framing of earlier turns, the context
budget (oldest whole turns dropped, per model), Playground.compare/duel passing history, `generate --history`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from playground import cli, prompting
from playground.core import ChatTurn, Playground
from playground.generation import Engine
from playground.models import load_model
from playground.prompting import (
    BASE_TEMPLATE,
    PromptError,
    base_prompt,
    chat_prompt,
    check_history,
    context_budget,
    fit_conversation,
)
from playground.runtimes import torch_runtime
from playground.settings import Sampling

GREEDY = Sampling(temperature=0, max_new_tokens=6, seed=0)

HISTORY = [
    {"role": "user", "content": "Where is Paris?"},
    {"role": "assistant", "content": "Paris is in France."},
    {"role": "user", "content": "And Madrid?"},
    {"role": "assistant", "content": "Madrid is in Spain.\n\nIt is the capital."},
]
PROMPT = "Which one is bigger?"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def engine(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("conversations")
    return Engine(load_model(str(tiny_models["base"]), folder), load_model(str(tiny_models["sft"]), folder))


@pytest.fixture()
def inputs(engine, monkeypatch):
    """The text each model's decode received (Engine._run, one call per model), while still generating for real."""
    seen = {}
    original = engine._run

    def spy(role, text, *args, **kwargs):
        seen[role] = text
        return original(role, text, *args, **kwargs)

    monkeypatch.setattr(engine, "_run", spy)
    return seen


def tokens(tokenizer, text) -> int:
    """Prompt tokens as the engine feeds them: a chat template brings its own special tokens."""
    return len(tokenizer(text, add_special_tokens=not tokenizer.chat_template).input_ids)


# ---- framing ------------------------------------------------------------------------------------------------


def test_base_framing_of_a_two_turn_conversation():
    two_turns = "Q: Where is Paris?\nA: Paris is in France.\n\nQ: Which one is bigger?\nA:"
    assert base_prompt(PROMPT, HISTORY[:2]) == two_turns
    assert base_prompt(" Which one is bigger? ", HISTORY) == (
        "Q: Where is Paris?\nA: Paris is in France.\n\n"
        "Q: And Madrid?\nA: Madrid is in Spain.\n\nIt is the capital.\n\n"
        "Q: Which one is bigger?\nA:"
    )
    assert base_prompt(PROMPT) == base_prompt(PROMPT, []) == BASE_TEMPLATE.format(prompt=PROMPT)
    assert base_prompt(PROMPT) == "Q: Which one is bigger?\nA:"


def test_chat_framing_without_history_is_the_single_turn_one_and_without_a_template_the_base_one(engine):
    tokenizer = engine.sft.tokenizer
    single = tokenizer.apply_chat_template([user(PROMPT)], tokenize=False, add_generation_prompt=True)
    assert chat_prompt(tokenizer, PROMPT) == chat_prompt(tokenizer, PROMPT, []) == single
    # a chat model without a chat template gets the base framing, conversation included
    assert not engine.base.tokenizer.chat_template
    assert chat_prompt(engine.base.tokenizer, PROMPT, HISTORY) == base_prompt(PROMPT, HISTORY)


def test_chat_arms_see_the_chat_template_of_the_whole_conversation(engine, inputs):
    answers = engine.generate(PROMPT, GREEDY, history=HISTORY)
    sft_tokenizer, base_tokenizer = engine.sft.tokenizer, engine.base.tokenizer
    expected = sft_tokenizer.apply_chat_template([*HISTORY, user(PROMPT)], tokenize=False, add_generation_prompt=True)
    assert inputs["sft"] == expected
    assert expected.count("<|im_start|>user") == 3 and expected.endswith("<|im_start|>assistant\n")
    assert answers["sft"].prompt_tokens == answers["pref"].prompt_tokens == tokens(sft_tokenizer, expected)
    assert inputs["base"] == base_prompt(PROMPT, HISTORY)
    assert answers["base"].prompt_tokens == tokens(base_tokenizer, inputs["base"])
    assert all(a.dropped_turns == 0 and a.to_dict()["dropped_turns"] == 0 for a in answers.values())


def test_without_history_the_input_is_exactly_the_single_turn_one(engine, inputs):
    single = engine.generate(PROMPT, GREEDY)
    texts = dict(inputs)
    for history in (None, []):
        again = engine.generate(PROMPT, GREEDY, history=history)
        assert inputs == texts
        assert {k: (a.text, a.prompt_tokens) for k, a in again.items()} == {
            k: (a.text, a.prompt_tokens) for k, a in single.items()
        }
    assert texts["base"] == "Q: Which one is bigger?\nA:"
    assert texts["sft"] == engine.sft.tokenizer.apply_chat_template(
        [user(PROMPT)], tokenize=False, add_generation_prompt=True
    )


class Script(LogitsProcessor):
    """Makes the model write `script` token by token (then end), whatever its weights say."""

    def __init__(self, script: list[int], eos: int):
        self.script, self.eos, self.prompt_len = script, eos, None

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.script[step] if step < len(self.script) else self.eos] = 0.0
        return forced


def test_a_base_answer_in_a_conversation_stops_before_it_invents_the_next_turn(engine, inputs, monkeypatch):
    tokenizer = engine.base.tokenizer
    script = tokenizer(" Madrid, by far.\nQ: And Rome?\nA: Rome is smaller.", add_special_tokens=False).input_ids
    processor = Script(script, tokenizer.eos_token_id)
    monkeypatch.setattr(torch_runtime, "LogitsProcessorList", lambda: LogitsProcessorList([processor]))
    answer = engine.generate(
        PROMPT, Sampling(temperature=0, max_new_tokens=len(script) + 4, seed=0), arms=("base",), history=HISTORY
    )["base"]
    assert inputs["base"] == base_prompt(PROMPT, HISTORY)
    assert processor.prompt_len == answer.prompt_tokens  # the script ran on this conversation's input
    assert answer.text == "Madrid, by far."
    assert answer.finish_reason == "stop" and answer.new_tokens < len(script)


# ---- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "history, message",
    [
        ("not a list", "must be a list"),
        ([["user", "hi"]], "is not a"),
        ([{"role": "user"}], "is not a"),
        ([{"role": "system", "content": "Be brief."}, assistant("ok")], "role 'system'"),
        ([assistant("Hello!"), user("Hi")], "message 1 is from the assistant, but the user comes next"),
        ([user("Hi"), user("Hello?"), assistant("Yes")], "message 2 is from the user, but the assistant comes next"),
        ([user("Hi"), assistant("Hello!"), user("Still there?")], "ends with a user message"),
        ([user("Hi"), assistant("   ")], r"message 2 \(assistant\) is empty"),
        ([user(""), assistant("Hello!")], r"message 1 \(user\) is empty"),
        ([user("Hi"), {"role": "assistant", "content": ["Hello"]}], "must be text"),
        ([user("x" * 5000), assistant("ok")], r"message 1 \(user\).*limit is"),
        ([user("Hi"), assistant("y" * 60_000), user("Hi"), assistant("y" * 60_000)], "Start a new conversation"),
    ],
)
def test_malformed_histories_are_refused_clearly(history, message):
    with pytest.raises(PromptError, match=message):
        check_history(history)


def test_a_history_is_cleaned():
    messy = [{"role": "user", "content": "  Hi ", "metadata": {"x": 1}}, {"role": "assistant", "content": "Hello\n"}]
    assert check_history(messy) == [user("Hi"), assistant("Hello")]
    assert check_history(None) == check_history([]) == []


def test_the_engine_refuses_a_malformed_history_before_generating(engine):
    with pytest.raises(PromptError, match="ends with a user message"):
        engine.stream(PROMPT, GREEDY, history=[user("Hi")])  # at once, not on the first answer
    with pytest.raises(PromptError, match="alternates"):
        engine.stream_duel(PROMPT, GREEDY, history=[assistant("Hi"), user("x")])


# ---- the context budget -------------------------------------------------------------------------------------


def words(messages):
    return sum(len(m["content"].split()) for m in messages) + 1  # one token of framing


def test_fit_conversation_drops_the_fewest_oldest_whole_turns():
    messages = [
        user("a b c"),
        assistant("d e f g"),
        user("h"),
        assistant("i j"),
        user("k l m n o"),
        assistant("p"),
        user("new prompt here"),
    ]
    assert fit_conversation(messages, words, 100) == (messages, 0)
    assert fit_conversation(messages, words, 20) == (messages, 0)  # 19 + 1 exactly
    assert fit_conversation(messages, words, 19) == (messages[2:], 1)
    assert fit_conversation(messages, words, 13) == (messages[2:], 1)
    assert fit_conversation(messages, words, 12) == (messages[4:], 2)
    assert fit_conversation(messages, words, 10) == (messages[4:], 2)
    assert fit_conversation(messages, words, 9) == (messages[6:], 3)
    assert fit_conversation(messages, words, 4) == (messages[6:], 3)
    assert fit_conversation(messages, words, 20, answer_tokens=8) == (messages[4:], 2)
    for budget in range(4, 25):  # the fewest drops that fit, as a plain search from the oldest would find
        kept, dropped = fit_conversation(messages, words, budget)
        linear = next(k for k in range(4) if words(messages[2 * k :]) <= budget)
        assert (dropped, kept) == (linear, messages[2 * linear :])
        assert kept[-1] == messages[-1] and kept[0]["role"] == "user"
    with pytest.raises(PromptError, match="prompt takes 4 tokens of the base model's 3-token context"):
        fit_conversation(messages, words, 3, model="the base model")
    with pytest.raises(PromptError, match="ask for fewer new tokens"):
        fit_conversation(messages[-1:], words, 10, answer_tokens=7)


def test_the_budget_is_the_smallest_of_the_positions_the_tokenizer_and_the_cap(engine, monkeypatch):
    config, tokenizer = engine.sft.model.config, engine.sft.tokenizer
    assert config.max_position_embeddings == 1024 and tokenizer.model_max_length > 10**20  # "no limit" in HF
    assert context_budget(config, tokenizer) == 1024
    monkeypatch.setattr(prompting, "CONTEXT_TOKENS_CAP", 300)
    assert context_budget(config, tokenizer) == 300
    assert context_budget(SimpleNamespace(max_position_embeddings=None), SimpleNamespace(model_max_length=200)) == 200
    assert prompting.CONTEXT_TOKENS_CAP == 300 and context_budget(SimpleNamespace(), SimpleNamespace()) == 300


LONG_HISTORY = [
    user("Tell me about apples."),
    assistant("Apples grow on trees in orchards and come in many colours."),
    user("And pears?"),
    assistant("Pears are sweet, grainy fruit related to apples."),
    user("Which keeps longer?"),
    assistant("Apples usually keep longer in a cool cellar."),
]


def test_oldest_whole_turns_are_dropped_per_model_to_fit_the_budget(engine, inputs, monkeypatch):
    sampling = Sampling(temperature=0, max_new_tokens=5, seed=0)
    base_counts = [tokens(engine.base.tokenizer, base_prompt(PROMPT, LONG_HISTORY[2 * k :])) for k in range(4)]
    sft_counts = [
        tokens(engine.sft.tokenizer, chat_prompt(engine.sft.tokenizer, PROMPT, LONG_HISTORY[2 * k :])) for k in range(4)
    ]
    new = sampling.max_new_tokens
    cap = sft_counts[2] + new  # the SFT model fits after dropping two turns, exactly
    # the chat template costs more tokens, so at this cap the base model only has to drop one turn
    assert sft_counts[1] + new > cap and base_counts[1] + new <= cap < base_counts[0] + new, (base_counts, sft_counts)
    monkeypatch.setattr(prompting, "CONTEXT_TOKENS_CAP", cap)

    answers = engine.generate(PROMPT, sampling, history=LONG_HISTORY)
    assert [answers[arm].dropped_turns for arm in ("base", "sft", "pref")] == [1, 2, 2]
    assert answers["sft"].to_dict()["dropped_turns"] == 2
    # whole turns, oldest first, the newest prompt last
    assert inputs["base"] == base_prompt(PROMPT, LONG_HISTORY[2:])
    assert inputs["sft"] == chat_prompt(engine.sft.tokenizer, PROMPT, LONG_HISTORY[4:])
    assert inputs["sft"].endswith(f"{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert (
        "<|im_start|>user\nWhich keeps longer?<|im_end|>\n<|im_start|>assistant\n"
        "Apples usually keep longer in a cool cellar.<|im_end|>" in inputs["sft"]
    )
    for dropped in LONG_HISTORY[:4]:
        assert dropped["content"] not in inputs["sft"]
    assert "Tell me about apples." not in inputs["base"] and "Apples grow" not in inputs["base"]
    assert inputs["base"].startswith("Q: And pears?\nA: Pears are sweet, grainy fruit related to apples.\n\nQ: ")
    for arm, answer in answers.items():
        assert answer.prompt_tokens + new <= cap, arm
    assert answers["sft"].prompt_tokens == sft_counts[2] and answers["base"].prompt_tokens == base_counts[1]

    duel = engine.duel(PROMPT, sampling, history=LONG_HISTORY)
    assert duel["a"].dropped_turns == duel["b"].dropped_turns == 2


def test_a_prompt_that_alone_does_not_fit_is_refused(engine, monkeypatch):
    monkeypatch.setattr(prompting, "CONTEXT_TOKENS_CAP", 40)
    with pytest.raises(PromptError, match="shorten the prompt or ask for fewer new tokens"):
        engine.generate("word " * 60, GREEDY, history=HISTORY)
    with pytest.raises(PromptError, match="answer may need 39 more"):
        engine.generate("Hi", Sampling(temperature=0, max_new_tokens=39, seed=0), arms=("base",))


# ---- Playground and command line ----------------------------------------------------------------------------


def test_compare_and_duel_pass_the_turns_history_to_the_engine():
    calls, continued = [], []

    def stream(prompt, sampling, arms=None, history=None):
        calls.append(("stream", arms, history))
        yield {}

    def stream_duel(prompt, sampling, history=None):
        calls.append(("duel", None, history))
        yield {}

    def continue_after(session, after, chosen):
        continued.append((session, after, chosen))
        return (HISTORY, {"id": 9}) if after else ([], None)

    fake = SimpleNamespace(
        engine=SimpleNamespace(stream=stream, stream_duel=stream_duel),
        continue_after=continue_after,
        _recorded=lambda stream, *rest: (yield from ((a, None) for a in stream)),
    )
    turn = ChatTurn("chat", after=5, continue_from=7)
    list(Playground.compare(fake, PROMPT, GREEDY, "s1", chat=turn))
    list(Playground.duel(fake, PROMPT, GREEDY, "s1", chat=turn))
    list(Playground.duel(fake, PROMPT, GREEDY, "s1", arms=("sft", "pref"), chat=turn))
    list(Playground.compare(fake, PROMPT, GREEDY, "s1"))
    assert calls == [
        ("stream", None, HISTORY),
        ("duel", None, HISTORY),
        ("stream", ("sft", "pref"), HISTORY),
        ("stream", None, []),
    ]
    assert continued == [("s1", 5, 7)] * 3 + [("s1", None, None)]


def test_generate_cli_takes_a_history_file_and_reports_dropped_turns(tiny_models, tmp_path, capsys, monkeypatch):
    history = tmp_path / "history.json"
    history.write_text(json.dumps(LONG_HISTORY))
    common = [
        "-q",
        "generate",
        "--history",
        str(history),
        PROMPT,
        "--json",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        "--base",
        str(tiny_models["base"]),
        "--sft",
        str(tiny_models["sft"]),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    assert cli.main(common) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["history_turns"] == 3
    assert [full[arm]["dropped_turns"] for arm in ("base", "sft", "pref")] == [0, 0, 0]

    monkeypatch.setattr(prompting, "CONTEXT_TOKENS_CAP", full["base"]["prompt_tokens"] - 10)
    assert cli.main(common) == 0
    tight = json.loads(capsys.readouterr().out)
    for arm in ("base", "sft", "pref"):
        assert tight[arm]["dropped_turns"] >= 1 and tight[arm]["prompt_tokens"] < full[arm]["prompt_tokens"]
    assert tight["sft"]["dropped_turns"] == tight["pref"]["dropped_turns"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "Cannot read the history file"),
        ("{not json", "is not JSON"),
        (json.dumps({"role": "user", "content": "hi"}), "must be a list"),
        (json.dumps([user("hi"), assistant("hello"), user("again")]), "ends with a user message"),
    ],
)
def test_generate_cli_refuses_a_bad_history_file_before_loading_models(content, message, tmp_path, capsys):
    path = tmp_path / "history.json"
    if content is not None:
        path.write_text(content)
    # models that do not exist: a bad history must be reported before any loading
    code = cli.main(
        [
            "-q",
            "generate",
            "--history",
            str(path),
            "Hi",
            "--base",
            str(tmp_path / "none"),
            "--sft",
            str(tmp_path / "none"),
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(path) in err
