"""The soak bench, short: the real app with a durable copy, scripted sessions voting while rounds train, and a SIGKILL
to the server's group or the trainer every 25 s. Nothing the page acknowledged may be missing from the store or from a
data set restored from the durable copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from app_process import OFFLINE_ENV, REPO

from bench.soak import KINDS


@pytest.mark.slow
def test_a_short_soak_under_kills_loses_nothing(tiny_models, tmp_path):
    command = [sys.executable, "-m", "playground", "bench", "soak", "--minutes", "2", "--sessions", "3"]
    command += ["--kill-every", "25", "--runtime", "torch", "--tokens", "16", "--bound", "120", "--json"]
    command += ["--base", str(tiny_models["base"]), "--sft", str(tiny_models["sft"]), "--data-dir", str(tmp_path)]
    command += ["--app-args", "--min-pairs 4 --eval-tokens 0"]
    done = subprocess.run(
        command, cwd=REPO, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)["figures"]
    assert set(figures) == {
        "acknowledged",
        "stored",
        "restored",
        "lost",
        "kills",
        "stuck",
        "turns_per_minute",
        "p50_s",
        "p95_s",
        "errors",
        "rounds",
    }
    acknowledged = figures["acknowledged"]
    assert set(acknowledged) == set(KINDS) and all(acknowledged[kind] > 0 for kind in KINDS), acknowledged
    assert figures["stored"] == acknowledged and figures["restored"] == acknowledged and figures["lost"] == 0
    kills = figures["kills"]
    assert len(kills) >= 3 and {kill["process"] for kill in kills} == {"server", "trainer"}, kills
    assert all(kill["back_s"] is not None for kill in kills), "every killed part came back"
    assert figures["stuck"] == 0 and figures["errors"] == {}, figures["errors"]
    assert figures["rounds"]["done"] >= 1 and figures["turns_per_minute"] > 0
    assert 0 < figures["p50_s"] <= figures["p95_s"] <= 120
