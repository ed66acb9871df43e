"""llama.cpp's single-stream decode speed on a GGUF file, run as a child process by `bench generate --llama-cpp`.

    PYTHON bench/llama_cpp_stream.py MODEL.gguf --tokens 128 --threads 2 --prompt "..."

It imports only llama-cpp-python (not this project), so it runs in its own environment, and a crash of the native
library (a build with CPU instructions the machine lacks stops on SIGILL) ends this process, not the bench. Prints
one JSON object: tokens/s after the first token, the tokens, the threads, the first token's latency.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help="a plain completion, end of text ignored (base models)")
    args = parser.parse_args()
    from llama_cpp import Llama

    llm = Llama(model_path=args.gguf, n_threads=args.threads, n_ctx=1024, verbose=False)
    messages = [{"role": "user", "content": args.prompt}]
    runs = []
    for _ in range(args.repeats + 1):  # the first is a warm-up
        start, first, count = time.perf_counter(), None, 0
        if args.raw:
            stream = llm.create_completion(
                args.prompt, max_tokens=args.tokens, temperature=0, stream=True, logit_bias={llm.token_eos(): -1e9}
            )
        else:
            stream = llm.create_chat_completion(messages, max_tokens=args.tokens, temperature=0, stream=True)
        for _chunk in stream:
            count += 1
            first = first or time.perf_counter()
        runs.append({"tok_s": (count - 1) / (time.perf_counter() - first), "tokens": count, "ttft": first - start})
    runs = sorted(runs[1:], key=lambda run: run["tok_s"])
    middle = runs[len(runs) // 2]
    print(
        json.dumps(
            {
                "tokens_per_s": round(middle["tok_s"], 1),
                "tokens": middle["tokens"],
                "ttft_s": round(middle["ttft"], 3),
                "threads": args.threads,
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
