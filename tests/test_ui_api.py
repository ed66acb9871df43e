"""The real app (`python app.py` in a subprocess, tiny models, its trainer process) driven through its named
API endpoints with gradio_client, the way a script or another Space would use it."""

import json
import re
import time

import pytest
from app_process import start_app, wait_until
from gradio_client import Client
from gradio_client.exceptions import AppError

from playground.processes import pid_alive
from playground.ui.panel import OUTPUTS

ADMIN = "s3cret-token"
PROMPT = "Why is the sky blue?"
SAMPLING = (0.7, 0.9, 16)  # temperature, top_p, max_new_tokens: short answers keep the tests quick
ARM_TITLES = ("Base", "SFT", "Preference-tuned")


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ui-api") / "data"
    app = start_app(tiny_models, data_dir, args=["--min-pairs", "2"], env={"PLAYGROUND_ADMIN_TOKEN": ADMIN})
    try:
        client = Client(app.url, verbose=False)
        wait_until(lambda: client.predict(api_name="/stats")["ready"], 180, "the models to load")
        yield app
    finally:
        app.stop()


@pytest.fixture
def client(app):
    """One API client = one session (votes, rate limit): each test votes as a new visitor."""
    return Client(app.url, verbose=False)


def new_client(app) -> Client:
    return Client(app.url, verbose=False)


def stats(client) -> dict:
    return client.predict(api_name="/stats")


def compare(client, prompt=PROMPT, blind=False, seed=None) -> dict:
    out = client.predict(prompt, *SAMPLING, seed, blind, api_name="/compare")
    titles, chats, details = out[0:9:3], out[1:9:3], out[2:9:3]
    return {
        "titles": titles,
        "texts": [last_text(chat) for chat in chats],
        "chats": chats,
        "details": details,
        "message": out[9],
    }


