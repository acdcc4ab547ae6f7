"""Running the app on uvicorn: from the CLI (`serve_forever`) or in a background thread (`BackgroundServer`,
for tests and the load benchmark) on a socket bound beforehand, so port 0 gives a free port."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn

from serving.app import build_app
from serving.config import BatchingOptions, ServerConfig


def make_config(model_base_path: Path, poll_seconds: float = 1.0, num_threads: int = 2, **batching) -> ServerConfig:
    return ServerConfig(Path(model_base_path), BatchingOptions(**batching), file_system_poll_wait_seconds=poll_seconds,
                        num_threads=num_threads)


def _uvicorn_config(app, host: str, port: int) -> uvicorn.Config:
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info", lifespan="on")
    # No access log (uvicorn still writes one when the root logger has handlers): the app logs its own lines,
    # with request texts PII-masked.
    logging.getLogger("uvicorn.access").disabled = True
    return config


def serve_forever(model_base_path: Path, host: str, port: int, poll_seconds: float = 1.0, num_threads: int = 2,
                  **batching) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(make_config(model_base_path, poll_seconds, num_threads, **batching))
    uvicorn.Server(_uvicorn_config(app, host, port)).run()


class BackgroundServer:
    """`with BackgroundServer(config) as server: requests.get(server.url + "/healthz")` on 127.0.0.1."""

    def __init__(self, config: ServerConfig):
        self.app = build_app(config)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(_uvicorn_config(self.app, "127.0.0.1", 0))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        while not self.server.started:  # the lifespan's first scan loads the models first
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped while starting (see its log)")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.socket.close()
