# NOTE FOR THE UI ENGINEER: the full text of the GitHub issue you are implementing (the {ISSUE4} placeholder in
# your brief) is in /tmp/issue4.txt (also /work/ISSUE4-full-text.md). Read it first; delete this note.
"""Gradio wiring only: every action calls the engine (and, later, the store); no model logic lives here."""

from __future__ import annotations

import gradio as gr

from .generation import ARM_TITLES, ARMS, Engine, Sampling
from .prompting import PromptError, load_prompts


def _title(answer) -> str:
    version = f" v{answer.adapter_version}" if answer.arm == "pref" else ""
    return f"{ARM_TITLES[answer.arm]}{version} · {answer.model}"


def build_app(engine: Engine) -> gr.Blocks:
    examples = [row["prompt"] for row in load_prompts()][:12]

    def compare(prompt, temperature, top_p, max_new_tokens, seed):
        sampling = Sampling(temperature, top_p, int(max_new_tokens), int(seed) if seed not in (None, "") else None)
        try:
            for answers in engine.stream(prompt, sampling):
                yield [gr.update(value=answers[arm].text, label=_title(answers[arm])) for arm in ARMS] + [""]
        except (PromptError, ValueError) as error:
            yield [gr.update() for _ in ARMS] + [f"⚠️ {error}"]

    with gr.Blocks(title="Alignment Playground") as app:
        gr.Markdown("# Alignment Playground\nOne prompt, three models: **base** (pretrained), **SFT** "
                    "(instruction-tuned) and **preference-tuned** (SFT + DPO LoRA adapter).")
        prompt = gr.Textbox(label="Prompt", placeholder="Ask something…", lines=2)
        with gr.Accordion("Sampling settings", open=False):
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="top_p")
            max_new_tokens = gr.Slider(8, 512, value=128, step=8, label="Max new tokens")
            seed = gr.Number(value=None, precision=0, label="Seed (empty = random)")
        go = gr.Button("Compare", variant="primary")
        status = gr.Markdown()
        with gr.Row():
            outputs = [gr.Textbox(label=ARM_TITLES[arm], lines=12, interactive=False) for arm in ARMS]
        gr.Examples(examples, inputs=prompt)
        inputs = [prompt, temperature, top_p, max_new_tokens, seed]
        go.click(compare, inputs, outputs + [status], api_name="compare", concurrency_limit=2)
        prompt.submit(compare, inputs, outputs + [status], api_name=False, concurrency_limit=2)
    return app
