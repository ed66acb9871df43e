"""`python -m playground ablate`: the ablation on a data set's recorded feedback (people's votes, not a simulated
voter's), the process the Stages view's button starts. Each objective trains from the SFT model on a copy of the store
(ablation.py), so nothing it does reaches the live data set but its figures and its progress."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from ..errors import UserError
from ..options import from_dict, settings_from
from ..settings import ModelSettings, RoundSettings
from .session import opened


def cmd_ablate(args) -> int:
    from .. import ablation
    from ..core import Playground
    from ..drift import DEFAULT_EVAL_PROMPTS
    from ..models import model_folder
    from ..oracles import Oracle
    from ..prompting import load_prompts
    from ..simulate import same_text

    oracle = Oracle.parse(args.oracle)
    if args.settings_json:  # the app's own settings
        given = json.loads(args.settings_json)
        models, rounds = from_dict(ModelSettings, given["models"]), from_dict(RoundSettings, given["rounds"])
    else:
        models, rounds = settings_from(args, ModelSettings), settings_from(args, RoundSettings)
    playground = opened(Playground(models, rounds))
    store = playground.store
    totals = store.feedback_totals()
    if not totals["pairs"]["total"] and not totals["demonstrations"]["total"]:
        raise UserError("No recorded feedback to ablate: vote or write a better answer first.")
    asked = {same_text(row["prompt_text"]) for row in store.pairs()}
    heldout = [
        p["prompt"] for p in load_prompts(args.heldout or DEFAULT_EVAL_PROMPTS) if same_text(p["prompt"]) not in asked
    ]
    if not heldout:
        raise UserError("Every held-out prompt was voted on: nothing left to measure on. Fix: --heldout FILE.")
    started = time.time()

    def progress(done: int, total: int, current: str | None) -> None:
        store.set_ablation_progress(
            {"pid": os.getpid(), "done": done, "total": total, "current": current, "started_at": started}
            if current
            else None
        )

    sft_dir = model_folder(playground.preset.sft, playground.data_dir, models.trust_remote_code)
    folder = playground.data_set.root / "ablations" / time.strftime("run-%Y%m%d-%H%M%S")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # trl prints its logs: stdout is the report
            result = ablation.ablate(
                store, sft_dir, rounds, oracle, heldout, args.max_new_tokens, folder, progress=progress
            )
    except BaseException as error:
        store.set_ablation_progress(
            {"pid": os.getpid(), "done": 0, "total": 0, "current": None, "error": f"{type(error).__name__}: {error}"}
        )
        raise
    counts = store.counts()
    summary = {
        "oracle": oracle.spec,
        "mode": "recorded feedback",
        "source": "recorded",  # people's votes on this data set, not a simulated voter's
        "votes": {
            "votes": counts["votes"],
            "corrections": totals["demonstrations"]["total"],
            "ratings": totals["ratings"]["total"],
        },
        "workspace": str(folder),
        **{k: result[k] for k in ("ablation", "baseline", "heldout_prompts", "samples_per_prompt", "max_new_tokens")},
    }
    store.save_ablation(summary)
    if args.json:
        print(json.dumps(summary | {"adapters": result["adapters"]}, indent=2, default=str))
    else:
        print(ablation.table(result))
    return 0
