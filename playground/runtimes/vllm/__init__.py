"""The `vllm` serving runtime: vLLM's OpenAI-compatible server (client.py talks to it, server.py starts one)."""
