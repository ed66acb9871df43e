"""The three-arm engine on tiny models: streaming, seeds, adapter isolation, hot swap, base framing/stopping."""

from __future__ import annotations

import queue
import threading

import pytest
import torch
from helpers import AnswersInFlight

from playground.decoding import AnswerBoundary, RowStreamer
from playground.generation import Engine, Sampling
from playground.models import load_model
from playground.prompting import BASE_STOP_STRINGS, PromptError, base_prompt, chat_prompt, cut_at_stop

GREEDY = Sampling(temperature=0, max_new_tokens=12, seed=0)


def test_streaming_yields_growing_text(tiny_engine):
    seen = {"base": [], "sft": [], "pref": []}
    for answers in tiny_engine.stream("Why is the sky blue?", Sampling(max_new_tokens=10, seed=4)):
        for arm, answer in answers.items():
            seen[arm].append(answer.text)
    for arm, texts in seen.items():
        lengths = [len(t) for t in texts]
        assert len(set(lengths)) > 2, f"{arm} did not stream: {lengths}"
        assert texts[-1] == answers[arm].text
    final = answers
    assert all(a.done and a.new_tokens > 0 and a.ttft is not None and a.seconds >= a.ttft for a in final.values())
    assert final["sft"].prompt_tokens > 0 and final["base"].prompt_tokens > 0


def test_every_answer_records_what_produced_it(tiny_engine, tiny_models):
    answers = tiny_engine.generate("Name a colour.", Sampling(temperature=0.8, top_p=0.95, max_new_tokens=6, seed=11))
    for arm, answer in answers.items():
        row = answer.to_dict()
        assert row["arm"] == arm and row["seed"] == 11
        assert row["settings"] == {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 6, "seed": 11}
        assert row["finish_reason"] in ("eos", "stop", "length")
        assert {"new_tokens", "prompt_tokens", "seconds", "ttft", "tokens_per_second"} <= row.keys()
    suffix = " (int8)" if tiny_engine.sft.precision == "int8" else ""  # the weights that wrote it, precision included
    assert answers["base"].model == str(tiny_models["base"]) + suffix
    assert answers["sft"].model == str(tiny_models["sft"]) + suffix
    assert answers["pref"].adapter_version == 0 and "version 0" in answers["pref"].note
    assert answers["pref"].text == answers["sft"].text  # v0: no adapter, same weights, same seed


def test_same_seed_same_answers_different_seed_different(tiny_engine):
    settings = Sampling(temperature=1.0, max_new_tokens=16, seed=123)
    first = {k: a.text for k, a in tiny_engine.generate("Tell me a story.", settings).items()}
    second = {k: a.text for k, a in tiny_engine.generate("Tell me a story.", settings).items()}
    assert first == second
    other = tiny_engine.generate("Tell me a story.", Sampling(temperature=1.0, max_new_tokens=16, seed=124))
    assert other["sft"].text != first["sft"]


def test_no_seed_picks_one_and_records_it(tiny_engine):
    answers = tiny_engine.generate("Hi", Sampling(max_new_tokens=3))
    assert isinstance(answers["sft"].seed, int)
    again = tiny_engine.generate("Hi", Sampling(max_new_tokens=3, seed=answers["sft"].seed))
    assert again["sft"].text == answers["sft"].text


