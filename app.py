"""Alignment Playground web app: `python app.py` (offline on the embedded models) or a Hugging Face Space.

The server is up within seconds; the models load in a background thread (the page says so, and the first start
converts the embedded GGUF weights once, about a minute). When they are ready the trainer process starts; it
stops with the app (Ctrl-C, SIGTERM, or the interpreter exiting).

Every option is also an environment variable (`--min-pairs` = PLAYGROUND_MIN_PAIRS), so a Space is configured
without code changes: `python -m playground options` lists them all. PLAYGROUND_ADMIN_TOKEN (environment only,
never a flag: flags show in `ps`) makes rollback and Hub pushes ask for that token.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys

from playground.options import parser_with, settings_from
from playground.settings import ADMIN_TOKEN_ENV, ModelSettings, RoundSettings, Sampling, ServerSettings

SETTINGS = (ModelSettings, ServerSettings, RoundSettings, Sampling)


def parse_args(argv=None) -> dict:
    """{settings class: instance} from the flags, the environment and the defaults."""
    args = parser_with(*SETTINGS, description=__doc__).parse_args(argv)
    return {cls: settings_from(args, cls) for cls in SETTINGS}


def create_app(settings: dict):
    """The page and its playground, nothing started: (gradio Blocks, ui.Page). Raises ModelLoadError for an unknown
    preset (that needs no model loading, so it fails before the server starts)."""
    from playground.core import Playground
    from playground.ui import Page, build_app

    playground = Playground(settings[ModelSettings], settings[RoundSettings])
    from playground.settings import on_space

    server = settings[ServerSettings]
    page = Page(
        playground,
        votes_per_minute=server.votes_per_minute,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
        defaults=settings[Sampling],
        votes_per_minute_per_address=server.votes_per_minute_per_address,
        on_space=on_space(),
        hub_dataset=settings[ModelSettings].hub_dataset,
        require_login=server.require_login,
    )
    return build_app(page), page


def main(argv=None) -> int:
    from playground.cli import configure_logging
    from playground.models import ModelLoadError
    from playground.store import StoreError
    from playground.ui import launch

    try:
        settings = parse_args(argv)
    except ValueError as error:  # a setting out of range
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_logging(quiet=False)
    try:
        demo, page = create_app(settings)
    except (ModelLoadError, ValueError, StoreError) as error:  # StoreError: e.g. the durable copy cannot be bound
        print(f"error: {error}", file=sys.stderr)
        return 2
    playground, server = page.playground, settings[ServerSettings]
    # The trainer is a child process: whatever ends this one must end it too.
    atexit.register(playground.close)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # SystemExit runs the finally and atexit
    playground.start(trainer=server.trainer)
    launch(demo, server.host, server.port)
    logging.info("Serving on http://%s:%d (data set %s)", server.host, server.port, playground.data_set.name)
    try:
        demo.block_thread()  # returns on Ctrl-C
    finally:
        playground.close()
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
