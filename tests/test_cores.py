"""The trainer's threads follow what the rest of the machine uses (training/cores.py), on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from playground.training.cores import SpareCores


def test_a_busy_process_beside_the_trainer_takes_it_down_to_its_share():
    before = torch.get_num_threads()
    cores = SpareCores(share=1, idle=2)
    try:
        time.sleep(1.0)
        quiet = cores.others_cores()
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            cores.others_cores()  # from here on the spinner runs the whole interval
            time.sleep(1.5)
            busy = cores.others_cores()
            time.sleep(1.0)
            assert cores.adjust() == 1 and torch.get_num_threads() == 1
        finally:
            spinner.kill()
            spinner.wait()
        assert busy > 0.7 and busy - quiet > 0.5, (quiet, busy)
        cores.others_cores = lambda: 0.1  # a quiet machine: a page polling
        assert cores.adjust() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
