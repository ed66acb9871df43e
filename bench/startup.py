"""Process start to a page that answers, with the models already cached (or, with --fresh, from nothing: a fresh
clone's first start); and peak memory of server + trainer.

    python -m bench.startup [--fresh] [--json]

Starts `python app.py` exactly as a user does (on a free local port, its own data directory whose model cache
links to the main one; with --fresh an empty one, so the embedded models are converted and built again), polls
until the page serves and the models are ready (a compare request succeeds), then until the trainer watches the
store (`first_round_possible_s`), sampling the RSS of the server process, its decode workers and its trainer child
meanwhile (at least `--sample-seconds`), and stops them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args) -> dict:
    import httpx
    from gradio_client import Client

    from bench.common import MemorySampler, report, start_app, stop_app
    from playground.models import models_dir
    from playground.processes import free_port
    from playground.settings import ModelSettings

    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    with tempfile.TemporaryDirectory() as work:
        if not args.fresh:
            (Path(work) / "models").symlink_to(models_dir(data_dir).resolve())
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        start = time.perf_counter()
        server = start_app(ROOT, port, work, "--preset", args.preset, env=env)
        memory = MemorySampler(server.pid, interval=0.5, uss=True)
        try:
            page = answered = None
            client = None
            while time.perf_counter() - start < args.timeout:
                try:
                    client = client or Client(f"http://127.0.0.1:{port}/", verbose=False)
                    page = page or time.perf_counter() - start
                    if client.predict(api_name="/stats")["ready"]:
                        out = client.predict("Hi", 0.0, 1.0, 8, 0, False, api_name="/compare")
                        assert all(chat and chat[-1]["role"] == "assistant" for chat in out[1:9:3]), out
                        answered = time.perf_counter() - start
                        break
                except (httpx.HTTPError, OSError, ValueError):  # not listening yet
                    pass
                time.sleep(0.5)
            trainer_up = None
            with memory:
                sampled_until = time.perf_counter() + args.sample_seconds
                # A round is possible once the trainer runs and watches the store (on a first start it begins
                # after the base model's ONNX copy is built, which follows the first answer).
                while answered and time.perf_counter() - start < args.timeout:
                    if trainer_up is None:
                        state = (client.predict(api_name="/stats").get("trainer") or {}).get("state")
                        if state in ("waiting", "evaluating", "training"):
                            trainer_up = time.perf_counter() - start
                    if trainer_up is not None and time.perf_counter() >= sampled_until:
                        break
                    time.sleep(0.5)
        finally:
            stop_app(server)
    peak = defaultdict(float, memory.peak)  # nothing sampled when the app never answered
    figures = {
        "process_start_to_page_s": round(page, 1) if page else None,
        "process_start_to_first_answer_s": round(answered, 1) if answered else None,
        "first_answer_s": round(answered, 1) if answered else None,
        "first_round_possible_s": round(trainer_up, 1) if trainer_up else None,
        "server_peak_rss_mb": round(peak["server"] + peak["decode_workers"]),
        "trainer_peak_rss_mb": round(peak["trainer"]),
        "server_plus_trainer_peak_rss_mb": round(peak["total"]),
        "server_peak_uss_mb": round(peak["server_uss"] + peak["decode_workers_uss"]),
        "trainer_peak_uss_mb": round(peak["trainer_uss"]),
        "server_plus_trainer_peak_uss_mb": round(peak["total_uss"]),
    }
    return report(
        "startup",
        {"preset": args.preset, "fresh": args.fresh, "rss_sampled_s": args.sample_seconds},
        figures,
        args.json,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--sample-seconds", type=float, default=20)
    parser.add_argument(
        "--fresh", action="store_true", help="an empty data directory: nothing converted or built (a first start)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the first answer")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