def test_bad_prompts_and_settings_are_refused_clearly(tiny_engine):
    with pytest.raises(PromptError, match="empty"):
        tiny_engine.generate("   ", GREEDY)
    with pytest.raises(PromptError, match="limit is"):
        tiny_engine.generate("x" * 50_000, GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        tiny_engine.generate("hi", Sampling(top_p=0))


def _sft_row_logits(engine, prompt):
    tokenizer = engine.sft.tokenizer
    ids = tokenizer([chat_prompt(tokenizer, prompt)] * 2, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        mixed = engine.runtimes["sft"].peft(**ids, adapter_names=["__base__", engine.adapters.name]).logits
        with engine.runtimes["sft"].peft.disable_adapter():
            plain = engine.runtimes["sft"].peft(**ids).logits
        adapted = engine.runtimes["sft"].peft(**ids).logits
    return mixed, plain, adapted


def test_sft_row_is_bit_identical_to_adapter_disabled_while_adapter_active(tiny_engine, tiny_adapters):
    tiny_engine.use_adapter(1, str(tiny_adapters[1]))
    mixed, plain, adapted = _sft_row_logits(tiny_engine, "Explain gravity.")
    assert torch.equal(mixed[0], plain[0]), "the SFT row must not see the adapter"
    assert torch.equal(mixed[1], adapted[1]), "the preference row must run the adapter"
    assert not torch.allclose(mixed[0], mixed[1]), "the adapter must change the outputs"


def test_adapter_changes_only_the_preference_arm(tiny_models, tiny_adapters, tmp_path):
    reference = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    before = reference.generate("Explain gravity.", GREEDY)
    reference.use_adapter(1, str(tiny_adapters[1]))
    after = reference.generate("Explain gravity.", GREEDY)
    assert after["pref"].adapter_version == 1 and after["sft"].adapter_version == 0
    assert after["sft"].text == before["sft"].text and after["base"].text == before["base"].text
    assert after["pref"].text != before["pref"].text


def test_batched_rows_equal_single_row_runs(tiny_engine, tiny_adapters):
    tiny_engine.use_adapter(1, str(tiny_adapters[1]))
    for settings in (GREEDY, Sampling(temperature=0.9, max_new_tokens=12, seed=5)):
        together = tiny_engine.generate("Write a poem.", settings, arms=("sft", "pref"))
        alone_sft = tiny_engine.generate("Write a poem.", settings, arms=("sft",))
        alone_pref = tiny_engine.generate("Write a poem.", settings, arms=("pref",))
        assert together["sft"].text == alone_sft["sft"].text
        assert together["pref"].text == alone_pref["pref"].text


@pytest.mark.slow
def test_concurrent_requests_and_hot_swaps_never_mix_adapter_state(tiny_engine, tiny_adapters):
    prompt = "Give me advice."
    long = Sampling(temperature=0, max_new_tokens=48, seed=0)
    expected = {}
    for version in (0, 1, 2):
        tiny_engine.use_adapter(version, str(tiny_adapters[version]) if version else None)
        answers = tiny_engine.generate(prompt, long)
        expected[version] = (answers["sft"].text, answers["pref"].text)
    assert len({pref for _, pref in expected.values()}) == 3
    sft_text = expected[0][0]

    results, errors, swaps = [], [], []
    in_flight = AnswersInFlight()

    swapped = threading.Event()

    def user():
        # Users keep asking until every swap is done (at least 4 answers each), so a swap always finds answers being
        # written: Python's locks are not fair, and the users could otherwise finish before the swapper's turn.
        try:
            for n in range(40):
                if n >= 4 and swapped.is_set():
                    break
                answers, started_with = in_flight.answer(tiny_engine, prompt, long)
                results.append(
                    (answers["pref"].adapter_version, answers["sft"].text, answers["pref"].text, started_with)
                )
        except Exception as error:  # surfaced below
            errors.append(error)

    def swapper():
        for version in (1, 2, 0, 2, 1):
            swaps.append(in_flight.wait())  # a swap requested while answers are being written must not change them
            tiny_engine.use_adapter(version, str(tiny_adapters[version]) if version else None)
        swapped.set()

    threads = [threading.Thread(target=user) for _ in range(3)] + [threading.Thread(target=swapper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) >= 12
    assert all(swaps), "every swap was requested while answers were being written"
    assert len({version for version, *_ in results}) >= 2, "answers were written under several versions"
    for version, sft, pref, started_with in results:
        assert version == started_with, "a swap changed the version of an answer being written"
        assert sft == sft_text, "an SFT answer was written with an adapter on"
        assert pref == expected[version][1], f"answer recorded as v{version} was written by another version"


def test_a_corrupt_adapter_is_refused_and_the_old_one_keeps_serving(tiny_engine, tiny_adapters, tmp_path):
    from playground.generation import AdapterError

    tiny_engine.use_adapter(1, str(tiny_adapters[1]))
    good = tiny_engine.generate("Hello", GREEDY)["pref"].text
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((tiny_adapters[2] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterError, match="v2") as refused:
        tiny_engine.use_adapter(2, str(broken))
    assert "--precision" not in str(refused.value), "a corrupt file is not a precision problem"
    assert tiny_engine.adapter_version == 1
    assert tiny_engine.generate("Hello", GREEDY)["pref"].text == good
    assert list(tiny_engine.runtimes["sft"].peft.peft_config) == ["v1"], "the half-loaded adapter must be removed"


def test_swapping_frees_the_old_adapter(tiny_engine, tiny_adapters):
    for version in (1, 2, 1, 2):
        tiny_engine.use_adapter(version, str(tiny_adapters[version]))
    assert list(tiny_engine.runtimes["sft"].peft.peft_config) == ["v2"]
    lora_names = {
        n.split("lora_A.")[1].split(".")[0]
        for n, _ in tiny_engine.runtimes["sft"].peft.named_parameters()
        if "lora_A." in n
    }
    assert lora_names == {"v2"}


# ---- base framing and stopping ------------------------------------------------------------------------------


def test_base_prompt_is_a_plain_completion_frame():
    assert base_prompt("  Why is the sky blue? ") == "Q: Why is the sky blue?\nA:"


@pytest.mark.parametrize(
    "generated, answer, stopped",
    [
        (" Because of scattering.\n\nQ: And why", " Because of scattering.", True),
        (" Blue.\nQ: Next question", " Blue.", True),
        (" Blue.\nA: another answer", " Blue.", True),
        ("\n\nA leading blank line is not the end.", "\n\nA leading blank line is not the end.", False),
        (" line one\nline two", " line one\nline two", False),
    ],
)
def test_cut_at_stop(generated, answer, stopped):
    assert cut_at_stop(generated, BASE_STOP_STRINGS) == (answer, stopped)


def test_streamer_and_stopping_criteria_end_a_base_answer_at_the_boundary(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["base"])
    prompt_ids = tokenizer("Q: Colour?\nA:", return_tensors="pt").input_ids
    continuation = tokenizer(" Blue, mostly.\n\nQ: What else?", add_special_tokens=False).input_ids
    events = queue.Queue()
    streamer = RowStreamer(events, ["base"], tokenizer, BASE_STOP_STRINGS, {tokenizer.eos_token_id})
    boundary = AnswerBoundary(tokenizer, prompt_ids.shape[1], BASE_STOP_STRINGS, threading.Event())
    streamer.put(prompt_ids)
    sequence, stop_at = prompt_ids, None
    for step, token in enumerate(continuation):
        streamer.put(torch.tensor([token]))
        sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
        if boundary(sequence, None)[0] and stop_at is None:
            stop_at = step
            break
    streamer.end()
    drained = [events.get() for _ in range(events.qsize())]
    texts = [e[2] for e in drained if e[0] == "text"]
    done = [e for e in drained if e[0] == "done"]
    assert stop_at is not None and stop_at < len(continuation) - 1, "generation must stop at the blank line"
    assert texts[-1] == " Blue, mostly."
    assert done == [("done", "base", "stop", len(texts))]


def test_cancel_stops_all_rows():
    cancel = threading.Event()
    boundary = AnswerBoundary(None, 0, (), cancel)
    ids = torch.zeros((2, 3), dtype=torch.long)
    assert not boundary(ids, None).any()
    cancel.set()
    assert boundary(ids, None).all()


class _Unreachable:
    """A runtime whose server is gone: every request fails as a remote server's would (runtimes.ServingError)."""

    name, concurrent, max_context, problem = "vllm", True, None, None

    def decode(self, ids, rows, sampling, streamer, cancel):
        from playground.runtimes import ServingError

        self.problem = "The vLLM server of the base model at http://gpu-box:8001 cannot be reached"
        raise ServingError(self.problem)

    def close(self):
        pass


def test_a_failing_runtime_fails_only_its_answers_and_the_turn_is_not_stored(tiny_models, tmp_path):
    from playground.core import Playground
    from playground.runtimes.torch_runtime import TorchRuntime
    from playground.settings import ModelSettings

    sft = load_model(str(tiny_models["sft"]), tmp_path)
    engine = Engine(
        load_model(str(tiny_models["base"]), tmp_path), sft, {"base": _Unreachable(), "sft": TorchRuntime(sft)}
    )
    answers = engine.generate("Explain gravity.", GREEDY)
    assert answers["base"].finish_reason == "error" and "cannot be reached" in answers["base"].error
    assert answers["sft"].done and not answers["sft"].error and answers["sft"].new_tokens > 0
    assert answers["pref"].text == answers["sft"].text and not answers["pref"].error
    assert engine.problem and "gpu-box:8001" in engine.problem  # what the status line shows
    playground = Playground(
        ModelSettings(
            base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path), persist="off"
        ),
        engine=engine,
    )
    try:
        items = list(playground.compare("Explain gravity.", GREEDY, "s1"))
        assert items[-1][1] is None and items[-1][0]["base"].error  # shown, not recorded
        assert playground.store.counts()["comparisons"] == 0
    finally:
        playground.close()


def test_a_seed_outside_what_every_runtime_takes_is_refused_up_front():
    from playground.settings import MAX_SEED

    assert Sampling(seed=MAX_SEED).checked().seed == MAX_SEED
    for seed in (-1, MAX_SEED + 1, 2**70):
        with pytest.raises(ValueError, match=f"seed must be between 0 and {MAX_SEED}"):
            Sampling(seed=seed).checked()
    assert all(0 <= Sampling().checked().seed <= MAX_SEED for _ in range(200))


def test_sft_nll_scores_the_input_generation_feeds_the_sft_model(tiny_models, tmp_path):
    from playground.prompting import encode_prompt

    sft = load_model(str(tiny_models["sft"]), tmp_path)
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), sft)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    answer = "Paris is the capital of France."
    text, _ = engine.model_input("sft", "And the capital of Spain?", history)
    context = encode_prompt(sft.tokenizer, text)
    ids = encode_prompt(sft.tokenizer, text + answer)
    with torch.inference_mode():
        logits = sft.model(input_ids=torch.tensor([ids])).logits[0]
    want = float(torch.nn.functional.cross_entropy(logits[len(context) - 1 : -1], torch.tensor(ids[len(context) :])))
    got = engine.scoring.sft_nll("And the capital of Spain?", answer, history)
    assert got == pytest.approx(want, rel=1e-5)
    alone = engine.scoring.sft_nll("And the capital of Spain?", answer)
    assert abs(got - alone) > 1e-6  # the earlier turns are part of what is scored
