"""The `rlhf` route: the round's reward model first, then RL against it (trl's GRPOTrainer), on the voted prompts and on
prompts nobody voted on. And the `dpo` route unchanged by the reward model trained beside it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from helpers import add_short_vs_long_votes, simulate_json, tiny_round
from peft import PeftModel
from safetensors.torch import load_file

from playground import reward_models
from playground.models import load_policy
from playground.store import Store
from playground.training import run_round
from playground.training.rl import prompt_rows, read_prompts

RLHF = tiny_round(
    reward_learning_rate=2e-2,
    epochs=4,
    eval_tokens=0,
    preference_route="rlhf",
    rl_learning_rate=5e-2,
    rl_steps=8,
    rl_generations=4,
    rl_completion_tokens=16,
)


def mean_reward_of_samples(sft_dir, adapter: Path | None, reward, prompts: list[list[dict]]) -> float:
    """The reward model's mean score of 4 sampled answers per prompt (fixed seeds), by the SFT model or an adapter."""
    model, tokenizer = load_policy(str(sft_dir))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    scored = []
    for i, messages in enumerate(prompts):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        torch.manual_seed(i)
        with torch.no_grad():
            out = model.generate(
                **ids, do_sample=True, max_new_tokens=16, num_return_sequences=4, pad_token_id=tokenizer.pad_token_id
            )
        answers = tokenizer.batch_decode(out[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        scored += [(messages, answer) for answer in answers]
    rm_model, rm_tokenizer = reward
    return sum(reward_models.score(rm_model, rm_tokenizer, scored)) / len(scored)


def test_an_rlhf_round_raises_the_reward_models_score_of_its_samples_and_keeps_no_reference_copy(tiny_models, tmp_path):
    store = Store.open(tmp_path)
    add_short_vs_long_votes(store, 8)
    version = run_round(store, tmp_path / "adapters", str(tiny_models["sft"]), RLHF)
    assert version == 1
    row = store.version(1)
    path = Path(row["path"])
    assert row["hyperparams"]["stages"] == ["grpo"] and row["hyperparams"]["preference_route"] == "rlhf"
    assert reward_models.exists(path) and row["metrics"]["reward_model"]["pairs"] == 8

    steps = store.round_steps()
    assert [s["stage"] for s in steps] == ["grpo"] * 8
    assert all({"reward", "kl"} <= set(s["extra"]) and s["loss_grpo"] == s["loss"] for s in steps)
    assert row["metrics"]["final_rl_reward"] == steps[-1]["extra"]["reward"]

    # trl's frozen reference copy ("ref") is neither saved nor left in the config.
    weights = load_file(str(path / "adapter_model.safetensors"))
    assert weights and not [k for k in weights if ".ref." in k]
    assert json.loads((path / "adapter_config.json").read_text())["r"] == RLHF.lora_r

    base, tokenizer = reward_models.load_base(str(tiny_models["sft"]))
    reward = (reward_models.attach(base, reward_models.folder_of(path)), tokenizer)
    prompts = [row["prompt"] for row in prompt_rows([], replace(RLHF, rl_steps=6))]
    before = mean_reward_of_samples(tiny_models["sft"], None, reward, prompts)
    after = mean_reward_of_samples(tiny_models["sft"], path, reward, prompts)
    assert after > before, (before, after)


def test_the_rl_prompts_are_the_voted_ones_and_prompts_nobody_voted_on(tmp_path):
    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps({"prompt": f"Unvoted {i}?"}) + "\n" for i in range(10)))
    voted = [{"prompt": [{"role": "user", "content": "Voted?"}], "chosen": [], "rejected": []}] * 2
    rows = prompt_rows(voted, replace(RLHF, rl_prompts=str(file), rl_steps=4), exclude={"Unvoted 0?"})
    texts = [row["prompt"][-1]["content"] for row in rows]
    assert texts[0] == "Voted?" and texts.count("Voted?") == 1
    assert len(texts) == 5 and set(texts[1:]) <= {f"Unvoted {i}?" for i in range(1, 10)}
    assert len(read_prompts(None)) >= 40, "the default: the example prompts in assets/"


def test_a_dpo_rounds_adapter_is_bit_for_bit_the_same_with_the_reward_model_beside_it(tiny_models, tmp_path):
    adapters = {}
    for reward_model in (True, False):
        store = Store.open(tmp_path / str(reward_model))
        add_short_vs_long_votes(store, 8)
        run_round(
            store,
            tmp_path / str(reward_model) / "adapters",
            str(tiny_models["sft"]),
            replace(RLHF, preference_route="dpo", reward_model=reward_model),
        )
        path = Path(store.version(1)["path"])
        assert reward_models.exists(path) == reward_model
        adapters[reward_model] = load_file(str(path / "adapter_model.safetensors"))
    assert adapters[True].keys() == adapters[False].keys()
    assert all(torch.equal(adapters[True][k], adapters[False][k]) for k in adapters[True])


def test_simulate_rlhf_records_the_surrogate_and_the_truth_at_checkpoints(tiny_models, tmp_path):
    """`simulate --preference-route rlhf --checkpoint-steps N`: the loop on the rlhf route, then RL against the last
    reward model for longer than a round, measured every N steps; the real data set's Stages view gets the curve."""
    from playground.data_sets import DataSet

    args = "--oracle shorter --votes 4 --min-pairs 2 --heldout-limit 2 --max-new-tokens 8 --eval-tokens 0 "
    args += "--preference-route rlhf --rl-steps 2 --rl-completion-tokens 8 --checkpoint-steps 2 "
    args += "--reward-learning-rate 2e-2"
    report = simulate_json(tiny_models, tmp_path, *args.split())
    assert {r["status"] for r in report["rounds"]} == {"done"}
    assert all(s["stage"] == "grpo" for r in report["rounds"] for s in r["steps"])
    measured = report["overoptimization"]
    assert measured["steps"] == 8 and measured["heldout_prompts"] == 2
    curve = measured["curve"]
    assert [c["step"] for c in curve] == [0, 2, 4, 6, 8]
    assert all({"step", "kl", "reward", "win_rate"} <= set(c) for c in curve)
    # Step 0 is the SFT model itself (a fresh adapter): every answer ties with the SFT model's, nothing moved.
    assert curve[0]["win_rate"] == 0.5 and curve[0]["ties"] == 1.0 and abs(curve[0]["kl"]) < 1e-6
    assert curve[-1]["kl"] > 0
    # RL never trained on a held-out prompt.
    unvoted = Path(report["workspace"]) / "rl_prompts.jsonl"
    held = {a["prompt"] for a in report["after"]["answers"]}
    assert unvoted.is_file() and not held & set(read_prompts(unvoted))
    real = DataSet.for_models(tmp_path, str(tiny_models["base"]), str(tiny_models["sft"])).open_store()
    assert real.latest_overoptimization()["curve"] == curve
