"""How closely the serving runtimes follow the model they stand for (`bench generate` reports these): an int8 model
against its float self, and the onnx runtime against torch, by teacher forcing on the reference's greedy answers."""

from __future__ import annotations


def int8_fidelity(float_model, int8_model, prompt: str, tokens: int, chat: bool) -> dict:
    """How closely an int8 model follows its float self on the float model's own greedy answer: the share of
    positions where both pick the same next token, and the answer's perplexity under each."""
    import torch

    from playground.prompting import base_prompt, chat_prompt
    from playground.runtimes import neutral

    tokenizer = float_model.tokenizer
    text = chat_prompt(tokenizer, prompt) if chat else base_prompt(prompt)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not chat).input_ids
    start = ids.shape[1]
    with torch.inference_mode():
        text = float_model.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            **neutral.TRANSFORMERS,
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
    torch model's own greedy answers (prompts × tokens positions): SFT (fp32) and preference (fp32 + the adapter)
    as the app serves them, two rows of one batch (the preference row's LoRA gated on, the SFT row's off); base
    (the onnx runtime's int8 against torch's float model)."""
    import torch

    from playground.prompting import base_prompt, chat_prompt
    from playground.runtimes import neutral

    teachers = {role: onnx_teacher(engine.runtimes[role].workers[0]) for role in ("sft", "base")}
    adapter = f"v{engine.adapter_version}"
    tally = {arm: [0, 0, 0] for arm in ("sft", "pref", "base")}  # agreeing positions, positions, prompts agreeing
    for prompt in prompts:
        for role, rows in (
            ("sft", (("sft", torch_sft, None), ("pref", torch_pref, adapter))),
            ("base", (("base", torch_base, None),)),
        ):
            tokenizer = engine.sft.tokenizer if role == "sft" else engine.base.tokenizer
            text = chat_prompt(tokenizer, prompt) if role == "sft" else base_prompt(prompt)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=role != "sft").input_ids
            start = ids.shape[1]
            sequences, wanted = [], []
            for _, reference, _ in rows:
                with torch.inference_mode():
                    sequence = reference.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        **neutral.TRANSFORMERS | {"min_new_tokens": tokens},
                        max_new_tokens=tokens,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                    wanted.append(reference(sequence).logits[0, start - 1 : -1].argmax(-1).tolist())
                sequences.append(sequence[0].tolist())
            got = teachers[role](sequences, start, [row[2] for row in rows])
            for (arm, _, _), row_got, row_wanted in zip(rows, got, wanted):
                matches = [a == b for a, b in zip(row_got, row_wanted)]
                tally[arm][0] += sum(matches)
                tally[arm][1] += len(matches)
                tally[arm][2] += all(matches)
    return {
        arm: {
            "next_token_agreement": round(agree / total, 4),
            "positions": total,
            "prompts_agreeing_everywhere": identical,
            "prompts": len(prompts),
        }
        for arm, (agree, total, identical) in tally.items()
    }


def onnx_teacher(worker):
    """Teacher forcing on the ONNX copy a decode worker serves, with the adapters loaded in it, opened in this
    process: a function (sequences, start, adapter name per row) -> per row, the greedy next token after each
    prefix sequence[:k], k = start..len(sequence)-1. The rows (same prompt, same length) decode as one batch the
    way the worker batches them: one adapter active, gated per row where the graph has the gate."""
    import json

    import numpy as np
    import onnxruntime_genai as og

    from playground.runtimes.neutral import GENAI
    from playground.runtimes.onnx.build import ROW_SCALE
    from playground.runtimes.onnx.sampling import forced
    from playground.runtimes.onnx.worker import gate_rows

    model = og.Model(str(worker.model_dir))
    adapters = og.Adapters(model)
    for name, path in worker.adapters.items():
        adapters.load(path, name)
    context_length = json.loads((worker.model_dir / "genai_config.json").read_text())["model"].get("context_length")

    def next_tokens(sequences: list[list[int]], start: int, row_adapters: list[str | None]) -> list[list[int]]:
        params = og.GeneratorParams(model)
        length = min(context_length or 2048, max(len(sequences[0]) + 1, 1024))
        params.set_search_options(**GENAI, max_length=length, batch_size=len(sequences))
        generator = og.Generator(model, params)
        active = next((name for name in row_adapters if name), None)
        if active:
            generator.set_active_adapter(adapters, active)
        scales = gate_rows(generator, ROW_SCALE, row_adapters, np) if worker.slots else None
        generator.append_tokens(np.asarray([sequence[:start] for sequence in sequences], dtype=np.int32))
        predicted = [[] for _ in sequences]
        for k in range(start, len(sequences[0])):
            logits = np.asarray(generator.get_logits())
            for row, guesses in enumerate(predicted):
                guesses.append(int(logits[row, -1].argmax()))  # the guess for sequence[k]
            generator.set_logits(forced(logits, [sequence[k] for sequence in sequences]))
            generator.generate_next_token()
        del generator, scales  # the generator is done: now its scales may go (gate_rows)
        return predicted

    return next_tokens
