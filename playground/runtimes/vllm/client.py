"""The `vllm` serving runtime: one model served by vLLM's OpenAI-compatible server, here or elsewhere.

Each row is one streamed `/v1/completions` request (vLLM batches concurrent requests itself, so rows and visitors
run at once): the prompt goes as token ids rendered and fitted here (the same input as on the other runtimes),
with the row's `seed`, and comes back as token ids (`return_token_ids`), so the stop rules, the streaming and the
recorded token counts are decoding.RowStreamer's, as everywhere. A row whose answer ended by our rules closes its
stream (vLLM aborts the request); the base arm's `Q:`/`A:` stops also go to the server as `stop`.

Adapters: a version is loaded into the server under its name (`POST /v1/load_lora_adapter`, v<N>, from a folder
the server can read) and the preference row asks for `model="v<N>"`; detached with `/v1/unload_lora_adapter`. A
server that restarted has forgotten them: the runtime loads its adapters again before the next request.

The SFT row asks for `v0`, an adapter whose weights are all zero (the SFT model exactly), not for the plain model:
vLLM 0.32's CPU LoRA kernels index the adapter slots with -1 for a request without one, which picks the LAST slot,
so in a batch with an adapter request the plain request was answered with whatever adapter sat there (measured:
the SFT column wrote the preference column's tokens). With every request naming an adapter, no row reads -1.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from .. import DecodeRow, ModelRuntime, ServingError, neutral

log = logging.getLogger(__name__)

PLAIN = "v0"  # the zero adapter: version 0, the SFT model itself


class VllmRuntime(ModelRuntime):
    name = "vllm"
    concurrent = True

    def __init__(self, url: str, server=None, label: str = "SFT", plain_adapter: str | None = None, wait: float = 0.0):
        """url: the server (with or without /v1); server: the server.VllmServer this runtime started (it is
        restarted if it dies, and stopped on close); plain_adapter: the folder of a zero adapter the rows without
        an adapter run with (zero_adapter.py; None: they ask for the model itself); wait: seconds to wait for a
        server that is still starting (refusing connections) before giving up."""
        import httpx

        self.server, self.label = server, label
        self.url = url.rstrip("/").removesuffix("/v1")
        self.client = httpx.Client(timeout=httpx.Timeout(300.0, connect=5.0), limits=httpx.Limits(max_connections=64))
        self.adapters: dict[str, str] = {}  # name -> path, loaded in the server
        self._suspect = False  # a request failed: check the server (and reload adapters) before the next one
        self._lock = threading.Lock()
        self.model_id, self.max_context = self._served_model(wait)
        self._suspect, self.problem = False, None  # waiting for a server that was starting is not a failure
        self.plain = None
        if plain_adapter:
            try:
                self.attach(PLAIN, plain_adapter)
                self.plain = PLAIN
            except (RuntimeError, ServingError) as error:  # e.g. a server elsewhere that cannot read our folder
                log.warning(
                    "The vLLM server at %s did not take the zero adapter (%s): the SFT arm asks for the "
                    "model itself, which vLLM's CPU build answers wrongly in a batch with an adapter "
                    "request; GPU builds are not affected.",
                    self.url,
                    error,
                )

    # ---- the server ------------------------------------------------------------------------------------------
    def _endpoint(self, path: str) -> str:
        if self.server is not None and self.server.port and self.server.url != self.url:
            self.url = self.server.url  # started again on another port
        return f"{self.url}{path}"

    def _request(self, method: str, path: str, **kwargs):
        import httpx

        try:
            return self.client.request(method, self._endpoint(path), **kwargs)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error

    def _unreachable(self, error) -> ServingError:
        self._suspect = True
        if self.server is not None and not self.server.alive():
            self.server.restart_soon()
        if self.server is not None and self.server.restarting:
            what = "it exited and is starting again (a minute or more)"
        elif self.server is not None:
            what = "it is not answering"
        else:
            what = "check that it runs (--vllm-url)"
        message = (
            f"The vLLM server of the {self.label} model at {self.url} cannot be reached "
            f"({type(error).__name__}: {error}); {what}. The other arms keep answering."
        )
        self.problem = message
        return ServingError(message)

    def _served_model(self, wait: float = 0.0) -> tuple[str, int | None]:
        """The model the server serves (its base, not an adapter) and its context length."""
        import time

        import httpx

        deadline = time.monotonic() + wait
        while True:
            try:
                response = self._request("GET", "/v1/models")
                break
            except ServingError as error:
                if not isinstance(error.__cause__, httpx.ConnectError) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        if response.status_code != 200:
            raise ServingError(
                f"The vLLM server at {self.url} answered {response.status_code} to /v1/models: {response.text[:200]}"
            )
        models = response.json()["data"]
        base = next((m for m in models if not m.get("parent")), models[0])
        return base["id"], base.get("max_model_len")

    def _recover(self) -> None:
        """After a failure: the server answers again, and holds every adapter this runtime loaded."""
        with self._lock:
            if not self._suspect:
                return
            self.model_id, self.max_context = self._served_model()
            served = {m["id"] for m in self._request("GET", "/v1/models").json()["data"]}
            for name, path in self.adapters.items():
                if name not in served:
                    self._load(name, path)
                    log.info("Loaded adapter %s into the vLLM server again.", name)
            self._suspect = False
            self.problem = None

    # ---- adapters --------------------------------------------------------------------------------------------
    def _load(self, name: str, path: str) -> None:
        body = {"lora_name": name, "lora_path": path}
        response = self._request("POST", "/v1/load_lora_adapter", json=body)
        if response.status_code == 400 and "already been loaded" in response.text:
            # A server that outlived an earlier run of the app still holds this name: load this folder over it.
            response = self._request("POST", "/v1/load_lora_adapter", json=body | {"load_inplace": True})
        if response.status_code != 200:
            raise RuntimeError(f"the vLLM server refused it ({response.status_code}: {response.text[:300]})")

    def attach(self, name: str, path: str) -> None:
        if self._suspect:
            self._recover()
        path = str(Path(path).resolve()) if Path(path).exists() else path  # the server's working folder is not ours
        self._load(name, path)
        self.adapters[name] = path

    def detach(self, name: str) -> None:
        self.adapters.pop(name, None)
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code not in (200, 404) and "not" not in response.text.lower():
            raise RuntimeError(f"the vLLM server did not unload {name} ({response.status_code}: {response.text[:200]})")

    def adapter_hint(self, path: str) -> str:
        return (
            " The vLLM server must be able to read that folder (the same path on its machine), and run with "
            "--enable-lora and a --max-lora-rank of at least the adapter's rank."
        )

    # ---- decoding --------------------------------------------------------------------------------------------
    def decode(self, ids, rows: list[DecodeRow], sampling, streamer, cancel) -> None:
        if self._suspect:
            self._recover()
        errors: list[BaseException] = []

        def run(index: int, row: DecodeRow) -> None:
            try:
                self._stream_row(index, ids, row, sampling, streamer, cancel)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(i, row), daemon=True) for i, row in enumerate(rows)]
        for thread in threads[1:]:
            thread.start()
        run(0, rows[0])
        for thread in threads[1:]:
            thread.join()
        if errors:
            raise errors[0]
        self.problem = None

    def _body(self, ids, row: DecodeRow, sampling, stops) -> dict:
        body = {
            **neutral.VLLM,  # not the model's defaults, which the server would fill in
            "model": row.adapter or self.plain or self.model_id,
            "prompt": list(ids),
            "max_tokens": sampling.max_new_tokens,
            "stream": True,
            "return_token_ids": True,
            "seed": row.seed,
            "skip_special_tokens": True,
        }
        if sampling.greedy:
            body["temperature"] = 0.0
        else:
            body |= {"temperature": sampling.temperature, "top_p": sampling.top_p}
        # Stops that cannot match inside an answer's leading blank lines (prompting.cut_at_stop) end the request
        # on the server too; the streamer still cuts the text, so the stop string stays in the output for it.
        server_stops = [s for s in stops if s.strip()]
        if server_stops:
            body |= {"stop": server_stops, "include_stop_str_in_output": True}
        return body

    def _stream_row(self, index: int, ids, row: DecodeRow, sampling, streamer, cancel) -> None:
        try:
            self._stream_once(index, ids, row, sampling, streamer, cancel)
        except _AdapterForgotten:  # the server restarted since the adapter was loaded: load it again, once
            self._suspect = True
            self._recover()
            self._stream_once(index, ids, row, sampling, streamer, cancel, retry=False)

    def _stream_once(self, index: int, ids, row: DecodeRow, sampling, streamer, cancel, retry=True) -> None:
        import httpx

        body = self._body(ids, row, sampling, streamer.stops)
        try:
            with self.client.stream("POST", self._endpoint("/v1/completions"), json=body) as response:
                if response.status_code != 200:
                    response.read()
                    if retry and response.status_code == 404 and row.adapter in self.adapters:
                        raise _AdapterForgotten()
                    self._refused(response)
                for line in response.iter_lines():
                    if cancel.is_set() or streamer.finished[index]:
                        return  # leaving the stream aborts the request on the server
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "choices" not in chunk:  # the server failed mid-answer: it streams its error instead
                        self._suspect = True
                        self.problem = (
                            f"The vLLM server of the {self.label} model failed while answering: "
                            f"{str(chunk.get('error', chunk))[:300]}"
                        )
                        raise ServingError(self.problem)
                    choice = chunk["choices"][0]
                    for token in choice.get("token_ids") or ():
                        streamer.token(index, token)
                    reason = choice.get("finish_reason")
                    if reason and not streamer.finished[index]:
                        stopped = reason == "stop" and isinstance(choice.get("stop_reason"), str)
                        streamer.finish(index, "length" if reason == "length" else ("stop" if stopped else "eos"))
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error

    def _refused(self, response) -> None:
        detail = response.text[:300]
        message = f"The vLLM server of the {self.label} model refused the request ({response.status_code}: {detail})"
        self.problem = message
        raise ServingError(message)

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()


class _AdapterForgotten(Exception):
    """The server does not know an adapter this runtime loaded (it restarted)."""
