"""The component contract: artifacts, components, and the local runner with fingerprint caching.

A component declares what it consumes and produces at the top of its module (TFX style):

    class Transform(Component):
        name = "transform"
        inputs = {"examples": "Examples", "base_model": "BaseModel"}
        outputs = {"datasets": "Datasets"}
        Params = TransformParams

and does its work in `execute(ctx)`, writing files under `ctx.output_dir(name)`.

Every output is an *artifact*: a folder holding the component's files plus `artifact.json`
(type, producer, parameters, input fingerprints, metrics, created-at). The runner writes each
artifact into a hidden temporary folder and renames it into place only when the component has
finished, so a crash never leaves a half-written artifact that looks complete.

Caching: a component's fingerprint hashes its name, version, parameters and the fingerprints of
its input artifacts. Before executing, the runner looks for a complete artifact with the same
fingerprint in any run under the runs root; if every output is found, the component is skipped
(a cache hit) and the run records where the cached artifacts live. A failed run therefore
resumes at the failed component when `run` is called again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ARTIFACT_FILE = "artifact.json"
RUN_FILE = "run.json"
CACHE_INDEX_DIR = ".cache"


class PipelineError(Exception):
    """A problem a user can fix (bad input, bad configuration): one sentence, no traceback."""


class UsageError(PipelineError):
    """A wrong command line or configuration: the CLI exits with code 2."""


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def params_to_dict(params: Any) -> dict:
    if params is None:
        return {}
    return dataclasses.asdict(params)  # nested settings groups become dicts too


def _utc_now() -> str:
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

    def path(self, *parts: str) -> Path:
        return self.uri.joinpath(*parts)

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


def _field_docs(params_cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Rows of `parameter_docs`; a nested settings group lists its fields as group.field."""
    import typing

    hints = typing.get_type_hints(params_cls)
    rows = []
    for f in dataclasses.fields(params_cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(_field_docs(hints[f.name], f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((prefix + f.name, type_name, default, f.metadata.get("doc", "")))
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


@dataclass
class Node:
    """A component instance in the pipeline with its wiring: input name -> (node, output)."""

    component: Component
    wiring: dict[str, tuple[str, str]]

    @property
    def name(self) -> str:
        return self.component.name


def topological_order(nodes: list[Node]) -> list[Node]:
    """Nodes sorted so every node comes after the nodes it reads from (Kahn's algorithm)."""
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        for input_name, (upstream, output) in node.wiring.items():
            if upstream not in by_name:
                raise ValueError(f"{node.name}.{input_name} reads from unknown component {upstream}")
            if output not in by_name[upstream].component.outputs:
                raise ValueError(f"{node.name}.{input_name} reads unknown output {upstream}.{output}")
    remaining = {n.name: {u for u, _ in n.wiring.values()} for n in nodes}
    ordered: list[Node] = []
    while remaining:
        ready = [name for name in by_name if name in remaining and not remaining[name]]
        if not ready:
            raise ValueError(f"the pipeline has a cycle among {sorted(remaining)}")
        for name in ready:
            ordered.append(by_name[name])
            del remaining[name]
            for deps in remaining.values():
                deps.discard(name)
    return ordered


# The code a component's output depends on: every source and data file of these packages. Coarse
# on purpose (any edit recomputes everything): a finer import graph would miss lazy imports, and a
# stale artifact (say, text masked by an older PII rule) is worse than a recomputed one.
CODE_PACKAGES = ("components", "models", "schemas", "data")
CODE_SUFFIXES = (".py", ".json")
LIBRARIES = ("tensorflow", "keras", "keras-hub", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert",
             "transformers", "tokenizers", "gguf", "numpy", "pandas", "scikit-learn", "phonenumbers", "python-stdnum")


def source_digest(root: Path, packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """SHA-256 over the names and bytes of the source and data files under `root/<package>`."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> dict[str, Any]:
    """The project's source digest and the versions of the libraries that compute results (once a process)."""
    from importlib import metadata

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"source_sha256": source_digest(Path(__file__).resolve().parents[1]), "libraries": versions}


def fingerprint_of(component: Component, params: Any, input_fingerprints: dict[str, str]) -> str:
    return sha256_of(_canonical_json({
        "component": component.name,
        "version": component.version,
        "parameters": component.fingerprint_parameters(params),
        "inputs": input_fingerprints,
        "extra": component.fingerprint_extra(params),
        "code": code_fingerprint(),
    }))


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes ('' when it cannot be read: the component reports that itself)."""
    from models.files import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return ""


@dataclass
class ComponentRecord:
    """What run.json keeps about one component of one run."""

    status: str = "pending"  # pending | running | done | cached | failed | skipped
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
            "started_at": _utc_now(),
            "finished_at": None,
            "components": previous.get("components", {}) if previous else {},
        }

    def set_component(self, name: str, record: ComponentRecord) -> None:
        self.data["components"][name] = dataclasses.asdict(record)
        self.save()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished_at"] = _utc_now()
        self.save()

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


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

    def __init__(self, runs_root: Path):
        self.index_dir = runs_root / CACHE_INDEX_DIR

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
            found[output_name] = artifact
        return found

    def store(self, fingerprint: str, artifacts: dict[str, Artifact]) -> None:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.index_dir / f".{fingerprint}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({k: str(a.uri.resolve()) for k, a in artifacts.items()}))
        os.replace(tmp, self.index_dir / f"{fingerprint}.json")


@dataclass
class RunResult:
    run_dir: Path
    status: str
    executed: list[str]
    cached: list[str]
    failed: str | None
    artifacts: dict[str, dict[str, Artifact]]
    error: BaseException | None = None


class LocalRunner:
    """Executes pipeline nodes in dependency order in this process."""

    def __init__(self, nodes: list[Node], runs_root: Path, log=print):
        self.nodes = topological_order(nodes)
        self.runs_root = Path(runs_root)
        self.cache = ArtifactCache(self.runs_root)
        self.log = log

    def run(self, run_dir: Path, params: dict[str, Any], profile: str = "", config: dict | None = None,
            only: str | None = None, start_from: str | None = None, force: bool = False) -> RunResult:
        names = [n.name for n in self.nodes]
        for chosen in (only, start_from):  # before anything is written: a usage error starts no run
            if chosen is not None and chosen not in names:
                raise UsageError(f"unknown component '{chosen}'; choose from: {', '.join(names)}")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        forced = self._forced_nodes(only, start_from, force)
        record = RunRecord(run_dir, profile, config or {})
        record.save()
        produced: dict[str, dict[str, Artifact]] = {}
        executed, cached = [], []
        for node in self.nodes:
            inputs, input_fps = self._resolve_inputs(node, produced)
            if inputs is None:  # an upstream output is missing: only possible with --only
                record.set_component(node.name, ComponentRecord(status="skipped"))
                if node.name == only:
                    missing = sorted({u for u, _ in node.wiring.values() if u not in produced})
                    record.finish("failed")
                    raise UsageError(f"--only {only} needs the output of {', '.join(missing)} in the cache; "
                                     f"run the pipeline (or --only {missing[0]}) with the same settings first")
                continue
            node_params = params.get(node.name)
            fingerprint = fingerprint_of(node.component, node_params, input_fps)
            hit = None if node.name in forced else self.cache.lookup(fingerprint, node.component.outputs)
            if hit is None:
                hit = self._reuse_in_place(run_dir, node, fingerprint) if node.name not in forced else None
            if hit is not None:
                produced[node.name] = hit
                cached.append(node.name)
                record.set_component(node.name, ComponentRecord(
                    status="cached", fingerprint=fingerprint,
                    artifacts={k: str(a.uri) for k, a in hit.items()},
                    metrics={k: a.metrics for k, a in hit.items()}))
                self.log(f"[{node.name}] cached ({fingerprint[:12]})")
                continue
            if only is not None and node.name != only:
                # --only runs one component; the others must come from the cache.
                record.set_component(node.name, ComponentRecord(status="skipped"))
                continue
            self.log(f"[{node.name}] running")
            started = time.monotonic()
            record.set_component(node.name, ComponentRecord(status="running", fingerprint=fingerprint))
            try:
                artifacts = self._execute(node, node_params, inputs, input_fps, fingerprint, run_dir)
            except BaseException as error:  # noqa: BLE001 - recorded, then re-raised or reported
                record.set_component(node.name, ComponentRecord(
                    status="failed", fingerprint=fingerprint, duration_s=time.monotonic() - started,
                    error=f"{type(error).__name__}: {error}"))
                record.finish("failed")
                (run_dir / "error.log").write_text(traceback.format_exc())
                if isinstance(error, KeyboardInterrupt):
                    raise
                return RunResult(run_dir, "failed", executed, cached, node.name, produced, error)
            produced[node.name] = artifacts
            executed.append(node.name)
            self.cache.store(fingerprint, artifacts)
            record.set_component(node.name, ComponentRecord(
                status="done", fingerprint=fingerprint, duration_s=round(time.monotonic() - started, 3),
                artifacts={k: str(a.uri) for k, a in artifacts.items()},
                metrics={k: a.metrics for k, a in artifacts.items()}))
            self.log(f"[{node.name}] done in {time.monotonic() - started:.1f}s")
        record.finish("succeeded")
        return RunResult(run_dir, "succeeded", executed, cached, None, produced)

    def _forced_nodes(self, only, start_from, force) -> set[str]:
        names = [n.name for n in self.nodes]
        if force and only:
            return {only}
        if force:
            return set(names)
        if start_from:
            return set(names[names.index(start_from):])
        return set()

    @staticmethod
    def _resolve_inputs(node: Node, produced):
        inputs, fps = {}, {}
        for input_name, (upstream, output) in node.wiring.items():
            artifact = produced.get(upstream, {}).get(output)
            if artifact is None:
                if input_name in node.component.optional_inputs:
                    inputs[input_name] = None
                    continue
                return None, None
            inputs[input_name] = artifact
            fps[input_name] = artifact.fingerprint
        return inputs, fps

    @staticmethod
    def _reuse_in_place(run_dir: Path, node: Node, fingerprint: str) -> dict[str, Artifact] | None:
        found = {}
        for output_name in node.component.outputs:
            artifact = Artifact.load(run_dir / node.name / output_name)
            if artifact is None or artifact.fingerprint != fingerprint:
                return None
            found[output_name] = artifact
        return found

    def _execute(self, node, node_params, inputs, input_fps, fingerprint, run_dir) -> dict[str, Artifact]:
        component_dir = run_dir / node.name
        component_dir.mkdir(parents=True, exist_ok=True)
        tmp_dirs = {}
        for output_name in node.component.outputs:
            for stale in component_dir.glob(f".tmp-{output_name}-*"):  # left by a killed process
                shutil.rmtree(stale, ignore_errors=True)
            tmp = component_dir / f".tmp-{output_name}-{os.getpid()}"
            tmp.mkdir()
            tmp_dirs[output_name] = tmp
        ctx = ExecutionContext(node.component, node_params, inputs, run_dir, tmp_dirs, self.log, fingerprint)
        try:
            metrics = node.component.execute(ctx) or {}
        except BaseException:
            for tmp in tmp_dirs.values():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        artifacts = {}
        for output_name, artifact_type in node.component.outputs.items():
            final = component_dir / output_name
            artifact = Artifact(
                type=artifact_type, uri=tmp_dirs[output_name], producer=node.name,
                fingerprint=fingerprint, parameters=params_to_dict(node_params),
                input_fingerprints=input_fps, metrics=metrics.get(output_name, {}),
                created_at=_utc_now(), component_version=node.component.version)
            artifact.write()
            if final.exists():  # an older, different artifact (e.g. --force): replace it whole
                stale = component_dir / f".stale-{output_name}-{os.getpid()}"
                os.replace(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp_dirs[output_name], final)
            artifact.uri = final
            artifacts[output_name] = artifact
        shutil.rmtree(component_dir / f".work-{fingerprint[:16]}", ignore_errors=True)
        return artifacts
