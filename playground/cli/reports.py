"""The commands' text output: what `python -m playground <command>` prints without --json (which prints the
figures themselves). Pure functions from figures to text, so each reads in one place."""

from __future__ import annotations

from ..dashboard import NOT_MEASURED, VERSION_COLUMNS, version_table
from ..generation import ARM_TITLES, Answer


def answers_text(answers: dict[str, Answer], *, data_set: str, adapter_version: int, serving: int, turns: int) -> str:
    """`generate`: each arm's answer with its tokens, time and how it ended."""
    lines = [
        f"(data set {data_set}; adapter v{adapter_version}"
        + ("" if adapter_version == serving else f", the app serves v{serving}")
        + ")\n"
    ]
    for arm, answer in answers.items():
        version = f" v{answer.adapter_version}" if arm == "pref" else ""
        lines.append(f"=== {ARM_TITLES[arm]}{version} ({answer.model}) ===")
        lines.append(answer.text or (f"(no answer: {answer.error})" if answer.error else "(empty answer)"))
        unseen = (
            f"; did not see the {answer.dropped_turns} oldest of {turns} earlier turns (context)"
            if answer.dropped_turns
            else ""
        )
        lines.append(
            f"--- {answer.new_tokens} tokens, {answer.seconds:.1f} s, {answer.tokens_per_second:.1f} tok/s, ends: "
            f"{answer.finish_reason}"
            + (f"; {answer.note}" if answer.note else "")
            + unseen
            + reward_words(answer)
            + "\n"
        )
    return "\n".join(lines)


def reward_words(answer: Answer) -> str:
    if answer.reward is not None:
        return f"; reward model v{answer.reward_version}: {answer.reward:+.2f}"
    return "; no reward model yet" if answer.reward_version == 0 else ""


def info_text(facts: dict) -> str:
    """`info`: the resolved preset, where each model comes from, the data set and the others in the data dir."""
    lines = [f"preset:    {facts['preset']} (asked: {facts['requested_preset']}; {facts['note']})"]
    for role, m in facts["models"].items():
        state = (
            f"converted copy: {m['converted_copy']}"
            if m["converted_copy"]
            else ("will be converted on first use" if m["needs_conversion"] else "loaded by transformers")
        )
        lines.append(f"{role + ':':<10} {m['spec']} [{m['source']}] {state}")
    lines.append(f"data dir:  {facts['data_dir']}")
    ds = facts["data_set"]
    lines.append(
        f"data set:  {ds['name']} ({ds['votes']} votes, {ds['pairs']} pairs, {ds['versions']} versions, "
        f"serving v{ds['serving_version']})"
    )
    for other in facts["data_sets"]:
        if other["name"] != ds["name"]:
            lines.append(
                f"  other data set: {other['name']} ({other['votes']} votes; sft {other['sft']}, base {other['base']})"
            )
    if facts["unadopted_store"]:
        legacy = facts["unadopted_store"]
        lines.append(
            f"  store from before data sets: {legacy['path']} ({legacy['votes']} votes by {legacy['models']}); "
            "start with those models to move it into their data set"
        )
    lines.append(f"embedded packages installed: {facts['embedded_packages_installed']}")
    cpu = facts["cpu"]
    lines.append(f"this CPU:  {cpu['model']} ({' '.join(cpu['flags']) or 'no flags read'})")
    for copy, record in facts["calibration"].items():
        lines.append(f"  SFT weights on the onnx runtime ({copy}): {record['precision']}, {record['why']}")
    if not facts["calibration"]:
        lines.append("  SFT weights on the onnx runtime: not measured on this CPU yet (the first start measures them)")
    return "\n".join(lines)


def versions_text(data_set: str, facts: dict) -> str:
    """`versions`: the Training tab's versions table (dashboard.version_table) as aligned text."""
    rows = version_table(facts)
    columns = list(VERSION_COLUMNS)
    widths = {c: max(len(VERSION_COLUMNS[c]), *(len(row[c]) for row in rows)) for c in columns[:-1]}

    def line(cells: dict[str, str]) -> str:
        return "  ".join(cells[c].ljust(widths[c]) for c in columns[:-1]) + "  " + cells["path"]

    lines = [f"data set {data_set}", line(VERSION_COLUMNS), *(line(row) for row in rows)]
    if not facts["versions"]:
        lines.append("No adapter versions yet (version 0 = the SFT model serves the preference arm).")
    lines.append(
        "demonstrations/pairs/ratings: what its round trained on · loss, reward margin and accuracy: the round's "
        "last step · vote win rate: its games in the votes · length (tokens), dist-2, KL to SFT (nats per answer), "
        f"ppl (under SFT): drift on the fixed prompt set · {NOT_MEASURED} = not measured yet"
    )
    return "\n".join(lines)


