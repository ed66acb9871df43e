"""What every command shares: the playgrounds it opened (closed when it ends, so their durable copy is flushed)
and the data set its model options pick."""

from __future__ import annotations

from ..options import settings_from
from ..settings import ModelSettings, RoundSettings

EXIT_USAGE = 2


_opened = []  # the playgrounds a command opened: closed when it ends, so their durable copy is flushed


def opened(playground):
    _opened.append(playground)
    return playground


def close_opened() -> None:
    while _opened:
        _opened.pop().close()


def playground_from(args, rounds: RoundSettings | None = None):
    from ..core import Playground

    return opened(Playground(settings_from(args, ModelSettings), rounds))


def data_set_of(args):
    """The data set the model options pick, without binding or restoring anything (unlike a Playground)."""
    from ..data_sets import DataSet
    from ..models import resolve_preset

    models = settings_from(args, ModelSettings)
    preset = resolve_preset(models.preset, models.base, models.sft)
    return models, DataSet.for_models(models.resolved_data_dir(), preset.base, preset.sft)
