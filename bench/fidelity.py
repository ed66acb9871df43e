"""How closely the serving runtimes follow the model they stand for (`bench generate` reports these): an int8 model
against its float self, and the onnx runtime against torch, by teacher forcing on the reference's greedy answers."""

from __future__ import annotations


def int8_fidelity(float_model, int8_model, prompt: str, tokens: int, chat: bool) -> dict:
    """How closely an int8 model follows its float self on the float model's own greedy answer: the share of
    positions where both pick the same next token, and the answer's perplexity under each."""
    import torch

    from playground.prompting import base_prompt, chat_prompt

    tokenizer = float_model.tokenizer
    text = chat_prompt(tokenizer, prompt) if chat else base_prompt(prompt)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not chat).input_ids
    start = ids.shape[1]
    with torch.inference_mode():
        text = float_model.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        targets = text[0, start:]
        logits = {
            name: loaded.model(text).logits[0, start - 1 : -1].float()
            for name, loaded in (("float", float_model), ("int8", int8_model))
        }
    ppl = {name: float(torch.nn.functional.cross_entropy(lg, targets).exp()) for name, lg in logits.items()}
    agree = float((logits["float"].argmax(-1) == logits["int8"].argmax(-1)).float().mean())
    return {
        "int8_top1_agreement_with_float": round(agree, 3),
        "perplexity_float": round(ppl["float"], 3),
        "perplexity_int8": round(ppl["int8"], 3),
        "positions": int(targets.numel()),
    }


FIDELITY_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain photosynthesis to a child.",
    "Give me three tips for sleeping better.",
    "Why is the sky blue?",
    "Write a short poem about the sea.",
    "How do I boil an egg?",
    "What is 17 times 23?",
    "Summarize the plot of Cinderella.",
    "Translate 'good morning' into French and Spanish.",
    "List five fruits that are red.",
    "What causes the seasons on Earth?",
    "Write a Python function that reverses a string.",
    "Describe a cat to someone who has never seen one.",
    "What is the difference between weather and climate?",
    "Give me a recipe for pancakes.",
    "Why do we dream?",
    "Write a thank-you note to a teacher.",
    "What are the planets of the solar system?",
    "How does a bicycle stay upright?",
]


def onnx_fidelity(engine, torch_sft, torch_pref, torch_base, prompts: list[str], tokens: int) -> dict:
    """Next-token agreement of the onnx runtime with the torch model each arm stands for, by teacher forcing on the
    torch model's own greedy answers (prompts × tokens positions): SFT (fp32), preference (fp32 + the adapter),
    base (the onnx runtime's int8 against torch's float model)."""
    import torch

    from playground.prompting import base_prompt, chat_prompt

    result, teachers = {}, {role: onnx_teacher(engine.runtimes[role].workers[0]) for role in ("sft", "base")}
    for arm, reference, role, adapter in (
        ("sft", torch_sft, "sft", None),
        ("pref", torch_pref, "sft", f"v{engine.adapter_version}"),
        ("base", torch_base, "base", None),
    ):
        tokenizer = engine.sft.tokenizer if role == "sft" else engine.base.tokenizer
        agree = total = identical = 0
        for prompt in prompts:
            text = chat_prompt(tokenizer, prompt) if role == "sft" else base_prompt(prompt)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=role != "sft").input_ids
            start = ids.shape[1]
            with torch.inference_mode():
                sequence = reference.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
                wanted = reference(sequence).logits[0, start - 1 : -1].argmax(-1).tolist()
            got = teachers[role](sequence[0].tolist(), start, adapter)
            matches = [a == b for a, b in zip(got, wanted)]
            agree, total, identical = agree + sum(matches), total + len(matches), identical + all(matches)
        result[arm] = {
            "next_token_agreement": round(agree / total, 4),
            "positions": total,
            "prompts_agreeing_everywhere": identical,
            "prompts": len(prompts),
        }
    return result


def onnx_teacher(worker):
    """Teacher forcing on the ONNX copy a decode worker serves, with the adapters loaded in it, opened in this
    process: a function (ids, start, adapter name) -> the greedy next token after each prefix ids[:k],
    k = start..len(ids)-1."""
    import json

    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(worker.model_dir))
    adapters = og.Adapters(model)
    for name, path in worker.adapters.items():
        adapters.load(path, name)
    context_length = json.loads((worker.model_dir / "genai_config.json").read_text())["model"].get("context_length")

    def next_tokens(ids: list[int], start: int, adapter: str | None = None) -> list[int]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=min(context_length or 2048, max(len(ids) + 1, 1024)), do_sample=False)
        generator = og.Generator(model, params)
        if adapter:
            generator.set_active_adapter(adapters, adapter)
        generator.append_tokens(np.asarray(ids[:start], dtype=np.int32))
        predicted = []
        for k in range(start, len(ids)):
            logits = np.asarray(generator.get_logits())
            predicted.append(int(logits.reshape(-1, logits.shape[-1])[-1].argmax()))  # the guess for ids[k]
            generator.append_tokens(np.asarray([ids[k]], dtype=np.int32))
        return predicted

    return next_tokens
