"""Alignment Playground web app: `python app.py` (offline on the embedded models) or a Hugging Face Space.

Every option can also come from the environment, so a Space is configured without code changes:
PLAYGROUND_PRESET, PLAYGROUND_BASE, PLAYGROUND_SFT, PLAYGROUND_HOST, PLAYGROUND_PORT, PLAYGROUND_DATA_DIR.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from playground import config
from playground.models import PRESETS, ModelLoadError, resolve_preset


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=env("PLAYGROUND_PRESET"), help=f"auto (default), {', '.join(PRESETS)}")
    parser.add_argument("--base", default=env("PLAYGROUND_BASE"), help="base model: Hub id, folder or .gguf")
    parser.add_argument("--sft", default=env("PLAYGROUND_SFT"), help="SFT model: Hub id, folder or .gguf")
    parser.add_argument("--host", default=env("PLAYGROUND_HOST", "0.0.0.0" if env("SPACE_ID") else "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PLAYGROUND_PORT", env("GRADIO_SERVER_PORT", "7860"))))
    parser.add_argument("--data-dir", default=env(config.DATA_DIR_ENV))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from playground.generation import Engine
    from playground.ui import build_app

    try:
        preset = resolve_preset(args.preset, args.base, args.sft)
        engine = Engine.from_preset(preset, config.resolve_data_dir(args.data_dir))
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = build_app(engine)
    app.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
