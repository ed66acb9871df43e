"""Alignment Playground web app: `python app.py` (offline on the embedded models) or a Hugging Face Space.

The server is up within seconds; the models load in a background thread (the page says so, and the first start
converts the embedded GGUF weights once, about a minute). When they are ready the trainer process starts; it
stops with the app (Ctrl-C, SIGTERM, or the interpreter exiting).

Every option can also come from the environment, so a Space is configured without code changes:
PLAYGROUND_PRESET, PLAYGROUND_BASE, PLAYGROUND_SFT, PLAYGROUND_HOST, PLAYGROUND_PORT, PLAYGROUND_DATA_DIR,
PLAYGROUND_MIN_PAIRS, PLAYGROUND_VOTES_PER_MINUTE, PLAYGROUND_MAX_NEW_TOKENS, PLAYGROUND_PRECISION,
PLAYGROUND_SERVE_THREADS. PLAYGROUND_ADMIN_TOKEN (environment only, never a flag: flags show in `ps`) makes
rollback and Hub pushes ask for that token.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys

from playground import config
from playground.models import PRECISIONS, PRESETS, ModelLoadError, resolve_preset
from playground.training import RoundSettings
from playground.ui import Backend, build_app, launch


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    defaults = RoundSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=env("PLAYGROUND_PRESET"), help=f"auto (default), {', '.join(PRESETS)}")
    parser.add_argument("--base", default=env("PLAYGROUND_BASE"), help="base model: Hub id, folder or .gguf")
    parser.add_argument("--sft", default=env("PLAYGROUND_SFT"), help="SFT model: Hub id, folder or .gguf")
    # On a Space the server must listen on all interfaces; elsewhere only this machine sees it unless asked.
    parser.add_argument("--host", default=env("PLAYGROUND_HOST", "0.0.0.0" if env("SPACE_ID") else "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PLAYGROUND_PORT", env("GRADIO_SERVER_PORT", "7860"))))
    parser.add_argument("--data-dir", default=env(config.DATA_DIR_ENV), help="database, adapters, model caches")
    parser.add_argument("--min-pairs", type=int, default=int(env("PLAYGROUND_MIN_PAIRS", defaults.min_pairs)),
                        help="new training pairs that start a DPO round")
    parser.add_argument("--votes-per-minute", type=int, default=int(env("PLAYGROUND_VOTES_PER_MINUTE", "20")),
                        help="vote limit per browser session")
    parser.add_argument("--max-new-tokens", type=int, default=int(env("PLAYGROUND_MAX_NEW_TOKENS", "128")),
                        help="the page's default answer length")
    parser.add_argument("--no-trainer", action="store_true",
                        help="serve only; train elsewhere (python -m playground train --watch)")
    parser.add_argument("--device", default=env("PLAYGROUND_DEVICE", "cpu"))
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--precision", choices=PRECISIONS, default=env("PLAYGROUND_PRECISION", "auto"),
                        help="auto (CPU: base model int8, SFT float; GPU: float), int8 (both), float")
    parser.add_argument("--serve-threads", type=int, default=int(env("PLAYGROUND_SERVE_THREADS", "0")) or None,
                        help="torch threads of the server (default: half the CPU cores)")
    return parser.parse_args(argv)


def create_app(args: argparse.Namespace):
    """The page and its backend, nothing started: (gradio Blocks, ui.Backend). Raises ModelLoadError for an
    unknown preset (that needs no model loading, so it fails before the server starts)."""
    preset = resolve_preset(args.preset, args.base, args.sft)
    backend = Backend(
        preset=preset,
        data_dir=config.resolve_data_dir(args.data_dir),
        round_settings=RoundSettings(min_pairs=args.min_pairs),
        admin_token=os.environ.get("PLAYGROUND_ADMIN_TOKEN") or None,
        votes_per_minute=args.votes_per_minute,
        trainer=not args.no_trainer,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        precision=args.precision,
        serve_threads=args.serve_threads,
    )
    return build_app(backend, max_new_tokens=args.max_new_tokens), backend


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        demo, backend = create_app(args)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The trainer is a child process: whatever ends this one must end it too.
    atexit.register(backend.close)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # SystemExit runs the finally and atexit
    backend.start()
    launch(demo, args.host, args.port)
    logging.info("Serving on http://%s:%d", args.host, args.port)
    try:
        demo.block_thread()  # returns on Ctrl-C
    finally:
        backend.close()
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
