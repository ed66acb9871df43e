"""A model's own generation settings do not apply: the app's sampling settings (settings.Sampling: temperature,
top-p, the answer's length, the seed) are the only ones that shape an answer. Whatever else a model's
generation_config.json turns on (a repetition penalty, banned n-grams, a minimum length, typical-p, min-p, banned or
forced tokens, beams, ...) is set to neutral on every runtime and in every `generate` the project runs; this module
spells that once per decoder.

Why neutral, and not the model's settings everywhere: the arms must differ only by model and adapter, whichever
runtime decodes them, and the decoders do not share a set of processors (the onnx worker samples raw logits with
its own numpy sampler; vLLM has no n-gram ban). And what the project scores (drift's KL and perplexity, explain's
log-probabilities, the simulated voter's fluency) is the model's raw distribution: a penalised sampler would be
measured against a raw reference, and version 0's KL to the SFT model would not be 0.
"""

from __future__ import annotations

# Keyword arguments of transformers' `generate` (they win over the model's generation_config; a `generation_config`
# argument would not, its unset fields are filled from the model's). Every caller samples in its own logits
# processor (decoding.SeededSampler), so `generate` runs greedy and takes the one token that processor leaves; the
# sampling warpers' fields are None so a model's values neither apply nor warn.
TRANSFORMERS = {
    "do_sample": False,
    "num_beams": 1,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "penalty_alpha": None,
    "dola_layers": None,
    "prompt_lookup_num_tokens": None,
    "temperature": None,
    "top_p": None,
    "top_k": None,
    "top_h": None,
    "min_p": None,
    "typical_p": None,
    "epsilon_cutoff": None,
    "eta_cutoff": None,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "diversity_penalty": 0.0,
    "length_penalty": None,
    "exponential_decay_length_penalty": None,
    "min_length": None,  # None, not 0: both set, transformers warns on every call
    "min_new_tokens": None,
    "bad_words_ids": None,
    "force_words_ids": None,
    "constraints": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "remove_invalid_values": False,
    "renormalize_logits": False,
    "max_time": None,
    "stop_strings": None,
}

# ONNX Runtime GenAI's search options (`GeneratorParams.set_search_options`): its model builder copies a model's
# repetition penalty, n-gram ban, beams and sampling into genai_config.json, and the generator applies the
# penalties even when it decodes greedily. The worker picks each token itself (onnx/sampling.py), so greedy.
GENAI = {
    "do_sample": False,
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_length": 0,
    "length_penalty": 1.0,
    "diversity_penalty": 0.0,
}

# Fields of a vLLM completion request. A server started with `--generation-config auto` (vLLM's default, and any
# server given by URL) takes the model's repetition penalty, min-p, top-k, ... as the default of a field a request
# leaves out; sent, they win. Sampling sets temperature and top-p over these (vllm/client.py).
VLLM = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,  # all tokens
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "min_tokens": 0,
    "n": 1,
}