def text_of(message: dict) -> str:
    """A chat message's text as gradio_client returns it (a string, or Gradio 6's list of content blocks)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def _words(text: str) -> str:
    return " ".join(text.split())


def last_text(chat: list[dict]) -> str:
    """The last assistant message of a column (empty when it has none)."""
    if not isinstance(chat, list):  # an output the handler skipped
        return ""
    answers = [m for m in chat if m["role"] == "assistant"]
    return text_of(answers[-1]) if answers else ""


def arm_of(title: str) -> str:
    """'#### Preference-tuned v3 · `model`' -> 'Preference-tuned'."""
    return re.sub(r" v\d+$", "", title.removeprefix("#### ").split(" · ")[0])


def version_of(title: str) -> int:
    return int(re.search(r"Preference-tuned v(\d+)", title).group(1))


def settled(client) -> dict | None:
    """Stats once no feedback waits, no round runs and the app serves what the store says (else None)."""
    s = stats(client)
    quiet = not sum(s["eligible"].values()) and not s["running_round"] and s["engine_version"] == s["serving_version"]
    return s if quiet else None


def vote_best(client, ranking: str) -> tuple[str, list[str]]:
    out = client.predict(ranking, api_name="/vote_best")
    return out[0], list(out[1::2])


def a_version_serves(app) -> int:
    """Make sure a trained version serves (voting for one if none does yet); returns it."""
    client = new_client(app)
    quiet = wait_until(lambda: settled(client), 180, "the trainer to be idle")
    if quiet["serving_version"] >= 1:
        return quiet["serving_version"]
    compare(client, "What makes a good cup of tea?")
    assert "2 training pairs" in vote_best(client, "1")[0]  # 2 pairs = --min-pairs: a round starts
    return wait_until(
        lambda: (s := settled(client)) and s["serving_version"] >= 1 and s["serving_version"],
        180,
        "a round to train the pairs and its version to serve",
    )


@pytest.mark.slow
def test_compare_streams_three_answers(client):
    serving = stats(client)["serving_version"]
    if serving:  # other tests may have trained: show version 0 (the SFT model itself) for this one
        assert "Now serving version 0" in client.predict(0, ADMIN, api_name="/rollback")
    try:
        result = compare(client)
    finally:
        if serving:
            client.predict(serving, ADMIN, api_name="/rollback")
    assert [arm_of(t) for t in result["titles"]] == list(ARM_TITLES)
    assert version_of(result["titles"][2]) == 0
    assert all(text.strip() for text in result["texts"])
    assert all("tokens" in d for d in result["details"])
    assert "the SFT model itself" in result["details"][2]  # v0 = SFT
    assert "Which answer is best?" in result["message"]


def test_vote_best_is_counted_and_a_second_vote_is_refused(client):
    before = stats(client)["counts"]
    compare(client, "Name three colours of the rainbow.")
    message, _ = vote_best(client, "1")
    assert message.startswith("✓ Thanks!")
    after = stats(client)["counts"]
    assert after["votes_by_kind"]["best"] == before["votes_by_kind"]["best"] + 1
    assert after["pairs"] > before["pairs"]

    again, _ = vote_best(client, "2")
    assert "already picked the best answer" in again
    assert stats(client)["counts"]["votes"] == after["votes"]
    bad_all, _ = client.predict(api_name="/vote_all_bad")[:2]
    assert "already" in bad_all  # best and all-bad answer the same question


def test_vote_needs_a_comparison_and_a_valid_ranking(app, client):
    fresh = new_client(app)
    message, _ = vote_best(fresh, "1")
    assert "Nothing to vote on yet" in message
    assert "Nothing to vote on yet" in fresh.predict(1, True, api_name="/vote_thumb")
    assert "Nothing to vote on yet" in fresh.predict("a", api_name="/vote_duel")

    compare(client, "What is a haiku?")
    for ranking in ("7", "", "banana"):
        message, _ = vote_best(client, ranking)
        assert "Rank by column number" in message
    message, _ = vote_best(client, "1,2")  # a partial ranking is ambiguous about the third answer
    assert "Rank either just the best answer or all 3 answers" in message


def test_a_vote_while_new_answers_stream_is_refused(client):
    compare(client, "First question?")
    job = client.submit("Second question: a long answer, please.", 0.7, 0.9, 512, None, False, api_name="/compare")
    wait_until(lambda: job.outputs() or job.done(), 60, "the first streamed update")
    assert not job.done(), "the answer finished before the vote could be tried; make it longer"
    message, _ = vote_best(client, "1")  # the page still shows the first answers, but they are no longer current
    assert "still being written" in message
    job.cancel()  # a closed tab does the same; nothing of it is recorded
    compare(client, "Third question?")
    assert vote_best(client, "1")[0].startswith("✓ Thanks!")


def test_blind_mode_hides_names_until_the_vote(client):
    result = compare(client, "Give me a tip for learning to cook.", blind=True)
    assert [t.removeprefix("#### ") for t in result["titles"]] == ["Answer 1", "Answer 2", "Answer 3"]
    shown = " ".join(result["titles"] + result["details"])
    assert not any(name in shown for name in ARM_TITLES) and "SFT model itself" not in shown

    message, titles = vote_best(client, "3,1,2")
    assert message.startswith("✓ Thanks!")
    assert sorted(arm_of(t) for t in titles) == sorted(ARM_TITLES)


def test_all_bad_and_thumbs(client):
    compare(client, "Tell me a joke about databases.")
    assert client.predict(1, True, api_name="/vote_thumb").startswith(
        "✓ Thanks for the thumbs up! A single rating trains the preference-tuned model too"
    )
    assert client.predict(3, False, api_name="/vote_thumb").startswith(
        "✓ Thanks for the thumbs down! A single rating trains the preference-tuned model"
    )
    assert "already rated this answer" in client.predict(1, False, api_name="/vote_thumb")
    assert "Name a column from 1 to 3" in client.predict(4, True, api_name="/vote_thumb")
    message = client.predict(api_name="/vote_all_bad")[0]
    assert "every answer was bad" in message


def test_duel_and_its_votes(client):
    before = stats(client)["counts"]
    a, a_details, b, b_details, message = client.predict("Describe the sea.", *SAMPLING, None, api_name="/duel")
    assert last_text(a).strip() and last_text(b).strip() and "Which is better" in message
    assert "preference-tuned v" in a_details and "preference-tuned v" in b_details
    assert "Thanks!" in client.predict("a", api_name="/vote_duel")
    assert "already voted on this duel" in client.predict("b", api_name="/vote_duel")
    after = stats(client)["counts"]
    assert after["votes_by_kind"]["pairwise"] == before["votes_by_kind"]["pairwise"] + 1

    # the next message continues the duel's conversation from the winner, A
    a2, _, b2, _, message = client.predict("And at night?", *SAMPLING, None, api_name="/duel")
    assert "Turn 2" in message
    assert [m["role"] for m in a2] == ["user", "assistant", "user", "assistant"]
    # Compared without white space (see test_a_conversation_continues_from_the_vote_then_from_a_correction).
    assert _words(text_of(a2[1])).startswith(_words(last_text(a))) and "kept: answer A" in text_of(a2[1])
    assert text_of(b2[1]) == text_of(a2[1])  # one shared history
    assert "Tie recorded" in client.predict("tie", api_name="/vote_duel")


def test_duel_between_two_random_arms_is_blind_until_the_vote(client):
    a, a_details, b, b_details, message = client.predict(
        "Describe a river.", *SAMPLING, None, "random", api_name="/duel"
    )
    assert last_text(a).strip() and last_text(b).strip() and "Which is better" in message
    assert "preference-tuned" not in a_details + b_details, "names stay hidden until the vote"
    reply = client.predict("b", api_name="/vote_duel")
    revealed = re.findall(r"(Base|SFT|Preference-tuned)", reply)
    assert "Thanks!" in reply and "A was" in reply and "B was" in reply
    assert len(revealed) == 2 and revealed[0] != revealed[1], "two different arms"


def test_regenerate_gives_a_new_comparison_of_the_same_prompt(client):
    first = compare(client, seed=7)
    number = lambda message: int(re.search(r"Comparison #(\d+)", message).group(1))  # noqa: E731
    again = client.predict(PROMPT, *SAMPLING, False, api_name="/regenerate")
    assert number(again[9]) > number(first["message"])
    assert all(last_text(chat).strip() for chat in again[1:9:3])
    assert "Thanks!" in client.predict("1", api_name="/vote_best")[0], "the regenerated answers are votable"


def test_prompt_and_sampling_problems_get_clear_messages(client):
    assert "The prompt is empty" in compare(client, "   ")["message"]
    huge = compare(client, "x" * 2500)["message"]
    assert "2,500 characters" in huge and "limit is 2,000" in huge
    with pytest.raises(AppError, match="greater than maximum"):  # Gradio checks the sliders' ranges itself
        client.predict(PROMPT, 9.0, 0.9, 16, None, False, api_name="/compare")
    duel_message = client.predict("", *SAMPLING, None, api_name="/duel")[4]
    assert "The prompt is empty" in duel_message


def test_vote_rate_limit_per_session(app, client):
    spammer = new_client(app)
    for _ in range(20):  # refused votes count too: the limit is on requests
        assert "Too many votes" not in vote_best(spammer, "1")[0]
    message, _ = vote_best(spammer, "1")
    assert "Too many votes: at most 20 a minute per session" in message
    assert "Too many votes" not in vote_best(client, "1")[0]  # other sessions are not affected


@pytest.mark.slow
def test_votes_start_a_round_and_the_new_version_serves(client):
    # min-pairs is 2: a best-of-three vote for the base answer makes two pairs (it beats SFT and preference).
    compare(client, "How do I boil an egg?")
    assert "2 training pairs" in vote_best(client, "1")[0]

    def settled_twice():  # quiet on two reads 3 s apart: between two rounds the trainer may not have looked yet
        first = settled(client)
        if not first or first["serving_version"] < 1:
            return None
        time.sleep(3)
        again = settled(client)
        return again if again and again["serving_version"] == first["serving_version"] else None

    served = wait_until(settled_twice, 180, "a round to train the pairs and its version to serve")
    version = served["serving_version"]
    done = [r for r in served["rounds"] if r["status"] == "done"]
    assert done and done[-1]["steps_done"] == done[-1]["steps_total"] > 0
    assert version_of(compare(client, "Is the new version serving?")["titles"][2]) == version

    panel = client.predict(api_name="/panel")
    status, training, progress, loss = (
        panel[OUTPUTS.index(name)] for name in ("status", "training", "progress", "loss")
    )
    assert f"adapter v{version}" in status and f"adapter **v{version}**" in training
    assert "pg-progress" in progress
    assert loss["columns"] == ["step", "stage", "loss"] and loss["data"]
    assert {row[1] for row in loss["data"]} >= {"DPO on pairs"}
    stages = panel[OUTPUTS.index("stages")]
    assert "Dataset 1: demonstrations" in stages and f"| v{version} (pairs)," in stages
    board = client.predict(api_name="/leaderboard")
    assert board["headers"][:3] == ["rank", "player", "rating"] and {row[1] for row in board["data"]} >= {"base", "sft"}
    assert (
        "<svg" in panel[OUTPUTS.index("leaderboard_plot")]
        and ">base</text>" in panel[OUTPUTS.index("leaderboard_plot")]
    )

    # The trainer measured the new version's drift after publishing it, and version 0 (the SFT model) when idle; a
    # version whose measurement gave way to a round that was due (earlier tests' votes) is measured when idle too.
    measured = wait_until(
        lambda: (s := stats(client)) and s["sft_drift"] and all(v["drift"] for v in s["versions"]) and s,
        300,
        "the drift of v0 and of every version",
    )
    assert measured["sft_drift"]["kl_to_sft"] == 0 and measured["versions"][-1]["drift"]["kl_to_sft"] > 0
    kl = client.predict(api_name="/panel")[OUTPUTS.index("drift_kl")]
    assert kl["columns"] == ["version", "kl_to_sft"] and [row[0] for row in kl["data"]][:2] == ["v0", "v1"]

    # Why this answer: the new version's implicit reward of a stored answer, over the API as on the page.
    asked = compare(client, "Is the new version serving?")
    comparison = int(re.search(r"Comparison #(\d+)", asked["message"]).group(1))
    why = client.predict(comparison, "sft", None, api_name="/explain")
    assert why["comparison"] == comparison and why["version"] == version and why["arm"] == "sft"
    assert why["tokens"] and sum(t["reward"] for t in why["tokens"]) == pytest.approx(why["total_reward"], abs=1e-3)
    at_v0 = client.predict(comparison, "pref", 0, api_name="/explain")
    assert at_v0["total_reward"] == 0 and at_v0["version"] == 0
    with pytest.raises(AppError, match="has no human answer"):
        client.predict(comparison, "human", None, api_name="/explain")


@pytest.mark.slow
def test_train_now_runs_a_round_below_the_threshold(client):
    before = wait_until(lambda: settled(client), 180, "earlier pairs to be trained")["serving_version"]
    assert "No feedback waits for a round" in client.predict(api_name="/train_now")
    client.predict("Name a planet.", *SAMPLING, None, api_name="/duel")
    assert "1 training pair" in client.predict("b", api_name="/vote_duel")  # 1 pair < min-pairs 2
    assert "Asked for a round on 1 pair." in client.predict(api_name="/train_now")
    wait_until(lambda: stats(client)["engine_version"] == before + 1, 180, f"version {before + 1} to serve")


def test_rollback_needs_the_admin_token(app, client):
    latest = a_version_serves(app)
    assert "requires the admin token" in client.predict(0, "", api_name="/rollback")
    assert "Wrong admin token" in client.predict(0, "guess", api_name="/rollback")
    assert stats(client)["serving_version"] == latest

    assert "Now serving version 0" in client.predict(0, ADMIN, api_name="/rollback")
    after = stats(client)
    assert after["serving_version"] == 0 and after["engine_version"] == 0  # rollback swaps synchronously
    assert version_of(compare(client, "After the rollback?")["titles"][2]) == 0
    assert "does not exist" in client.predict(99, ADMIN, api_name="/rollback")
    assert f"Now serving version {latest}" in client.predict(latest, ADMIN, api_name="/rollback")


def test_export_loads_with_datasets(client):
    from datasets import load_dataset

    compare(client, "Name a colour.")
    assert vote_best(client, "1")[0].startswith("✓ Thanks!")  # at least one pair and one vote to export
    path, message = client.predict("pairs", api_name="/export")
    pairs = stats(client)["counts"]["pairs"]
    assert f"{pairs} preference pairs" in message
    dataset = load_dataset("json", data_files=path, split="train")
    assert len(dataset) == pairs and set(dataset.column_names) == {"prompt", "chosen", "rejected"}
    assert dataset[0]["prompt"][0]["role"] == "user" and dataset[0]["chosen"][0]["role"] == "assistant"

    assert "requires the admin token" in client.predict("votes", "", api_name="/export")[1]  # raw votes: admin only
    path, message = client.predict("votes", ADMIN, api_name="/export")
    votes = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert len(votes) == stats(client)["counts"]["votes"]
    assert {"kind", "prompt", "answers", "voter"} <= votes[0].keys()
    assert votes[-1]["voter"].startswith("ip:"), "a vote records its voter: the hashed address, never the address"


def test_push_to_hub_fails_clearly_offline(client):
    message = client.predict("hf_fake", "someone/votes", "", True, ADMIN, api_name="/push")
    assert "this server runs offline" in message
    assert "requires the admin token" in client.predict("hf_fake", "someone/votes", "", True, "", api_name="/push")
    assert "Enter a dataset repo id" in client.predict("hf_fake", "", "", True, ADMIN, api_name="/push")


def test_push_to_hub_fails_clearly_without_network(tmp_path, monkeypatch):
    # Online mode, but the Hub endpoint refuses connections (what a machine without network sees).
    import huggingface_hub.constants

    from playground.processes import free_port
    from playground.publishing import push_to_hub
    from playground.store import Store

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    message = push_to_hub(
        Store(tmp_path / "db.sqlite3"), "hf_fake", "someone/votes", endpoint=f"http://127.0.0.1:{free_port()}"
    )
    assert message.startswith("⚠ Push failed while creating the dataset repo")
    assert "Check the token, the repo id and the network" in message


@pytest.mark.slow
def test_stopping_the_app_stops_its_trainer(tiny_models, tmp_path):
    own = start_app(tiny_models, tmp_path / "data")  # its own app: stopping the shared one would end the others
    try:
        client = Client(own.url, verbose=False)
        trainer = wait_until(lambda: stats(client)["trainer_pid"], 180, "the trainer to start")
        assert pid_alive(trainer)
    finally:
        assert own.stop() == 0
    wait_until(lambda: not pid_alive(trainer), 30, "the trainer process to end")


def test_readme_front_matter_configures_a_gradio_space():
    from pathlib import Path

    import gradio
    from huggingface_hub import RepoCard
    from huggingface_hub.repocard import metadata_load

    readme = Path(__file__).resolve().parents[1] / "README.md"
    meta = metadata_load(readme)
    assert meta == RepoCard.load(readme).data.to_dict()
    assert {
        "title",
        "emoji",
        "colorFrom",
        "colorTo",
        "sdk",
        "sdk_version",
        "app_file",
        "python_version",
        "suggested_hardware",
        "short_description",
        "license",
    } <= meta.keys()
    assert (meta["sdk"], meta["app_file"], meta["python_version"]) == ("gradio", "app.py", "3.11")
    assert meta["sdk_version"] == gradio.__version__  # the Space runs the Gradio the tests ran
    assert meta["suggested_hardware"] == "cpu-basic" and meta["license"] == "apache-2.0"
    assert len(meta["short_description"]) <= 60
    assert meta["colorFrom"] in {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
    assert meta["colorTo"] in {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def test_while_the_models_load_the_page_says_so(tmp_path):
    # No app process: a playground whose loading has not started is exactly the page's first minute.
    from playground.core import Playground
    from playground.settings import ModelSettings
    from playground.ui import Page, build_app
    from playground.ui.compare import CompareTab
    from playground.ui.training import TrainingTab

    playground = Playground(ModelSettings(preset="embedded", data_dir=str(tmp_path)))
    page = Page(playground)
    build_app(page)
    assert "Loading models… converting the embedded GGUF once, about a minute" in page.status_line()
    assert playground.data_set.name in page.status_line(), "the page says which data set is in use"
    *_, message, state = next(CompareTab(page).compare("Hello?", 0.7, 0.9, 16, None, False, None))
    assert "converting the embedded GGUF once" in message and "Try again when" in message and state is None
    assert "No feedback waits for a round" in TrainingTab(page).train_now()  # the store works before the models do
    assert build_app(page).panel.stats()["ready"] is False

    playground.serving.error = "No such model folder: /nowhere. Fix: check the path."
    assert "could not be loaded" in page.status_line() and "/nowhere" in page.status_line()
    *_, message, _ = next(CompareTab(page).compare("Hello?", 0.7, 0.9, 16, None, False, None))
    assert "could not be loaded" in message


def test_app_options_come_from_the_flags_then_the_environment_then_the_defaults(monkeypatch):
    import importlib.util

    from app_process import REPO

    from playground.settings import ModelSettings, RoundSettings, Sampling, ServerSettings

    spec = importlib.util.spec_from_file_location("app", REPO / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    monkeypatch.setenv("PLAYGROUND_MIN_PAIRS", "3")
    monkeypatch.setenv("PLAYGROUND_PORT", "9999")
    monkeypatch.setenv("PLAYGROUND_PRESET", "smollm2-135m")
    monkeypatch.setenv("PLAYGROUND_TARGET_MODULES", "q_proj,k_proj")
    monkeypatch.setenv("PLAYGROUND_TRAINER", "false")
    monkeypatch.setenv("SPACE_ID", "someone/alignment-playground")
    monkeypatch.delenv("PLAYGROUND_HOST", raising=False)
    settings = app.parse_args([])
    rounds, server = settings[RoundSettings], settings[ServerSettings]
    assert (rounds.min_pairs, server.port, settings[ModelSettings].preset, server.host) == (
        3,
        9999,
        "smollm2-135m",
        "0.0.0.0",
    )
    assert rounds.target_modules == ["q_proj", "k_proj"] and server.trainer is False
    flags = app.parse_args(
        ["--min-pairs", "5", "--host", "127.0.0.1", "--lora-r", "4", "--max-new-tokens", "64", "--trainer"]
    )
    assert (flags[RoundSettings].min_pairs, flags[RoundSettings].lora_r, flags[ServerSettings].host) == (
        5,
        4,
        "127.0.0.1",
    )
    assert flags[Sampling].max_new_tokens == 64 and flags[ServerSettings].trainer is True
    monkeypatch.delenv("SPACE_ID")
    assert app.parse_args([])[ServerSettings].host == "127.0.0.1"
    monkeypatch.setenv("PLAYGROUND_LORA_R", "many")
    with pytest.raises(SystemExit):  # a clear error, not a trace
        app.parse_args([])


# ---- conversations ---------------------------------------------------------------------------------------------


def chat(client, message: str, max_new_tokens: int = 16) -> dict:
    out = client.predict(message, 0.7, 0.9, max_new_tokens, None, api_name="/chat")
    return {"titles": out[0:9:3], "chats": out[1:9:3], "details": out[2:9:3], "message": out[9]}


def test_a_conversation_continues_from_the_vote_then_from_a_correction(client):
    client.predict(api_name="/new_chat")
    first = chat(client, "What is a river?")
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in first["chats"])
    assert "Turn 1" in first["message"]
    assert vote_best(client, "2")[0].startswith("✓ Thanks!")
    kept = last_text(first["chats"][1])

    second = chat(client, "And a lake?")
    assert "Turn 2" in second["message"]
    for column in second["chats"]:  # every column answers the same conversation: the voted answer is kept
        assert [m["role"] for m in column] == ["user", "assistant"] * 2
        assert text_of(column[0]) == "What is a river?"
        # Compared without white space: tiny random models write runs of spaces and \r\n, which the streamed
        # column and the history column may render differently.
        assert _words(text_of(column[1])).startswith(_words(kept)) and "kept: SFT's answer" in text_of(column[1])
    reply = client.predict("A lake is still water, held in a hollow of the land.", api_name="/correct")
    assert "demonstration" in reply and "3 training pairs" in reply
    assert "already wrote a better answer" in client.predict("Another.", api_name="/correct")

    third = chat(client, "Which is bigger?")
    history_answer = text_of(third["chats"][0][3])
    assert history_answer.startswith("A lake is still water") and "the person's own answer" in history_answer
    assert "continues from" in client.predict(3, api_name="/continue_from")
    assert "Name a column" in client.predict(7, api_name="/continue_from")
    fourth = chat(client, "Why?")
    assert "kept: Preference-tuned's answer" in text_of(fourth["chats"][0][5])  # column 3 (not blind)

    pairs = [json.loads(line) for line in open(client.predict("pairs", api_name="/export")[0], encoding="utf-8")]
    corrected = [p for p in pairs if p["chosen"][0]["content"].startswith("A lake is still water")]
    assert len(corrected) == 3
    assert [m["role"] for m in corrected[0]["prompt"]] == ["user", "assistant", "user"]
    assert corrected[0]["prompt"][2]["content"] == "And a lake?"


def test_conversation_endpoints_refuse_bad_input(app, client):
    fresh = new_client(app)
    assert "Nothing to vote on yet" in vote_best(fresh, "1")[0]
    assert "Nothing to vote on yet" in fresh.predict("Better.", api_name="/correct")
    assert "Nothing to continue from yet" in fresh.predict(1, api_name="/continue_from")
    assert "The prompt is empty" in chat(fresh, "   ")["message"]
    chat(fresh, "Hello there?")
    assert "The better answer is empty" in fresh.predict("  ", api_name="/correct")
    # One message that alone does not fit the tiny models' 1,024-token context (emoji are several tokens each).
    assert "shorten the prompt" in chat(fresh, "🙂" * 1500, max_new_tokens=64)["message"]
    assert vote_best(fresh, "1")[0].startswith("✓ Thanks!"), "the failed turn left the conversation as it was"


@pytest.mark.slow
def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(app, client):
    words = " ".join(f"river{i} lake{i}" for i in range(90))  # about 1,000 characters, ~450 tokens per message
    assert "Turn 1" in chat(client, words)["message"]
    assert "Turn 2" in chat(client, words)["message"]
    third = chat(client, "Short question now?", max_new_tokens=64)
    assert "no longer fits" in third["message"] and "oldest" in third["message"]
    assert any("did not see the" in d for d in third["details"])
    assert all(text_of(c[-2]) == "Short question now?" for c in third["chats"])  # the new message is always seen
