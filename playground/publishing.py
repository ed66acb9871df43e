"""Getting the data out: JSONL exports (pairs, demonstrations and ratings in TRL's formats, raw votes), an adapter
version as a folder that loads anywhere (with a model card), and pushes of both to the Hugging Face Hub. The CLI and
the page share these.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from .errors import UserError
from .models import needs_conversion
from .store import Store
from .store.versions import REWARD_MODEL_FOLDER
from .training.examples import KIND_OF, STAGE_TITLES

EXPORTS = ("pairs", "votes", "demonstrations", "ratings")
# The trl-format exports and their file names in a dataset repo: one config each (`load_dataset(repo, "ratings")`).
HUB_FILES = {"pairs": "preference_pairs.jsonl", "demonstrations": "demonstrations.jsonl", "ratings": "ratings.jsonl"}
EXPORT_KEEP_SECONDS = 3600
QUANTIZED_NOTE = (
    "The SFT weights this adapter was trained on came from a GGUF file ({source}) de-quantized to "
    "float32, not from the original checkpoint: expect small differences on the original weights."
)


def write_export(store: Store, what: str, path: str | Path) -> int:
    """Write 'pairs' (DPO: TRL's conversational preference format), 'votes' (raw, with their answers),
    'demonstrations' (SFT: the corrections in TRL's conversational `messages` format) or 'ratings' (KTO: TRL's
    unpaired prompt / completion / label format) as JSONL; the row count."""
    if what not in EXPORTS:
        raise UserError(f"Unknown export {what!r}; choose one of {', '.join(EXPORTS)}.")
    rows = {
        "pairs": store.export_pairs,
        "votes": store.export_votes,
        "demonstrations": store.export_demonstrations,
        "ratings": store.export_ratings,
    }[what]()
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


def export_file(store: Store, what: str = "pairs") -> tuple[Path, int]:
    """A fresh export file for a download. Files go to the system temp dir (Gradio serves files from there);
    exports older than an hour are deleted, so a long-running server does not fill its disk with them."""
    folder = Path(tempfile.gettempdir()) / "alignment-playground-exports"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        try:
            if time.time() - old.stat().st_mtime > EXPORT_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another export pruned it first
            pass
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = {"pairs": "preference-pairs"}.get(what, what)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-{stamp}-", dir=folder)) / f"{name}-{stamp}.jsonl"
    return path, write_export(store, what, path)


def lineage(store: Store, version: int) -> list[dict]:
    """The version and its ancestors, oldest first: the rounds that made it."""
    chain, seen = [], set()
    while version and version not in seen:
        seen.add(version)
        row = store.version(version)
        if row is None:
            break
        chain.append(row)
        version = row["parent_version"] or 0
    return chain[::-1]


def model_card(
    store: Store,
    version: int,
    *,
    sft_spec: str,
    sft_hub_id: str | None,
    dataset_repo: str | None = None,
    model_repo: str | None = None,
    win_rate: dict | None = None,
) -> str:
    """A Hub model card (README.md with metadata) for an adapter version: what it adapts, what trained it."""
    from huggingface_hub import ModelCard, ModelCardData

    row = store.version(version)
    chain = lineage(store, version)
    params = row.get("hyperparams") or {}
    metrics = row.get("metrics") or {}
    base = sft_hub_id or sft_spec
    data = ModelCardData(
        base_model=sft_hub_id,
        library_name="peft",
        license=None,
        datasets=[dataset_repo] if dataset_repo else None,
        tags=["dpo", "sft", "kto", "lora", "trl", "peft", "alignment-playground"],
    )
    settings = ", ".join(
        f"{k}={params[k]}"
        for k in (
            "beta",
            "learning_rate",
            "sft_weight",
            "rating_weight",
            "epochs",
            "batch_size",
            "grad_accumulation",
            "max_length",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
        )
        if k in params
    )
    learned = row["learned_from"]
    trained = ", then ".join(
        f"{STAGE_TITLES[stage]} ({learned[KIND_OF[stage]]})"
        for stage in params.get("stages", ["dpo"])
        if stage in STAGE_TITLES
    )
    rounds = "\n".join(
        f"| v{v['version']} | v{v['parent_version'] or 0} | {v['learned_from']['demonstrations']} | "
        f"{v['learned_from']['pairs']} | {v['learned_from']['ratings']} | "
        f"{_number((v.get('metrics') or {}).get('final_loss'))} | "
        f"{_number((v.get('metrics') or {}).get('final_reward_margin'))} | "
        f"{_number((v.get('metrics') or {}).get('final_reward_accuracy'))} |"
        for v in chain
    )
    notes = []
    if needs_conversion(sft_spec):
        notes.append(QUANTIZED_NOTE.format(source=sft_spec))
    if sft_hub_id is None:
        notes.append(
            f"The SFT model was a local model (`{sft_spec}`) with no Hub id; `base_model_name_or_path` "
            "names that folder. Point it at your copy of the model before loading."
        )
    repo = model_repo or "THIS/REPO"
    usage = (
        f'from peft import AutoPeftModelForCausalLM\n\nmodel = AutoPeftModelForCausalLM.from_pretrained("{repo}")'
        if sft_hub_id
        else f'from peft import PeftModel\n\nmodel = PeftModel.from_pretrained(sft_model, "{repo}")'
    )
    votes = (
        f"Its answers won {win_rate['wins']:g} of {win_rate['games']} games in the votes so far."
        if win_rate and win_rate.get("games")
        else ""
    )
    content = f"""---
{data.to_yaml()}
---

# Alignment Playground adapter v{version}

A LoRA adapter for [{base}]({"https://huggingface.co/" + sft_hub_id if sft_hub_id else base}), trained with
[trl](https://github.com/huggingface/trl) on the feedback people gave in an Alignment Playground app: instruction
alignment on their better answers, then preference alignment on their votes. The reference model of every
preference stage was the SFT model itself (the adapter disabled). {votes}

- Version {version}, made by round {row.get("round_id")}: {trained or "no stage recorded"} (new and replayed
  from earlier rounds; {params.get("new_pairs", "?")} of the pairs were new).
- Settings: {settings or "not recorded"}.
- Final loss {_number(metrics.get("final_loss"))}, reward margin {_number(metrics.get("final_reward_margin"))},
  reward accuracy {_number(metrics.get("final_reward_accuracy"))} (on the round's own training pairs).
{("- The feedback: the dataset [" + dataset_repo + "](https://huggingface.co/datasets/" + dataset_repo + ").") if dataset_repo else ""}

## Rounds that made it

| version | parent | demonstrations | pairs | ratings | final loss | reward margin | reward accuracy |
|---|---|---|---|---|---|---|---|
{rounds}

## Use

```python
{usage}
```

{chr(10).join("**Note.** " + n for n in notes)}
"""
    return str(ModelCard(content))


def _number(value) -> str:
    return format(value, ".3f") if isinstance(value, (int, float)) else "–"


def adapter_folder(
    store: Store,
    version: int,
    out: str | Path,
    *,
    sft_spec: str,
    sft_hub_id: str | None,
    dataset_repo: str | None = None,
    model_repo: str | None = None,
    win_rate: dict | None = None,
) -> Path:
    """A copy of an adapter version that loads elsewhere: PEFT's files, `base_model_name_or_path` set to the SFT
    model's Hub id (when it has one), the playground's round record and a model card."""
    row = store.version(version) if version else None
    if row is None:
        raise UserError(
            f"Adapter version {version} does not exist."
            if version
            else "Version 0 is the SFT model itself: there is no adapter to publish."
        )
    source = Path(row["path"])
    if not (source / "adapter_config.json").is_file():
        raise UserError(f"Adapter version {version}'s folder {source} is missing or incomplete.")
    out = Path(out)
    # The version's reward model is a model of its own (export --what reward-model), not part of the adapter.
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(REWARD_MODEL_FOLDER))
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = sft_hub_id or config.get("base_model_name_or_path") or sft_spec
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (out / "README.md").write_text(
        model_card(
            store,
            version,
            sft_spec=sft_spec,
            sft_hub_id=sft_hub_id,
            dataset_repo=dataset_repo,
            model_repo=model_repo,
            win_rate=win_rate,
        )
    )
    return out


def server_token() -> str | None:
    """The server's own Hugging Face login: HF_TOKEN, else the token `hf auth login` saved. Only for whoever runs
    the server (the command line, an admin of the page), never for a visitor."""
    import huggingface_hub

    return huggingface_hub.get_token()


def dataset_card(counts: dict[str, int]) -> str:
    """The dataset repo's README: one config per kind of feedback, so `load_dataset(repo, "ratings")` and trl's
    CLIs (`--dataset_name repo --dataset_config ratings`) read each as its own dataset."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        tags=["dpo", "sft", "kto", "trl", "alignment-playground"],
        configs=[
            {"config_name": kind, "data_files": name, **({"default": True} if kind == "pairs" else {})}
            for kind, name in HUB_FILES.items()
        ],
    )
    return str(
        DatasetCard(f"""---
{data.to_yaml()}
---

# Alignment Playground feedback

What people gave an Alignment Playground app, in trl's formats (prompts and answers only: no sessions or voters).

| config | rows | format | trains |
|---|---|---|---|
| `pairs` | {counts["pairs"]} | conversational preference: `prompt`, `chosen`, `rejected` | DPO (`trl dpo`) |
| `demonstrations` | {counts["demonstrations"]} | conversational `messages`: a person's better answer | SFT (`trl sft`) |
| `ratings` | {counts["ratings"]} | unpaired preference: `prompt`, `completion`, `label` (true: 👍) | KTO (`trl kto`) |

```python
from datasets import load_dataset

ratings = load_dataset("REPO", "ratings", split="train")
```
""")
    )


def push_to_hub(
    store: Store,
    token: str | None,
    dataset_repo: str,
    model_repo: str | None = None,
    version: int = 0,
    *,
    sft_spec: str = "",
    sft_hub_id: str | None = None,
    private: bool = True,
    win_rate: dict | None = None,
    endpoint: str | None = None,
    api=None,
    reward_model_repo: str | None = None,
) -> str:
    """Upload the feedback in trl's formats (pairs, demonstrations, ratings, one config each, with a dataset card)
    and an adapter version with its model card to the Hugging Face Hub with `token`, and only that token: an empty
    one is refused, never replaced by the server's login (huggingface_hub would do that for None); a caller entitled
    to the server's login passes `server_token()`. A message either way. `api`: an `HfApi` (tests pass a stand-in)."""
    import huggingface_hub

    dataset_repo, model_repo, token = (dataset_repo or "").strip(), (model_repo or "").strip(), (token or "").strip()
    if not dataset_repo:
        return "⚠ Enter a dataset repo id, like `your-name/alignment-playground-votes`."
    if not token:
        return "⚠ No Hugging Face token: enter one with write access to the repos."
    if api is None and huggingface_hub.is_offline_mode():
        return (
            "⚠ Cannot push: this server runs offline (HF_HUB_OFFLINE is set), so the Hugging Face Hub is out "
            "of reach. Download the export instead."
        )
    reward_model_repo = (reward_model_repo or "").strip()
    if (model_repo or reward_model_repo) and not version:
        return "⚠ No adapter serves yet (version 0), so there is nothing to upload to a model repo."
    api = api or huggingface_hub.HfApi(endpoint=endpoint, token=token)
    exports = {kind: export_file(store, kind) for kind in HUB_FILES}
    counts = {kind: n for kind, (_, n) in exports.items()}
    step = "creating the dataset repo"
    try:
        api.create_repo(dataset_repo, repo_type="dataset", exist_ok=True, private=private)
        step = "uploading the feedback"
        operations = [
            huggingface_hub.CommitOperationAdd(path_in_repo=HUB_FILES[kind], path_or_fileobj=str(path))
            for kind, (path, _) in exports.items()
        ]
        operations.append(
            huggingface_hub.CommitOperationAdd(
                path_in_repo="README.md", path_or_fileobj=dataset_card(counts).replace("REPO", dataset_repo).encode()
            )
        )
        api.create_commit(
            repo_id=dataset_repo,
            repo_type="dataset",
            operations=operations,
            commit_message=f"Alignment Playground export: {counts['pairs']} preference pairs, "
            f"{counts['demonstrations']} demonstrations, {counts['ratings']} ratings",
        )
        done = (
            f"✓ Pushed {counts['pairs']} pairs, {counts['demonstrations']} demonstrations and "
            f"{counts['ratings']} ratings to the dataset `{dataset_repo}`"
        )
        from .reward_export import reward_model_folder

        # (repo, what it is, its commit's name, how its folder is made, what the message adds)
        uploads = [
            (
                model_repo,
                "the adapter",
                f"adapter v{version}",
                lambda out: adapter_folder(
                    store,
                    version,
                    out,
                    sft_spec=sft_spec,
                    sft_hub_id=sft_hub_id,
                    dataset_repo=dataset_repo,
                    model_repo=model_repo,
                    win_rate=win_rate,
                ),
                f" and adapter v{version} to `{model_repo}`",
            ),
            (
                reward_model_repo,
                "the reward model",
                f"reward model v{version}",
                lambda out: reward_model_folder(
                    store,
                    version,
                    out,
                    sft_spec=sft_spec,
                    sft_hub_id=sft_hub_id,
                    dataset_repo=dataset_repo,
                    repo=reward_model_repo,
                ),
                f" and its reward model to `{reward_model_repo}`",
            ),
        ]
        for repo, what, name, make_folder, said in uploads:
            if not repo:
                continue
            step = f"preparing {what}"
            with tempfile.TemporaryDirectory() as work:
                folder = make_folder(Path(work) / "folder")
                step = f"uploading {what}"
                api.create_repo(repo, exist_ok=True, private=private)
                api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message=f"Alignment Playground {name}")
            done += said
        return done + "."
    except Exception as error:  # network, auth, permissions: all end in one readable line
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        return (
            f"⚠ Push failed while {step}: {type(error).__name__}: {detail}. "
            "Check the token, the repo id and the network."
        )
