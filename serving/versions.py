"""Which model versions exist under the base path, and which one each model serves.

TF Serving's layout and default version policy: `<base>/<name>/<version>/`, the newest version of
each model is served, and the base path is polled so a new version is picked up without a restart.
A version folder is served only once it is complete: its `manifest.json` (written last by the
Exporter; `assets.extra/manifest.json` in a pushed SavedModel) lists every file with its size, and
every listed file is present with that size. A half-written folder is skipped until it is complete;
at load the SHA-256 of every file is checked too, and a version that fails to load is reported
(state END with its error) while the previous version keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from models.files import file_sha256
from schemas.artifacts import PUSHED_EXTRAS, BundleFiles
from serving.backends import Backend, load_backend
from serving.errors import NotFound

log = logging.getLogger("fintune.serving")


def manifest_files(version_dir: Path) -> dict[Path, dict] | None:
    """{file on disk: its manifest entry}, or None when the folder has no manifest (yet)."""
    if BundleFiles(version_dir).manifest_file.is_file():  # a bundle copied as it is
        entries = BundleFiles(version_dir).manifest()["files"]
        return {version_dir / name: entry for name, entry in entries.items()}
    extras = BundleFiles(version_dir / PUSHED_EXTRAS)
    if extras.manifest_file.is_file():  # the Exporter's push: the SavedModel's files at the top, the rest in extras
        entries = extras.manifest()["files"]
        return {(version_dir / name.removeprefix("saved_model/") if name.startswith("saved_model/")
                 else extras.file(name)): entry for name, entry in entries.items()}
    return None


def incomplete_reason(version_dir: Path) -> str | None:
    """Why the folder cannot be served yet (None: it is complete)."""
    try:
        files = manifest_files(version_dir)
    except (OSError, ValueError, KeyError):
        return "its manifest.json is unreadable (still being written?)"
    if files is None:
        return "it has no manifest.json"
    for path, entry in files.items():
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return f"{path.relative_to(version_dir)} is missing or not yet its full size"
    return None


def verify_checksums(version_dir: Path) -> None:
    for path, entry in manifest_files(version_dir).items():
        if file_sha256(path) != entry["sha256"]:
            raise ValueError(f"{path.relative_to(version_dir)} does not match its SHA-256 in manifest.json")


def numbered_versions(model_dir: Path) -> list[int]:
    return sorted(int(d.name) for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit())


@dataclass
class ServedVersion:
    """A loaded version: its backend, and the single thread that runs it (LiteRT interpreters are not thread-safe)."""

    name: str
    version: int
    path: Path
    backend: Backend
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "fintune-model"))
    batcher: object = None  # set by the app: a serving.batching.MicroBatcher on `executor`


class ModelRegistry:
    """The served version of every model under the base path; `poll()` scans it and loads what is new."""

    def __init__(self, base_path: Path, num_threads: int = 2,
                 on_loaded: Callable[[ServedVersion], None] = lambda served: None):
        self.base_path = Path(base_path)
        self.num_threads = num_threads
        self.on_loaded = on_loaded
        self.served: dict[str, ServedVersion] = {}
        self.failed: dict[tuple[str, int], str] = {}  # (name, version) -> why it did not load
        self.polled = False  # true after the first complete scan
        self._lock = threading.Lock()  # one poll at a time

    def poll(self) -> None:
        with self._lock:
            names = sorted(d.name for d in self.base_path.iterdir()
                           if d.is_dir() and not d.name.startswith(".") and ":" not in d.name)
            for name in names:
                self._poll_model(name)
            self.polled = True

    def _poll_model(self, name: str) -> None:
        current = self.served.get(name)
        for version in reversed(numbered_versions(self.base_path / name)):  # newest first
            if current is not None and version <= current.version:
                return
            if (name, version) in self.failed:
                continue
            path = self.base_path / name / str(version)
            reason = incomplete_reason(path)
            if reason is not None:
                log.info("model %s version %d not served yet: %s", name, version, reason)
                continue
            try:
                verify_checksums(path)
                served = ServedVersion(name, version, path, load_backend(path, self.num_threads))
            except Exception as error:  # a bad version must not take the server (or the old version) down
                self.failed[(name, version)] = f"{type(error).__name__}: {error}".splitlines()[0]
                log.error("model %s version %d failed to load: %s", name, version, self.failed[(name, version)])
                continue
            self.on_loaded(served)
            self.served[name] = served  # one assignment: requests see the old version or the new one
            log.info("serving model %s version %d (%s) from %s", name, version, served.backend.kind, path)
            return

    def get(self, name: str, version: int | None = None) -> ServedVersion:
        served = self.served.get(name)
        if served is None or (version is not None and version != served.version):
            spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise NotFound(f"Servable not found for request: {spec}")
        return served

    def version_status(self, name: str, version: int | None = None) -> list[dict]:
        """TF Serving's `model_version_status` list (the served version, and versions that failed to load)."""
        rows = [(v, why) for (n, v), why in self.failed.items() if n == name]
        if name in self.served:
            rows.append((self.served[name].version, None))
        if version is not None:
            rows = [(v, why) for v, why in rows if v == version]
        if not rows:
            self.get(name, version)  # raises the NotFound TF Serving gives
        return [{"version": str(v), "state": "AVAILABLE" if why is None else "END",
                 "status": {"error_code": "OK" if why is None else "UNKNOWN", "error_message": why or ""}}
                for v, why in sorted(rows, reverse=True)]
