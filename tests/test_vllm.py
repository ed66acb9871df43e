"""The vllm serving runtime against real vLLM servers (the CPU build in .venv-vllm, made by setup.sh) on tiny models
saved from a config: the SFT model's server started by the app's own code (`--runtime vllm` without a URL), the base
model's started here and given as `--base-vllm-url`. Three arms stream through them; versions load at run time
under their names and unload after a swap; greedy answers equal the torch runtime's; a killed server is a message
in its arms' answers and on the status line while the other arm answers, and the runtime recovers (adapter
included) once the server is back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import make_lora_adapter, make_tiny_model

from playground.generation import Engine, final
from playground.models import Preset
from playground.runtimes.vllm.server import VllmOptions, VllmServer, find_python
from playground.settings import Sampling

pytestmark = pytest.mark.slow  # every test here loads the embedded models or starts a process

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Tell me a joke about cats."]
GREEDY = Sampling(temperature=0, max_new_tokens=16, seed=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory, real_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-models")
    # Heads of 32 (vLLM's CPU attention takes them); float32, as the server runs them on a CPU.
    models = {
        "base": make_tiny_model(root / "base", real_tokenizer_dir, seed=1, chat=False, hidden=128),
        "sft": make_tiny_model(root / "sft", real_tokenizer_dir, seed=2, chat=True, hidden=128),
    }
    models |= {f"v{v}": make_lora_adapter(models["sft"], root / f"v{v}", seed=30 + v) for v in (1, 2)}
    return models


@pytest.fixture(scope="module")
def servers(models, tmp_path_factory):
    """The base model's server (started here) and an engine whose SFT server the app's code starts, both at once
    (each takes about a minute to come up on 2 cores)."""
    logs = tmp_path_factory.mktemp("vllm-logs")
    base_server = VllmServer(find_python(), str(models["base"]), log_path=logs / "base.log", max_model_len=1024)
    base_server.launch()  # comes up while the app's code starts the SFT model's server
    preset = Preset("tiny", str(models["base"]), str(models["sft"]), "test")
    data = tmp_path_factory.mktemp("vllm-data")
    options = VllmOptions(base_url=base_server.url, max_model_len=1024, log_dir=logs)  # it waits for the base one
    engine = Engine.from_preset(preset, data, runtime="vllm", precision="float", vllm=options)
    torch_engine = Engine.from_preset(preset, data, runtime="torch", precision="float")
    yield {"engine": engine, "torch": torch_engine, "base_server": base_server, "data": data}
    engine.close()
    base_server.stop()


def _served(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}


def _texts(engine, prompt, sampling=GREEDY):
    answers = engine.generate(prompt, sampling)
    return {arm: (a.text, a.new_tokens, a.finish_reason, a.adapter_version) for arm, a in answers.items()}


def test_three_arms_stream_from_vllm_servers(servers):
    engine = servers["engine"]
    assert engine.describe() == {"base": "vllm", "sft": "vllm"} and engine.runtime == "vllm"
    assert engine.sft.model is None and engine.base.model is None  # no torch weights held here
    updates = list(engine.stream(PROMPTS[0], Sampling(temperature=0.7, max_new_tokens=12, seed=3)))
    final = updates[-1]
    assert set(final) == {"base", "sft", "pref"} and all(a.done and not a.error for a in final.values())
    assert len(updates) > 6, "answers arrive token by token"
    for answer in final.values():
        assert answer.new_tokens > 0 and answer.prompt_tokens > 0 and answer.ttft is not None
        assert answer.finish_reason in ("eos", "stop", "length")
    assert final["sft"].text == final["pref"].text  # version 0: the preference arm is the SFT model, same seed


def test_greedy_answers_equal_the_torch_runtime(servers):
    """Same tokens as transformers on the same weights (float32 on both), the conversation fitted the same way."""
    engine, torch_engine = servers["engine"], servers["torch"]
    for prompt in PROMPTS:
        assert _texts(engine, prompt) == _texts(torch_engine, prompt), prompt
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    got = engine.generate("And you?", GREEDY, history=history)
    want = torch_engine.generate("And you?", GREEDY, history=history)
    assert {k: a.text for k, a in got.items()} == {k: a.text for k, a in want.items()}


def test_sampling_is_reproducible_per_seed(servers):
    engine = servers["engine"]

    def sampled(seed):
        return _texts(engine, PROMPTS[1], Sampling(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=seed))

    first, again, other = sampled(5), sampled(5), sampled(6)
    assert first == again and first != other
    duel = {
        key: a.text for key, a in engine.duel(PROMPTS[0], Sampling(temperature=1.0, max_new_tokens=16, seed=4)).items()
    }
    assert duel["a"] != duel["b"]  # two seeds, two samples


def test_versions_load_at_run_time_unload_after_the_swap_and_roll_back(servers, models):
    engine, torch_engine = servers["engine"], servers["torch"]
    url = engine.runtimes["sft"].url
    before = _texts(engine, PROMPTS[0])
    try:
        for version in (1, 2):
            for each in (engine, torch_engine):
                each.use_adapter(version, str(models[f"v{version}"]))
            assert f"v{version}" in _served(url) and f"v{3 - version}" not in _served(url)  # the old one unloaded
            got = _texts(engine, PROMPTS[0])
            assert got["pref"][3] == version and got["pref"][0] != before["pref"][0]  # the adapter changes it
            assert got["sft"] == before["sft"]  # the SFT arm never sees the adapter
            assert got == _texts(torch_engine, PROMPTS[0])  # the adapter as PEFT applies it
        engine.use_adapter(1, str(models["v1"]))  # rollback
        assert _served(url) >= {"v1"} and "v2" not in _served(url)
    finally:
        for each in (engine, torch_engine):
            each.use_adapter(0, None)
    assert not {"v1", "v2"} & _served(url)
    assert _texts(engine, PROMPTS[0]) == before


def test_a_swap_mid_answer_keeps_the_version_the_answer_started_with(servers, models):
    engine = servers["engine"]
    try:
        engine.use_adapter(1, str(models["v1"]))
        stream = engine.stream(PROMPTS[1], Sampling(temperature=0, max_new_tokens=64, seed=1), arms=("pref",))
        answers = next(stream)  # being written with v1
        engine.use_adapter(2, str(models["v2"]))  # does not wait for it
        assert "v1" in _served(engine.runtimes["sft"].url), "v1 stays loaded while an answer uses it"
        answers = final(stream, answers)
        assert answers["pref"].adapter_version == 1 and answers["pref"].done and not answers["pref"].error
        assert "v1" not in _served(engine.runtimes["sft"].url), "unloaded once its last answer ended"
    finally:
        engine.use_adapter(0, None)


def test_an_app_started_again_against_a_server_that_kept_its_adapters(servers, models):
    """`--vllm-url`: the server outlives the app. A new app's v0 and v1 load over the names it still holds."""
    from playground.runtimes.vllm.client import VllmRuntime

    engine = servers["engine"]
    url = engine.runtimes["sft"].url
    engine.use_adapter(1, str(models["v1"]))
    try:
        want = _texts(engine, PROMPTS[1])
        again = Engine(
            engine.base,
            engine.sft,
            {
                "base": engine.runtimes["base"],
                "sft": VllmRuntime(url, plain_adapter=engine.runtimes["sft"].adapters["v0"]),
            },
        )
        assert again.runtimes["sft"].plain == "v0", "the zero adapter the server already held was loaded again"
        again.use_adapter(1, str(models["v1"]))  # already loaded in the server: not an error
        assert again.adapter_version == 1 and _texts(again, PROMPTS[1]) == want
    finally:
        engine.use_adapter(0, None)


