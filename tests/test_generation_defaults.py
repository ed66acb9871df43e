"""A model's own generation settings do not apply (runtimes/neutral.py): tiny models whose generation_config.json
asks for a repetition penalty and an n-gram ban answer greedily with the raw argmax of their logits, the same on
the torch, onnx and vllm runtimes, and drift scores the version-0 policy as the raw SFT model (KL 0)."""

from __future__ import annotations

import json
import queue
import shutil
import threading
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model

from playground import drift
from playground.generation import Engine
from playground.models import Preset, eos_ids, load_policy
from playground.prompting import chat_prompt, encode_prompt
from playground.runtimes import DecodeRow
from playground.runtimes.onnx.client import DecodeWorker
from playground.settings import Sampling

PROMPTS = ["What is the capital of France?", "Write a haiku about rain."]
GREEDY = Sampling(temperature=0, max_new_tokens=24, seed=1)
PENALTIES = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}  # what the models' own config asks for
PLAN = drift.EvalPlan(tuple(PROMPTS), 16, 0)


def penalised_model(folder: Path, tokenizer_dir: Path, *, seed: int, chat: bool) -> Path:
    """A tiny model (heads of 32: the ONNX and vLLM CPU kernels take them) whose generation_config.json sets
    PENALTIES. A freshly initialised one with tied embeddings only repeats its last input token, and its next-token
    distributions are nearly uniform; with its layers' outputs and its final norm scaled up, its greedy answers
    differ by prompt and its distributions are peaked, as a trained model's are, so that a penalty changes both
    what it writes and the probabilities drift records."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    make_tiny_model(folder, tokenizer_dir, seed=seed, chat=chat, hidden=128)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                weight.mul_(20)
        model.model.norm.weight.mul_(40)
    model.save_pretrained(folder)
    config = GenerationConfig.from_pretrained(folder)
    config.update(**PENALTIES)
    config.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, real_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("penalised-models")
    return {
        "base": penalised_model(root / "base", real_tokenizer_dir, seed=1, chat=False),
        "sft": penalised_model(root / "sft", real_tokenizer_dir, seed=2, chat=True),
    }


@pytest.fixture(scope="module")
def preset(models) -> Preset:
    return Preset("tiny", str(models["base"]), str(models["sft"]), "test")


@pytest.fixture(scope="module")
def torch_engine(preset, tmp_path_factory):
    return Engine.from_preset(preset, tmp_path_factory.mktemp("torch-data"), precision="float", runtime="torch")


def raw_greedy(model, tokenizer, prompt_ids: list[int], tokens: int) -> list[int]:
    """The argmax of the model's raw logits at each step, up to an end-of-sequence token (included)."""
    ends = eos_ids(model.generation_config, tokenizer)
    ids, new = torch.tensor([prompt_ids]), []
    with torch.inference_mode():
        for _ in range(tokens):
            new.append(int(model(input_ids=ids).logits[0, -1].argmax()))
            if new[-1] in ends:
                break
            ids = torch.cat([ids, torch.tensor([new[-1:]])], dim=1)
    return new


def _texts(engine, prompt: str) -> dict:
    answers = engine.generate(prompt, GREEDY)
    return {arm: (a.text, a.new_tokens, a.finish_reason) for arm, a in answers.items()}


def test_the_models_own_config_asks_for_penalties(models):
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(models["sft"])
    assert (config.repetition_penalty, config.no_repeat_ngram_size) == (1.3, 2)


def raw_chat_answer(torch_engine, prompt: str) -> tuple[str, int, str]:
    """What the SFT and preference arms (version 0) must answer, as `_texts` gives it: the raw greedy answer."""
    sft = torch_engine.sft
    ids = encode_prompt(sft.tokenizer, chat_prompt(sft.tokenizer, prompt))
    new = raw_greedy(sft.model, sft.tokenizer, ids, GREEDY.max_new_tokens)
    ended = new[-1] in eos_ids(sft.model.generation_config, sft.tokenizer)
    return sft.tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), "eos" if ended else "length"


def test_torch_greedy_answers_are_the_raw_argmax(torch_engine):
    for prompt in PROMPTS:
        answers = _texts(torch_engine, prompt)
        assert answers["sft"] == answers["pref"] == raw_chat_answer(torch_engine, prompt), prompt


def test_torch_runtime_decodes_the_raw_argmax_with_sampling_rows_too(torch_engine):
    """A sampled row at a temperature near 0 takes the raw argmax as well: the penalties do not come in through
    the processors `generate` adds in front of the sampler."""
    from playground.decoding import RowStreamer

    sft = torch_engine.sft
    ids = encode_prompt(sft.tokenizer, chat_prompt(sft.tokenizer, PROMPTS[0]))
    ends = eos_ids(sft.model.generation_config, sft.tokenizer)
    streamer = RowStreamer(queue.Queue(), ["sft"], sft.tokenizer, (), ends)
    sampling = Sampling(temperature=1e-4, top_p=1.0, max_new_tokens=16, seed=3)
    torch_engine.runtimes["sft"].decode(ids, [DecodeRow(3, None)], sampling, streamer, threading.Event())
    streamer.end()
    new = raw_greedy(sft.model, sft.tokenizer, ids, 16)
    assert streamer.tokens[0] == [t for t in new if t not in ends]