def evaluation_text(results: dict[int, dict], metrics: tuple[str, ...], prompts: int) -> str:
    """`evaluate`: each measured version's drift figures, or why it could not be measured."""
    if not results:
        return (
            f"Every version already has a drift evaluation on these {prompts} prompts "
            "(`versions` lists them; --version N measures one again)."
        )
    lines = []
    for version, m in results.items():
        if "error" in m:
            lines.append(f"v{version}: error: {m['error']}")
        else:
            figures = ", ".join(f"{k} {m[k]:.3f}" for k in metrics if m.get(k) is not None)
            lines.append(f"v{version}: {figures} ({m['seconds']:.1f} s)")
    return "\n".join(lines)


def explanation_text(summary: str, tokens: list[dict]) -> str:
    """`explain`: the summary as plain text, then each token's implicit reward."""
    lines = [summary.replace("**", "").replace("  \n", "\n"), "", f"{'reward':>8}  token"]
    lines += [f"{token['reward']:+8.4f}  {token['text']!r}" for token in tokens]
    return "\n".join(lines)


def _or_dash(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def simulation_text(result: dict, mode: str) -> str:
    """`simulate`: held-out win rates before and after the rounds the simulated votes drove."""
    b, a = result["before"], result["after"]
    lines = [
        f"oracle {result['oracle']}, {result['votes']['votes']} {mode} votes"
        f" ({pace_words(result.get('vote_seconds', 0))}) -> {result['votes']['pairs']} pairs, "
        f"{len(result['rounds'])} rounds, serving v{a['adapter_version']}",
        f"held-out win rate of preference-tuned vs SFT (ties 1/2): {b['win_rate']:.2f} before -> "
        f"{a['win_rate']:.2f} ± {_or_dash(a['win_rate_se'])} after, over {a['comparisons']} comparisons "
        f"({a['prompts']} prompts x {a['samples_per_prompt']})",
        f"  ties {a['ties']:.0%}; win rate among the decided ones {_or_dash(a['win_rate_decided'])}",
        f"mean chars  sft {a['mean_chars']['sft']:.0f}  pref {b['mean_chars']['pref']:.0f} -> "
        f"{a['mean_chars']['pref']:.0f}; mean tokens sft {a['mean_new_tokens']['sft']:.1f}  pref "
        f"{a['mean_new_tokens']['pref']:.1f}",
        *fluency_lines(result),
    ]
    for r in result["rounds"]:
        last = r["steps"][-1] if r["steps"] else {}
        lines.append(
            f"  round {r['round']}: {r['status']} v{r['version']} pairs {r['pairs_used']} {r['seconds']:.0f}s "
            f"loss {last.get('loss')} margin {last.get('reward_margin')} acc {last.get('reward_accuracy')}"
        )
    lines.append(f"time: {result['seconds']}; workspace: {result['workspace']}")
    return "\n".join(lines)


def pace_words(vote_seconds: float) -> str:
    return f"each read {vote_seconds:g} s before its vote" if vote_seconds else "each voted at once"


def fluency_lines(result: dict) -> list[str]:
    """`simulate`'s fluency figures after the rounds: held-out perplexity under SFT per arm and their ratio,
    distinct-2 per arm, the serving version's KL to SFT (drift prompts), tokens and the share cut at the limit."""
    a, f = result["after"], result["fluency"]
    ppl, d2, cut = a["fluency_sft_perplexity"], a["distinct_2"], f["hit_limit"]
    return [
        f"fluency: perplexity under SFT sft {_or_dash(ppl['sft'])}  pref {_or_dash(ppl['pref'])} (ratio "
        f"{_or_dash(f['ppl_ratio'])}); distinct-2 sft {_or_dash(d2['sft'])}  pref {_or_dash(f['distinct_2'])}; "
        f"KL to SFT (v{a['adapter_version']}, drift prompts) {_or_dash(f['kl'], '.3f')}",
        f"  cut at the token limit: sft {_or_dash(cut['sft'], '.0%')}  pref {_or_dash(cut['pref'], '.0%')}",
    ]


def ablation_text(result: dict, mode: str, table: str) -> str:
    """`simulate --ablation`: the feedback recorded, then each objective's row of `ablation.table`."""
    v = result["votes"]
    return (
        f"oracle {result['oracle']}: {v['votes']} {mode} votes, {v['corrections']} better answers, "
        f"{v['ratings']} ratings -> {result['feedback']['pairs']['total']} pairs; each objective trained "
        f"from the SFT model on all of it, {result['heldout_prompts']} held-out prompts x "
        f"{result['samples_per_prompt']} answers\n\n{table}\n"
        f"time: {result['seconds']}; workspace: {result['workspace']}"
    )


def stats_text(facts: dict) -> str:
    """`stats`: the data set's counts and how far its durable copy lags."""
    lines = [f"data set {facts['data_set']}: serving v{facts['serving_version']}"]
    for key in ("prompts", "comparisons", "answers", "votes", "pairs", "pairs_pending", "rounds", "versions"):
        lines.append(f"  {key:<14}{facts[key]:>8}")
    if "durable_copy" in facts:
        d = facts["durable_copy"]
        lines.append(f"durable copy: {d['target']} ({d['shards']} shards, {d['pending']} changes not copied yet)")
    return "\n".join(lines)
