"""A vLLM server this process starts for `--runtime vllm` without `--vllm-url`, and stops on exit.

vLLM lives in its own virtual environment (it pins its own torch and transformers): `PLAYGROUND_VLLM_PYTHON` names
that environment's interpreter; unset, the `python` beside a `vllm` on PATH, else the project's `.venv-vllm/`
(what setup.sh makes). The server is started as a module (`python -m vllm.entrypoints.openai.api_server`: the
`vllm` command of the CPU build fails), with LoRA enabled and runtime adapter loading allowed, on a free port of
this machine only.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...processes import free_port
from .. import RuntimeUnavailable

log = logging.getLogger(__name__)

PYTHON_ENV = "PLAYGROUND_VLLM_PYTHON"
PROJECT_VENV = Path(__file__).resolve().parents[3] / ".venv-vllm"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts


@dataclass
class VllmOptions:
    """How `--runtime vllm` reaches its servers (settings: --vllm-url, --base-vllm-url, --vllm-python)."""

    url: str | None = None  # the SFT model's server; None: start one here
    base_url: str | None = None  # the base model's server; None: the base arm stays on a local runtime
    python: str | None = None  # the interpreter of vLLM's environment, to start a server
    max_lora_rank: int = 8  # the rounds' LoRA rank (a server started here takes adapters up to it)
    max_model_len: int = 2048
    log_dir: Path | None = None  # where a started server writes its log
    connect_wait: float = 120.0  # seconds a server given by URL may still be starting before the app gives up
    startup_timeout: float = 900.0  # a first start on a CPU compiles kernels: minutes


def find_python(explicit: str | None = None) -> str:
    """The interpreter of the environment with vLLM, or RuntimeUnavailable saying how to get one."""
    choice = explicit or os.environ.get(PYTHON_ENV)
    if choice:
        if not (shutil.which(choice) or Path(choice).is_file()):
            raise RuntimeUnavailable(
                f"{PYTHON_ENV}={choice} is not an interpreter. Fix: point it at the python of "
                f"the virtual environment where vLLM is installed."
            )
        return choice
    command = shutil.which("vllm")
    if command and (Path(command).parent / "python").is_file():
        return str(Path(command).parent / "python")
    if (PROJECT_VENV / "bin" / "python").is_file():
        return str(PROJECT_VENV / "bin" / "python")
    raise RuntimeUnavailable(
        f"--runtime vllm needs a vLLM server: none given (--vllm-url) and no vLLM environment found to start one. "
        f"Fix: ./setup.sh makes {PROJECT_VENV.name}/ with vLLM's CPU build, or set {PYTHON_ENV} to the python of an "
        f"environment with vLLM, or pass --vllm-url URL of a running server."
    )


def lora_rank_limit(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds adapters of `rank`."""
    return next((r for r in LORA_RANKS if r >= rank), rank)


class VllmServer:
    """One `vllm` OpenAI-compatible server process for one model folder, on 127.0.0.1."""

    def __init__(
        self,
        python: str,
        model_dir: str,
        *,
        device: str = "cpu",
        max_lora_rank: int = 8,
        max_model_len: int = 2048,
        log_path: Path | None = None,
        startup_timeout: float = 900.0,
    ):
        self.python, self.model_dir, self.device = python, str(model_dir), device
        self.max_lora_rank, self.max_model_len = lora_rank_limit(max_lora_rank), max_model_len
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._restarting: threading.Thread | None = None
        self._restart_lock = threading.Lock()  # every failing request asks for a restart: one happens
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # float32 on a CPU: the torch runtime's numbers (bf16 is emulated on CPUs without AVX-512-BF16).
        dtype = "float32" if self.device == "cpu" else "auto"
        command = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_dir,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            "3",  # v0 (zeros), serving, the next
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            dtype,
            "--disable-uvicorn-access-log",
            # No sampling defaults from the model's generation_config.json (its repetition penalty, ...): the
            # requests send neutral values anyway (neutral.VLLM), this keeps a request sent by hand the same.
            "--generation-config",
            "vllm",
        ]
        if self.device == "cpu":
            # vLLM 0.32 on a CPU dies when a seeded request's prefill is split over steps (its CPU generator
            # "does not use offset"), which chunked prefill does under load: every prefill in one step instead.
            command += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(self.max_model_len, 4096))]
        return command

    def environment(self) -> dict:
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", TQDM_DISABLE="1")
        env.pop("PYTHONPATH", None)  # the app's packages must not shadow vLLM's (its own transformers)
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: plenty for a few small models' turns
            env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        return env

    def start(self) -> VllmServer:
        """Start the server and wait until it answers (RuntimeUnavailable with its last log lines if it cannot)."""
        started = time.monotonic()
        self.launch()
        self.wait_ready()
        log.info("The vLLM server is up after %.0f s.", time.monotonic() - started)
        return self

    def launch(self) -> VllmServer:
        """Start the server process on a free port, without waiting for it (`url` is known at once)."""
        self.port = free_port()
        self.starts += 1
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        log.info("Starting a vLLM server for %s on port %d (log: %s) ...", self.model_dir, self.port, self.log_path)
        try:
            self.process = subprocess.Popen(
                self.command(), env=self.environment(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as error:
            raise RuntimeUnavailable(f"Could not start vLLM with {self.python}: {error}") from error
        finally:
            if output is not subprocess.DEVNULL:
                output.close()
        return self

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeUnavailable(
                    f"The vLLM server exited while starting (code {self.process.returncode}): {self.last_log_lines()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeUnavailable(
            f"The vLLM server did not answer within {self.startup_timeout:.0f} s: {self.last_log_lines()}"
        )

    def last_log_lines(self, n: int = 3) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "no log"
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(lines[-n:]) + f" (log: {self.log_path})"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart_soon(self) -> None:
        """Start the server again in the background after it died (requests fail with a message meanwhile)."""
        with self._restart_lock:
            if self.alive() or self.restarting:
                return
            self._restarting = threading.Thread(target=self._restart, name="vllm-restart", daemon=True)
            log.warning(
                "The vLLM server exited (code %s); starting it again.",
                self.process.returncode if self.process else None,
            )
            self._restarting.start()

    def _restart(self) -> None:
        try:
            self.stop()
            self.start()
        except Exception as error:
            log.error("The vLLM server could not be started again: %s", error)

    @property
    def restarting(self) -> bool:
        return self._restarting is not None and self._restarting.is_alive()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:  # its own process group: vLLM's engine processes go with it
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
