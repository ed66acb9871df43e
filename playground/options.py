"""Settings as command-line flags and environment variables: each setting of settings.py is a flag (through
transformers' HfArgumentParser), defaulting to its PLAYGROUND_* environment variable, else its default; and the
README's options table, generated from the same definitions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing

from .errors import UserError
from .settings import ENV_PREFIX, SETTINGS


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def from_dict(cls, values: dict):
    """An instance from a dict, ignoring keys the class does not have (e.g. from a newer or older version)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _from_env(text: str, kind) -> object:
    """An environment variable's text as the field's type."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        origin = typing.get_origin(kind)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise UserError(f"expected true or false, got {text!r}")
        return lowered in ("1", "true", "yes", "on")
    if origin is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    return kind(text)


def add_settings(parser, *classes) -> None:
    """Add the options of these settings classes to `parser` (an `HfArgumentParser`), each defaulting to its
    environment variable."""
    for cls in classes:
        parser._add_dataclass_arguments(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            for action in parser._actions:
                if action.dest == f.name and action.help and "[env" not in action.help:
                    action.help += f" [env {name}]"
            if os.environ.get(name) not in (None, ""):
                try:
                    value = _from_env(os.environ[name], hints[f.name])
                except (TypeError, ValueError) as error:
                    parser.error(f"environment variable {name}={os.environ[name]!r}: {error}")
                parser.set_defaults(**{f.name: value})


def settings_from(args: argparse.Namespace, cls):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parser_class():
    """transformers' dataclass-aware ArgumentParser (imported on first use: it is not free)."""
    from transformers import HfArgumentParser

    return HfArgumentParser


def parser_with(*classes, **kwargs) -> argparse.ArgumentParser:
    parser = parser_class()(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    add_settings(parser, *classes)
    return parser


# Defaults computed at start-up, in words for the options table.
_COMPUTED_DEFAULTS = {
    "serve_threads": "half the CPU cores",
    "train_threads": "half the CPU cores",
    "idle_train_threads": "all the CPU cores",
    "target_modules": "`q_proj,v_proj`",
    "host": "`127.0.0.1`",
    "port": "`7860`",
    "persist": "`/data` on a Space with a writable volume there; else none",
    "pairs_per_voter": "`4` on a Space; else `0`",
}


def options_table(classes=SETTINGS) -> str:
    """Every setting as a Markdown table (flag, environment variable, default, meaning): the README's options
    table is this text (`python -m playground options` prints it; a test compares the two)."""
    lines = ["| option | environment | default | what it does |", "|---|---|---|---|"]
    for cls in classes:
        for f in dataclasses.fields(cls):
            flag = "--no-trainer" if f.name == "trainer" else "--" + f.name.replace("_", "-")
            if f.name in _COMPUTED_DEFAULTS:
                default = _COMPUTED_DEFAULTS[f.name]
            elif f.default is None:
                default = "unset"
            else:
                default = f"`{json.dumps(f.default).strip(chr(34))}`"
            lines.append(f"| `{flag}` | `{env_name(f.name)}` | {default} | {f.metadata.get('help', '')} |")
    return "\n".join(lines) + "\n"
