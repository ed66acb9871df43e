"""The `onnx` serving runtime: ONNX Runtime GenAI in worker processes (build.py builds the ONNX copies,
adapters.py converts each version's adapter, worker.py is the decode process, client.py the server's end)."""
