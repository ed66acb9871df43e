"""One settings definition: flags, environment variables, defaults, the README's table, the trainer's copy."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from playground import options
from playground import settings as s

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_options_table_is_the_one_the_code_defines():
    readme = README.read_text()
    table = options.options_table()
    assert table in readme, "README's options table is out of date: paste `python -m playground options` into it"
    documented = set(re.findall(r"`(PLAYGROUND_[A-Z_]+)`", readme))
    defined = {options.env_name(f.name) for cls in s.SETTINGS for f in dataclasses.fields(cls)}
    assert defined <= documented
    assert documented - defined == {s.ADMIN_TOKEN_ENV}, "every PLAYGROUND_* name in the README is read by the code"


def test_every_setting_has_a_flag_an_environment_variable_and_help():
    parser = options.parser_with(*s.SETTINGS)
    flags = {option for action in parser._actions for option in action.option_strings}
    for cls in s.SETTINGS:
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in flags, f.name
            assert f.metadata.get("help"), f"{f.name} has no help text"
    assert "--no-trainer" in flags


@pytest.fixture
def clean_env(monkeypatch):
    for cls in s.SETTINGS:
        for f in dataclasses.fields(cls):
            monkeypatch.delenv(options.env_name(f.name), raising=False)
    return monkeypatch


def parse(*argv):
    args = options.parser_with(*s.SETTINGS).parse_args(list(argv))
    return {cls: options.settings_from(args, cls) for cls in s.SETTINGS}


def test_flag_then_environment_then_default(clean_env):
    assert parse()[s.RoundSettings] == s.RoundSettings()
    clean_env.setenv("PLAYGROUND_BETA", "0.3")
    clean_env.setenv("PLAYGROUND_LORA_DROPOUT", "0.1")
    clean_env.setenv("PLAYGROUND_TRUST_REMOTE_CODE", "yes")
    clean_env.setenv("PLAYGROUND_SEED", "11")
    got = parse("--beta", "0.2")
    assert got[s.RoundSettings].beta == 0.2 and got[s.RoundSettings].lora_dropout == 0.1
    assert got[s.ModelSettings].trust_remote_code is True and got[s.Sampling].seed == 11
    assert parse("--target-modules", "q_proj", "o_proj")[s.RoundSettings].target_modules == ["q_proj", "o_proj"]
    assert parse("--target-modules", "q_proj,o_proj")[s.RoundSettings].target_modules == ["q_proj", "o_proj"]


def test_bad_values_are_refused_with_a_message(clean_env, capsys):
    clean_env.setenv("PLAYGROUND_EPOCHS", "two")
    with pytest.raises(SystemExit):
        parse()
    assert "PLAYGROUND_EPOCHS='two'" in capsys.readouterr().err
    clean_env.delenv("PLAYGROUND_EPOCHS")
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        parse("--epochs", "0")
    with pytest.raises(ValueError, match="lora_dropout"):
        s.RoundSettings(lora_dropout=1.5)
    with pytest.raises(ValueError, match="Unknown precision"):
        s.ModelSettings(precision="fast")


def test_the_trainer_process_gets_every_setting(tiny_models, tmp_path):
    from playground.core import Playground

    rounds = s.RoundSettings(min_pairs=3, lora_r=4, target_modules=["q_proj", "k_proj"], train_seed=9, beta=0.3)
    models = s.ModelSettings(
        base=str(tiny_models["base"]),
        sft=str(tiny_models["sft"]),
        data_dir=str(tmp_path),
        precision="float",
        trust_remote_code=True,
    )
    command = Playground(models, rounds).trainer_command()
    given = json.loads(command[command.index("--settings-json") + 1])
    assert options.from_dict(s.RoundSettings, given["rounds"]) == rounds
    sent = options.from_dict(s.ModelSettings, given["models"])
    assert (sent.base, sent.sft, sent.data_dir, sent.precision, sent.trust_remote_code) == (
        str(tiny_models["base"]),
        str(tiny_models["sft"]),
        str(tmp_path),
        "float",
        True,
    )


def test_a_vllm_url_means_the_vllm_runtime_and_a_base_server_needs_it(clean_env):
    assert s.ModelSettings(vllm_url="http://gpu-box:8000").runtime == "vllm"  # auto + a server given
    assert s.ModelSettings(runtime="torch").runtime == "torch"
    with pytest.raises(ValueError, match="--base-vllm-url.*--runtime vllm"):
        s.ModelSettings(runtime="onnx", base_vllm_url="http://gpu-box:8001")
    clean_env.setenv("PLAYGROUND_VLLM_URL", "http://gpu-box:8000")
    clean_env.setenv("PLAYGROUND_VLLM_PYTHON", "/opt/vllm/bin/python")
    models = parse("--base-vllm-url", "http://gpu-box:8001")[s.ModelSettings]
    assert (models.runtime, models.vllm_url, models.base_vllm_url, models.vllm_python) == (
        "vllm",
        "http://gpu-box:8000",
        "http://gpu-box:8001",
        "/opt/vllm/bin/python",
    )


def test_the_cli_shows_a_message_for_a_mistake_and_a_traceback_for_a_bug(monkeypatch, capsys, tmp_path):
    from playground import cli
    from playground.cli import parser

    assert cli.main(["evaluate", "--epochs", "0", "--data-dir", str(tmp_path)]) == 2  # a mistake: one line, exit 2
    assert "epochs must be at least 1" in capsys.readouterr().err

    def broken(args):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(parser, "cmd_options", broken)
    with pytest.raises(ValueError, match="internal invariant"):  # a bug keeps its traceback
        cli.main(["options"])