def _logprob(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return float(logprobs.gather(1, torch.tensor(answer_ids)[:, None]).sum())


def test_drift_samples_and_scores_the_raw_model(models):
    model, tokenizer = load_policy(str(models["sft"]))
    for sample in drift.sample_and_score(model, tokenizer, PLAN, adapter=False):
        raw = _logprob(model, sample["prompt_ids"], sample["answer_ids"])
        assert sample["logprob"] == pytest.approx(raw, abs=1e-3)  # sampled from the raw distribution
        assert sample["logprob_sft"] == pytest.approx(raw, abs=1e-3)  # the SFT perplexity is the raw model's


def test_version_0_as_an_adapter_has_kl_0_to_sft(models, tmp_path):
    """Version 0 served as the zero adapter (what the vllm runtime's SFT arm runs) is the SFT model: the policy
    recorded while sampling and the reference scored after are one distribution, so the KL is 0."""
    from peft import PeftModel

    from playground.runtimes.zero_adapter import zero_adapter

    adapter = zero_adapter(str(models["sft"]), ("q_proj", "v_proj"), tmp_path / "v0")
    model, tokenizer = load_policy(str(models["sft"]))
    metrics = drift.evaluate(PeftModel.from_pretrained(model, str(adapter)), tokenizer, PLAN, adapter=True)
    assert metrics["kl_to_sft"] == pytest.approx(0, abs=1e-9)
    plain = drift.evaluate(load_policy(str(models["sft"]))[0], tokenizer, PLAN, adapter=False)
    assert plain["kl_to_sft"] == 0
    assert metrics["sft_perplexity"] == pytest.approx(plain["sft_perplexity"], rel=1e-5)


def test_vllm_requests_carry_the_neutral_settings():
    """Sent on every request, so a server started elsewhere (with the model's defaults) decodes the same."""
    from playground.runtimes.vllm.client import VllmRuntime

    runtime = VllmRuntime.__new__(VllmRuntime)  # _body needs no server
    runtime.plain, runtime.model_id = None, "m"
    neutral = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_p": 0.0}
    for sampling in (GREEDY, Sampling(temperature=0.7, top_p=0.9, max_new_tokens=8, seed=2)):
        body = runtime._body([1, 2], DecodeRow(1, None), sampling, ())
        assert {k: body.get(k) for k in neutral} == neutral
        assert body.get("top_k") in (0, -1) and body.get("min_tokens") == 0
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9  # the app's own settings still apply


@pytest.mark.slow
def test_onnx_greedy_answers_equal_torch(preset, torch_engine, tmp_path):
    onnx = Engine.from_preset(preset, tmp_path, precision="float", runtime="onnx", threads=1)
    try:
        assert onnx.describe() == {"base": "onnx", "sft": "onnx"}
        for prompt in PROMPTS:
            got = _texts(onnx, prompt)
            assert got == _texts(torch_engine, prompt), prompt
            assert got["sft"] == raw_chat_answer(torch_engine, prompt)
        built = onnx.runtimes["sft"].workers[0].model_dir
    finally:
        onnx.close()
    # A genai_config.json with the model's penalties in its search options (ONNX Runtime GenAI's builder copies
    # them from a config.json that holds them, as older checkpoints' do): the worker's generators leave them out.
    penalised = tmp_path / "penalised-onnx"
    shutil.copytree(built, penalised)
    config = json.loads((penalised / "genai_config.json").read_text())
    config["search"] |= PENALTIES
    (penalised / "genai_config.json").write_text(json.dumps(config))
    worker = DecodeWorker(penalised, threads=1, label="SFT")
    try:
        sft = torch_engine.sft
        for prompt in PROMPTS:
            ids = encode_prompt(sft.tokenizer, chat_prompt(sft.tokenizer, prompt))
            want = raw_greedy(sft.model, sft.tokenizer, ids, GREEDY.max_new_tokens)
            got = [step[0] for step in worker.generate(ids, [(1, None)], GREEDY, GREEDY.max_new_tokens)]
            assert got[: len(want)] == want, prompt
    finally:
        worker.close()


@pytest.mark.slow
def test_vllm_greedy_answers_equal_torch(preset, models, torch_engine, tmp_path):
    """Against a server that takes the model's defaults (vLLM's own default, as a server given by --vllm-url may
    run; the one the app starts is told not to): the requests' neutral values win. The base arm stays local."""
    from playground.runtimes.vllm.server import VllmOptions, VllmServer, find_python

    server = VllmServer(find_python(), str(models["sft"]), log_path=tmp_path / "sft.log", max_model_len=1024)
    ours = server.command

    def with_the_models_defaults() -> list[str]:
        command = ours()  # on the port chosen at launch
        if "--generation-config" in command:
            flag = command.index("--generation-config")
            command = command[:flag] + command[flag + 2 :]
        return command

    server.command = with_the_models_defaults
    server.start()
    engine = None
    try:
        assert "repetition_penalty" in server.log_path.read_text()  # vLLM says it took the model's defaults
        options = VllmOptions(url=server.url, max_model_len=1024, log_dir=tmp_path)
        engine = Engine.from_preset(preset, tmp_path, runtime="vllm", precision="float", vllm=options)
        assert engine.describe()["sft"] == "vllm"
        for prompt in PROMPTS:
            got = _texts(engine, prompt)
            assert got["sft"] == got["pref"] == raw_chat_answer(torch_engine, prompt), prompt
            assert got == _texts(torch_engine, prompt)  # the base arm runs on this machine
    finally:
        if engine is not None:
            engine.close()
        server.stop()
