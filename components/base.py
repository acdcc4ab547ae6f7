"""The component contract: artifacts, components, parameters, and what a component sees while it runs.

A component declares what it consumes and produces at the top of its module (TFX style):

    class Transform(Component):
        name = "transform"
        inputs = {"examples": "Examples", "base_model": "BaseModel"}
        outputs = {"datasets": "Datasets"}
        Params = TransformParams

and does its work in `execute(ctx)`, writing files under `ctx.output_dir(name)`.

Every output is an *artifact*: a folder holding the component's files plus `artifact.json`
(type, producer, parameters, input fingerprints, metrics, created-at). Running components in
order, fingerprinting and caching them is the runner's job (`components/runner.py`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ARTIFACT_FILE = "artifact.json"


class PipelineError(Exception):
    """A problem a user can fix (bad input, bad configuration): one sentence, no traceback."""


class UsageError(PipelineError):
    """A wrong command line or configuration: the CLI exits with code 2."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def params_to_dict(params: Any) -> dict:
    if params is None:
        return {}
    return dataclasses.asdict(params)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass
class Artifact:
    """One output folder of one component execution."""

    type: str
    uri: Path
    producer: str
    fingerprint: str
    parameters: dict = field(default_factory=dict)
    input_fingerprints: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created_at: str = ""
    component_version: str = ""
    # relative path -> {"size", "mtime_ns", "sha256"} of every file, recorded when the artifact is made;
    # None for an artifact.json without the record (then it cannot be verified, so it is not reused).
    files: dict | None = None

    def path(self, *parts: str) -> Path:
        return self.uri.joinpath(*parts)

    def record_files(self) -> None:
        """Record the size, modification time and SHA-256 of every file in the artifact folder."""
        from models.files import file_sha256

        self.files = {}
        for path in sorted(self.uri.rglob("*")):
            relative = path.relative_to(self.uri).as_posix()
            if path.is_file() and not relative.startswith(ARTIFACT_FILE):
                stat = path.stat()
                self.files[relative] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                        "sha256": file_sha256(path)}

    def damaged_file(self) -> str | None:
        """Why the folder's files are not the ones recorded (None when they are).

        Cheap when nothing changed: a file whose size and modification time are as recorded is trusted;
        one whose modification time moved is hashed and must still match its SHA-256. (A change that keeps
        both size and modification time, e.g. bit rot under a restored mtime, is not seen.)
        """
        from models.files import file_sha256

        if self.files is None:
            return "it has no record of its files"
        for relative, record in self.files.items():
            path = self.uri / relative
            try:
                stat = path.stat()
                if stat.st_size != record["size"]:
                    return f"{relative} changed size"
                if stat.st_mtime_ns != record["mtime_ns"] and file_sha256(path) != record["sha256"]:
                    return f"{relative} no longer matches its SHA-256"
            except OSError:
                return f"{relative} is missing or unreadable"
        return None

    def to_json(self) -> dict:
        return {
            "type": self.type,
            "producer": self.producer,
            "component_version": self.component_version,
            "fingerprint": self.fingerprint,
            "parameters": self.parameters,
            "input_fingerprints": self.input_fingerprints,
            "metrics": self.metrics,
            "created_at": self.created_at,
            "files": self.files,
        }

    def write(self) -> None:
        """Write artifact.json via a temp file + rename, so it is either whole or absent."""
        tmp = self.uri / (ARTIFACT_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.uri / ARTIFACT_FILE)

    @classmethod
    def load(cls, uri: Path) -> Artifact | None:
        """The artifact at `uri`, or None when it is absent, half-written or unreadable."""
        meta_path = Path(uri) / ARTIFACT_FILE
        try:
            meta = json.loads(meta_path.read_text())
            return cls(
                type=meta["type"],
                uri=Path(uri),
                producer=meta["producer"],
                fingerprint=meta["fingerprint"],
                parameters=meta.get("parameters", {}),
                input_fingerprints=meta.get("input_fingerprints", {}),
                metrics=meta.get("metrics", {}),
                created_at=meta.get("created_at", ""),
                component_version=meta.get("component_version", ""),
                files=meta.get("files"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


class Component:
    """Base class: subclasses declare name, version, inputs, outputs, Params and `execute`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    # input name -> artifact type; the pipeline wires each input to an upstream output.
    inputs: ClassVar[dict[str, str]] = {}
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    # output name -> artifact type
    outputs: ClassVar[dict[str, str]] = {}
    Params: ClassVar[type | None] = None
    # Read another component's parameter section instead of one of its own (the BaseEvaluator shares the
    # Evaluator's, so the two cannot disagree on the rows they score).
    params_section: ClassVar[str | None] = None

    @property
    def section(self) -> str:
        """The `--set SECTION.key=value` section this component's parameters come from."""
        return self.params_section or self.name

    def execute(self, ctx: ExecutionContext) -> dict[str, dict] | None:
        """Do the work; return {output name: metrics} (or None for no metrics)."""
        raise NotImplementedError(f"component {self.name} has no execute()")

    def fingerprint_parameters(self, params: Any) -> dict:
        """The parameters the fingerprint hashes (all of them, unless a component says otherwise)."""
        return params_to_dict(params)

    def fingerprint_extra(self, params: Any) -> dict:
        """What else decides the output besides parameters and inputs (e.g. the content of a source file)."""
        return {}

    @classmethod
    def parameter_docs(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, one-line doc) for every parameter, from the dataclass."""
        if cls.Params is None:
            return []
        return _field_docs(cls.Params)


def _field_docs(params_cls: type) -> list[tuple[str, str, Any, str]]:
    """Rows of `parameter_docs`."""
    rows = []
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f.name, type_name, default, f.metadata.get("doc", "")))
    return rows


@dataclass
class ExecutionContext:
    """What a component sees while it runs."""

    component: Component
    params: Any
    inputs: dict[str, Artifact | None]
    run_dir: Path
    _output_dirs: dict[str, Path]
    log: Any = print

    fingerprint: str = ""

    def output_dir(self, name: str) -> Path:
        return self._output_dirs[name]

    @property
    def work_dir(self) -> Path:
        """Scratch space that survives a crash of this execution (checkpoints live here)."""
        path = self.run_dir / self.component.name / f".work-{self.fingerprint[:16]}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tensorboard_dir(self) -> Path:
        """Where this component writes TensorBoard events: outside the artifact, so it is live."""
        return self.run_dir / "tensorboard" / self.component.name

    def input(self, name: str) -> Artifact:
        artifact = self.inputs.get(name)
        if artifact is None:
            raise PipelineError(f"{self.component.name} needs its input '{name}', which is missing")
        return artifact


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes ('' when it cannot be read: the component reports that itself)."""
    from models.files import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return ""
