"""The server's settings: TF Serving's batching knobs, request limits, polling."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BatchingOptions:
    """TF Serving's `--enable_batching` / `batching_parameters_file` knobs, same names and meaning."""

    enabled: bool = True  # off: every request runs as its own batch of one
    max_batch_size: int = 8  # the most texts one model call takes (also the most one request may send)
    batch_timeout_micros: int = 2000  # how long the first request of a batch waits for company
    max_enqueued_batches: int = 16  # queue room, in batches; beyond it a request is refused with 503

    def __post_init__(self):
        if self.max_batch_size < 1 or self.batch_timeout_micros < 0 or self.max_enqueued_batches < 1:
            raise ValueError("max_batch_size and max_enqueued_batches must be >= 1, batch_timeout_micros >= 0")

    @property
    def effective_batch_size(self) -> int:
        return self.max_batch_size if self.enabled else 1


@dataclass
class Limits:
    """What one request may ask for; more is a 400 (or 413 for the body), before any model work."""

    max_body_bytes: int = 1 << 20
    max_text_chars: int = 8000
    max_new_tokens: int = 256
    request_timeout_s: float = 120.0  # waiting longer for a model answers 504

    def __post_init__(self):
        if min(self.max_body_bytes, self.max_text_chars, self.max_new_tokens) < 1 or self.request_timeout_s <= 0:
            raise ValueError("limits must be positive")


@dataclass
class ServerConfig:
    """Everything `build_app` needs."""

    model_base_path: Path
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    limits: Limits = field(default_factory=Limits)
    file_system_poll_wait_seconds: float = 1.0  # TF Serving's flag: how often the base path is scanned; 0 = once
    num_threads: int = 2  # LiteRT interpreter threads per model