def test_the_cli_generates_through_vllm_servers(servers, models):
    env = os.environ | {"PLAYGROUND_RUNTIME": "vllm"}
    command = [
        sys.executable,
        "-m",
        "playground",
        "generate",
        PROMPTS[0],
        "--json",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--base",
        str(models["base"]),
        "--sft",
        str(models["sft"]),
        "--data-dir",
        str(servers["data"] / "cli"),
        "--persist",
        "off",
        "--vllm-url",
        servers["engine"].runtimes["sft"].url,
        "--base-vllm-url",
        servers["base_server"].url,
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["runtime"] == "vllm" and report["runtimes"] == {"base": "vllm", "sft": "vllm"}
    assert report["sft"]["text"] == servers["engine"].generate(PROMPTS[0], Sampling(0, 0.9, 8, 1))["sft"].text


def test_a_killed_server_fails_only_its_arms_and_recovers_with_its_adapter(servers, models):
    engine = servers["engine"]
    sft_runtime = engine.runtimes["sft"]
    server = sft_runtime.server
    engine.use_adapter(1, str(models["v1"]))
    try:
        want = _texts(engine, PROMPTS[2])
        os.killpg(server.process.pid, 9)
        server.process.wait()
        answers = engine.generate(PROMPTS[2], GREEDY)
        assert answers["base"].done and not answers["base"].error and answers["base"].text == want["base"][0]
        for arm in ("sft", "pref"):
            assert answers[arm].finish_reason == "error"
            assert "vLLM server of the SFT model" in answers[arm].error and "starting again" in answers[arm].error
        assert engine.problem and "cannot be reached" in engine.problem  # the status line says it
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:  # the server this process started comes back by itself
            time.sleep(5)
            answers = engine.generate(PROMPTS[2], GREEDY)
            if not any(a.error for a in answers.values()):
                break
        assert server.starts == 2 and engine.problem is None
        assert _texts(engine, PROMPTS[2]) == want  # v1 was loaded into the new server again
        assert "v1" in _served(sft_runtime.url)
    finally:
        engine.use_adapter(0, None)
