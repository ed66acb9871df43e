"""The durable copy's costs, each against a plain baseline measured in the same run.

    python -m bench.persist [--votes 1000] [--versions 20] [--no-restart] [--json]

1. Restore: a data set of `--votes` best-of-three votes (full rankings, 3 pairs each) and `--versions` adapter
   versions (real PEFT LoRA folders for the embedded SFT model, shaped by the default round settings),
   each round with 24 logged steps. Timed: the first copy into an empty target (`bind`: the snapshot), and a restore
   into an empty store (`restore`); baseline: copying the SQLite file and the adapter folders as plain files.
2. Vote commit: the time `vote_best` takes to return, with no target (baseline) and with a bound target whose copier
   thread runs and is woken after every vote (as the app does), over the same number of votes on the same prompts.
3. Restart to serving on the embedded default (`python app.py --preset embedded`, model cache in place): process
   start to "ready" with a fresh data directory and no target (baseline), and with a fresh data directory and the
   target of step 1 to restore from (the serving version is the last of them and must be loaded when ready).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ANSWER = (
    "A river is a natural stream of water flowing toward an ocean, a lake or another river. Rivers shape "
    "valleys, carry sediment and support many kinds of life along their banks. "
)


def fill(store, votes: int, versions: int, adapter: Path) -> None:
    for i in range(votes):
        answers = [
            {
                "arm": arm,
                "text": f"{ANSWER * (1 + k)} ({arm} {i})",
                "model": f"model-{arm}",
                "adapter_version": 0,
                "settings": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 128},
                "seed": i,
                "prompt_tokens": 20,
                "new_tokens": 40 * (1 + k),
                "seconds": 4.0,
                "ttft": 0.2,
                "finish_reason": "stop",
            }
            for k, arm in enumerate(("base", "sft", "pref"))
        ]
        comparison, ids = store.add_comparison(
            f"Question {i}: tell me about rivers number {i}.", f"session-{i % 97}", answers=answers
        )
        store.vote_best(f"session-{i % 97}", comparison, [ids[2], ids[1], ids[0]])
    pending = [p["id"] for p in store.pending_pairs()]
    chunk = max(1, len(pending) // versions)
    parent = None
    for n in range(versions):
        round_id = store.start_round(parent, pending[n * chunk : (n + 1) * chunk], {"beta": 0.1}, pid=os.getpid())
        for step in range(1, 25):
            store.log_step(
                round_id,
                step,
                {
                    "loss": 0.69 - step / 100,
                    "rewards/margins": step / 50,
                    "rewards/accuracies": 0.75,
                    "learning_rate": 2e-4,
                    "epoch": step / 12,
                },
            )
            store.set_round_progress(round_id, step, 24)
        folder = store.root / "adapters" / f"round-{round_id:04d}"
        shutil.copytree(adapter, folder)
        parent = store.finish_round(round_id, folder, {"final_loss": 0.45})


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def restore_figures(work: Path, data_set: str, votes: int, versions: int, adapter: Path) -> dict:
    from playground.store import Store, durable

    store = Store.open(work / "source" / "datasets" / data_set)
    fill(store, votes, versions, adapter)
    target = work / "target"
    copy = durable.DurableCopy(store, data_set, target)
    snapshot_s, _ = timed(copy.bind)
    copy.stop()

    restored = Store.open(work / "restored" / "datasets" / data_set)
    restore_s, summary = timed(lambda: durable.restore(restored, copy.folder))
    assert restored.counts()["votes"] == votes and restored.serving_version() == versions, summary

    plain = work / "plain" / "datasets" / data_set
    plain.mkdir(parents=True)

    def plain_copy():
        shutil.copy2(store.path, plain / store.path.name)
        shutil.copytree(store.root / "adapters", plain / "adapters")

    plain_s, _ = timed(plain_copy)
    shard_mb = sum(p.stat().st_size for p in durable.shards(copy.folder)) / 2**20
    adapters_mb = sum(p.stat().st_size for p in (copy.folder / "adapters").rglob("*") if p.is_file()) / 2**20
    return {
        "restore_s": round(restore_s, 2),
        "restore_plain_file_copy_s": round(plain_s, 2),
        "restore_ratio_to_plain_copy": round(restore_s / plain_s, 1),
        "first_copy_snapshot_s": round(snapshot_s, 2),
        "rows_restored": sum(summary["rows"].values()),
        "shards_mb": round(shard_mb, 1),
        "adapters_mb": round(adapters_mb, 1),
        "sqlite_mb": round(store.path.stat().st_size / 2**20, 1),
    }, target


def vote_latencies(store, n: int, after_vote=lambda: None) -> list[float]:
    comparisons = []
    for i in range(n):
        answers = [{"arm": arm, "text": f"{ANSWER} {arm} {i}", "model": arm} for arm in ("base", "sft", "pref")]
        comparisons.append(store.add_comparison(f"Vote prompt {i}", f"voter-{i}", answers=answers))
    times = []
    for i, (comparison, ids) in enumerate(comparisons):
        start = time.perf_counter()
        store.vote_best(f"voter-{i}", comparison, [ids[2], ids[1], ids[0]])
        times.append(time.perf_counter() - start)
        after_vote()
        time.sleep(0.005)  # votes arrive one at a time; the copier gets its turn between them
    return times


def vote_figures(work: Path, n: int) -> dict:
    from playground.store import Store, durable

    plain = Store.open(work / "votes-plain" / "ds")
    copied = Store.open(work / "votes-copied" / "ds")
    copy = durable.DurableCopy(copied, "ds", work / "votes-target")
    copy.bind()
    copy.start()
    try:
        without = vote_latencies(plain, n)
        with_copy = vote_latencies(copied, n, copy.wake)
    finally:
        copy.stop()
    assert copy.pending() == 0
    med_without, med_with = statistics.median(without) * 1e3, statistics.median(with_copy) * 1e3
    p95 = lambda xs: sorted(xs)[int(0.95 * len(xs))] * 1e3  # noqa: E731
    return {
        "vote_commit_ms_no_target": round(med_without, 2),
        "vote_commit_ms_with_copy": round(med_with, 2),
        "vote_commit_added_ms": round(med_with - med_without, 2),
        "vote_commit_ratio": round(med_with / med_without, 2),
        "vote_commit_p95_ms_no_target": round(p95(without), 2),
        "vote_commit_p95_ms_with_copy": round(p95(with_copy), 2),
    }


def seconds_to_ready(data_dir: Path, extra: list[str], expect_version: int | None) -> float:
    import httpx
    from gradio_client import Client

    from bench.common import start_app, stop_app
    from playground.processes import free_port

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    server = start_app(ROOT, port, data_dir, "--preset", "embedded", "--no-trainer", *extra, env=env)
    try:
        client = None
        while time.perf_counter() - start < 600:
            try:
                client = client or Client(f"http://127.0.0.1:{port}/", verbose=False)
                stats = client.predict(api_name="/stats")
                if stats["ready"]:
                    seconds = time.perf_counter() - start
                    if expect_version is not None:
                        assert stats["engine_version"] == expect_version, stats["engine_version"]
                        assert stats["durable_copy"]["binding"] == "restored", stats["durable_copy"]
                    return seconds
            except (httpx.HTTPError, OSError, ValueError):
                pass
            if server.poll() is not None:
                raise RuntimeError(f"app.py exited with {server.returncode}")
            time.sleep(0.25)
        raise RuntimeError("not ready after 600 s")
    finally:
        stop_app(server)


def run(args) -> dict:
    from bench.common import lora_adapter, report
    from playground.data_sets import DataSet
    from playground.models import model_folder, models_dir, resolve_preset
    from playground.settings import ModelSettings

    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    preset = resolve_preset("embedded", None, None)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        probe = work / "probe"
        (probe).mkdir()
        (probe / "models").symlink_to(models_dir(data_dir).resolve())
        data_set = DataSet.for_models(probe, preset.base, preset.sft).name
        adapter = Path(
            lora_adapter(model_folder(preset.sft, data_dir, False), work / "adapter", init_lora_weights="gaussian")
        )
        restore, target = restore_figures(work, data_set, args.votes, args.versions, adapter)
        figures |= restore
        figures |= vote_figures(work, args.commit_votes)
        if not args.no_restart:
            runs = {}
            for name, extra, version in (("plain", [], None), ("restore", ["--persist", str(target)], args.versions)):
                fresh = work / f"start-{name}"
                fresh.mkdir()
                (fresh / "models").symlink_to(models_dir(data_dir).resolve())
                runs[name] = seconds_to_ready(fresh, extra, version)
            figures |= {
                "restart_to_serving_s_plain": round(runs["plain"], 1),
                "restart_to_serving_s_with_restore": round(runs["restore"], 1),
                "restart_restore_ratio": round(runs["restore"] / runs["plain"], 2),
            }
    settings = {"votes": args.votes, "versions": args.versions, "commit_votes": args.commit_votes}
    return report("persist", settings, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--commit-votes", type=int, default=300)
    parser.add_argument("--no-restart", action="store_true", help="skip the app restarts (step 3)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
