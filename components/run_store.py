"""Where runs keep their state: the run record (run.json), the artifact cache index, the locks, and
storage errors turned into one sentence. The runner (components/runner.py) drives them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from components.base import Artifact, PipelineError, UsageError, utc_now

RUN_FILE = "run.json"
RUN_LOCK_FILE = ".run.lock"
CACHE_INDEX_DIR = ".cache"
# Errors of the file system rather than of the code: reported in one sentence naming the path.
STORAGE_ERRNOS = {errno.ENOSPC: "no space is left on the device", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission is denied",
                  errno.EPERM: "permission is denied"}


def storage_error(error: BaseException, where: Path) -> PipelineError | None:
    """A full, read-only or unwritable file system as one sentence naming the path (None for other errors).

    The path is the error's own, else `where` (a write to an open file does not name its file).

    Read-only and permission problems are usage errors (choose another --runs-root or --run-dir); a full
    disk is not, and the run resumes once there is space.
    """
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRNOS:
        return None
    where = error.filename or where
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return PipelineError(f"cannot write {where}: {STORAGE_ERRNOS[error.errno]}; free some space and run "
                             "again to resume (finished components are kept)")
    return UsageError(f"cannot write {where}: {STORAGE_ERRNOS[error.errno]}; choose a writable --runs-root or "
                      "--run-dir")


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool):
    """Hold an exclusive lock on `path` (created if needed); yields False at once if `wait` is off and it is held.

    The kernel releases the lock when the process ends, however it ends (SIGKILL included)."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield True


@dataclass
class ComponentRecord:
    """What run.json keeps about one component of one run."""

    status: str = "pending"  # pending | running | done | cached | failed | skipped | interrupted
    fingerprint: str = ""
    duration_s: float = 0.0
    artifacts: dict = field(default_factory=dict)  # output name -> uri
    metrics: dict = field(default_factory=dict)  # output name -> metrics
    error: str = ""


class RunRecord:
    """run.json: the status of a whole run, rewritten atomically after every change."""

    def __init__(self, run_dir: Path, profile: str, config: dict):
        self.run_dir = run_dir
        self.path = run_dir / RUN_FILE
        previous = load_run_record(run_dir)
        self.data = {
            "run_id": run_dir.name,
            "profile": profile,
            "config": config,
            "status": "running",
            "started_at": utc_now(),
            "finished_at": None,
            "components": carried_over(previous),
        }

    def set_component(self, name: str, record: ComponentRecord) -> None:
        self.data["components"][name] = dataclasses.asdict(record)
        self.save()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished_at"] = utc_now()
        self.save()

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


def carried_over(previous: dict | None) -> dict:
    """The components of an earlier start of this run folder. One still `running` was killed with its process
    (this one holds the folder's lock, so nothing else runs it): it is recorded as `interrupted`, never shown
    as running while this start has not reached it."""
    components = dict((previous or {}).get("components", {}))
    for name, record in components.items():
        if record.get("status") == "running":
            components[name] = {**record, "status": "interrupted"}
    return components


def load_run_record(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


class ArtifactCache:
    """Finds complete artifacts by fingerprint across all runs under the runs root.

    The index is one small file per fingerprint (`<runs root>/.cache/<fingerprint>.json`) that
    points at artifact folders; an entry is trusted only if every artifact it points at still
    loads and carries the same fingerprint.
    """

    def __init__(self, runs_root: Path, log=lambda message: None):
        self.index_dir = runs_root / CACHE_INDEX_DIR
        self.log = log

    def lookup(self, fingerprint: str, outputs: dict[str, str]) -> dict[str, Artifact] | None:
        try:
            entry = json.loads((self.index_dir / f"{fingerprint}.json").read_text())
        except (OSError, ValueError):
            return None
        found = {}
        for output_name in outputs:
            uri = entry.get(output_name)
            artifact = Artifact.load(Path(uri)) if uri else None
            if artifact is None or artifact.fingerprint != fingerprint:
                return None
            damage = artifact.damaged_file()
            if damage is not None:
                self.log(f"  cached {artifact.uri} is not reused: {damage}")
                return None
            found[output_name] = artifact
        return found

    @contextlib.contextmanager
    def computing(self, fingerprint: str, log=lambda message: None):
        """Held while one run computes `fingerprint`; another run needing it waits here, then finds it cached."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.index_dir / f"{fingerprint}.lock", wait=False) as free:
            if free:
                yield
                return
        log(f"  waiting: another run is computing {fingerprint[:12]}")
        with exclusive_lock(self.index_dir / f"{fingerprint}.lock", wait=True):
            yield

    def store(self, fingerprint: str, artifacts: dict[str, Artifact]) -> None:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.index_dir / f".{fingerprint}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({k: str(a.uri.resolve()) for k, a in artifacts.items()}))
        os.replace(tmp, self.index_dir / f"{fingerprint}.json")
