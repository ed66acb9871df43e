"""How many torch threads the trainer runs with: every core while nothing else uses them, its share while the
server decodes.

The server and the trainer share the machine. A fixed split leaves half the cores idle through most of a round
(nobody is chatting most of the time), and all of them would slow every answer down while people chat. So before
each stage and after each forward/backward pass the trainer looks at how much CPU the other processes used since
it last looked, and takes `idle_train_threads` when that is under a fraction of a core, `train_threads` when not.
A pass is seconds long, so chatting that starts mid-round shares the cores for at most about one pass.
"""

from __future__ import annotations

import time

IDLE_BELOW_CORES = 0.3  # others' CPU use (in cores) under which the machine counts as idle: a page's polling is ~0.05


class SpareCores:
    """Measures the CPU the rest of the machine uses and sets torch's threads to match (see the module)."""

    def __init__(self, share: int, idle: int):
        import psutil

        self.share, self.idle = share, max(idle, share)
        self._psutil, self._me = psutil, psutil.Process()
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        busy = self._psutil.cpu_times()
        total_busy = sum(busy) - busy.idle - getattr(busy, "iowait", 0.0)
        mine = self._me.cpu_times()
        return time.monotonic(), total_busy, mine.user + mine.system

    def others_cores(self) -> float:
        """Cores the other processes kept busy, on average, since the last call."""
        then, busy_then, mine_then = self._last
        self._last = now, busy_now, mine_now = self._sample()
        wall = now - then
        if wall <= 0:
            return 0.0
        return max(0.0, (busy_now - busy_then) - (mine_now - mine_then)) / wall

    def adjust(self) -> int:
        """Set torch's threads for what comes next; returns them."""
        import torch

        wanted = self.idle if self.others_cores() < IDLE_BELOW_CORES else self.share
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        return wanted


def spare_cores_callback(cores: SpareCores):
    """A transformers TrainerCallback that re-decides the threads after every forward/backward pass."""
    from transformers import TrainerCallback

    class MatchSpareCores(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            cores.adjust()

        def on_step_end(self, args, state, control, **kwargs):
            cores.adjust()

    return MatchSpareCores()
