"""The local runner: DAG ordering, fingerprints, the artifact cache, the run record.

The runner writes each artifact into a hidden temporary folder and renames it into place only
when the component has finished, so a crash never leaves a half-written artifact that looks complete.

Caching: a component's fingerprint hashes its name, version, parameters, the fingerprints of its
input artifacts, the project's source files and the computing libraries' versions. Before
executing, the runner looks for a complete artifact with the same fingerprint in any run under the
runs root; if every output is found, the component is skipped (a cache hit) and the run records
where the cached artifacts live. A failed run therefore resumes at the failed component when `run`
is called again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.base import (
    Artifact,
    Component,
    ExecutionContext,
    UsageError,
    canonical_json,
    params_to_dict,
    sha256_of,
    utc_now,
)

RUN_FILE = "run.json"
CACHE_INDEX_DIR = ".cache"

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
    return sha256_of(canonical_json({
        "component": component.name,
        "version": component.version,
        "parameters": component.fingerprint_parameters(params),
        "inputs": input_fingerprints,
        "extra": component.fingerprint_extra(params),
        "code": code_fingerprint(),
    }))


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
            "started_at": utc_now(),
            "finished_at": None,
            "components": previous.get("components", {}) if previous else {},
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
                if not isinstance(error, Exception):  # Ctrl-C, SystemExit: recorded, never turned into a result
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
                created_at=utc_now(), component_version=node.component.version)
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
