"""Run the web app exactly as a user does (`python app.py ...`) in a subprocess on a free local port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from playground.processes import free_port

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll until predicate() returns something truthy; return it, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class AppProcess:
    process: subprocess.Popen
    url: str
    data_dir: Path
    log: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_app(models: dict[str, Path], data_dir: Path, *, args=(), env=None, timeout: float = 240) -> AppProcess:
    """Start app.py with the given tiny models; returns once the page answers HTTP."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}-app.log"
    command = [
        sys.executable,
        "app.py",
        "--base",
        str(models["base"]),
        "--sft",
        str(models["sft"]),
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV, **(env or {})}
        )
    app = AppProcess(process, f"http://127.0.0.1:{port}/", data_dir, log)

    def answers():
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with {process.returncode}:\n{app.log_tail()}")
        try:
            with urllib.request.urlopen(app.url, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(answers, timeout, "the app to answer HTTP")
    except BaseException:
        app.stop()
        raise
    return app
