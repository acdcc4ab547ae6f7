"""The local runner: DAG ordering, fingerprints, the artifact cache, the run record.

The runner writes each artifact into a hidden temporary folder and renames it into place only
when the component has finished, so a crash never leaves a half-written artifact that looks complete.

Caching: a component's fingerprint hashes its name, version, parameters, the fingerprints of its
input artifacts, the project's source files and the computing libraries' versions. Before
executing, the runner looks for a complete artifact with the same fingerprint in any run under the
runs root; if every output is found, the component is skipped (a cache hit) and the run records
where the cached artifacts live. A failed run therefore resumes at the failed component when `run`
is called again. Every artifact records the size, modification time and SHA-256 of its files; one
whose files changed since is not reused but recomputed.

Concurrency: one process at a time works in a run folder (a second is refused in one sentence), and a
fingerprint is computed by one run at a time: a second run that needs it waits, then finds it cached.
A run folder on a full or read-only file system fails in one sentence that names the path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import time
import traceback
from dataclasses import dataclass
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

# The run's stored state lives in run_store; these names stay importable from here (CLI, tests).
from components.run_store import (  # noqa: F401
    CACHE_INDEX_DIR,
    RUN_FILE,
    RUN_LOCK_FILE,
    STORAGE_ERRNOS,
    ArtifactCache,
    ComponentRecord,
    RunRecord,
    exclusive_lock,
    load_run_record,
    storage_error,
)


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


def params_for(node: Node, params: dict[str, Any]) -> Any:
    """A node's parameters: its component's section (the BaseEvaluator reads the evaluator's)."""
    return params.get(node.component.section)


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
class RunResult:
    run_dir: Path
    status: str
    executed: list[str]
    cached: list[str]
    failed: str | None
    artifacts: dict[str, dict[str, Artifact]]
    error: BaseException | None = None


def remove_stale_temporaries(run_dir: Path, node: Node) -> None:
    """Delete the temporary and replaced output folders an earlier, killed start left in this run folder
    (this process holds the folder's lock, so no other process is writing them)."""
    component_dir = run_dir / node.name
    for output_name in node.component.outputs:
        for stale in [*component_dir.glob(f".tmp-{output_name}-*"), *component_dir.glob(f".stale-{output_name}-*")]:
            shutil.rmtree(stale, ignore_errors=True)


class LocalRunner:
    """Executes pipeline nodes in dependency order in this process."""

    def __init__(self, nodes: list[Node], runs_root: Path, log=print):
        self.nodes = topological_order(nodes)
        self.runs_root = Path(runs_root)
        self.cache = ArtifactCache(self.runs_root, log)
        self.log = log

    def run(self, run_dir: Path, params: dict[str, Any], profile: str = "", config: dict | None = None,
            only: str | None = None, start_from: str | None = None, force: bool = False) -> RunResult:
        names = [n.name for n in self.nodes]
        for chosen in (only, start_from):  # before anything is written: a usage error starts no run
            if chosen is not None and chosen not in names:
                raise UsageError(f"unknown component '{chosen}'; choose from: {', '.join(names)}")
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(run_dir / RUN_LOCK_FILE, wait=False) as free:
                if not free:
                    raise UsageError(f"run folder {run_dir} is in use by another run; wait for it to finish, or "
                                     "give this one another --run-dir")
                return self._run(run_dir, params, profile, config, only, self._forced_nodes(only, start_from, force))
        except OSError as error:  # bookkeeping (run.json, the cache index) on a full or read-only disk
            converted = storage_error(error, run_dir)
            if converted is None:
                raise
            raise converted from None

    def _run(self, run_dir: Path, params: dict[str, Any], profile: str, config: dict | None, only: str | None,
             forced: set[str]) -> RunResult:
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
            node_params = params_for(node, params)
            fingerprint = fingerprint_of(node.component, node_params, input_fps)
            hit = self._cached(run_dir, node, fingerprint, forced)
            if hit is None and (only is None or node.name == only):
                with self.cache.computing(fingerprint, self.log):
                    hit = self._cached(run_dir, node, fingerprint, forced)  # another run may have just made it
                    if hit is None:
                        outcome = self._run_component(run_dir, node, node_params, inputs, input_fps, fingerprint,
                                                      record)
                        if isinstance(outcome, BaseException):
                            record.finish("failed")
                            return RunResult(run_dir, "failed", executed, cached, node.name, produced, outcome)
                        produced[node.name] = outcome
                        executed.append(node.name)
                        continue
            if hit is not None:
                remove_stale_temporaries(run_dir, node)  # a killed start's half-written output, never read
                produced[node.name] = hit
                cached.append(node.name)
                record.set_component(node.name, ComponentRecord(
                    status="cached", fingerprint=fingerprint,
                    artifacts={k: str(a.uri) for k, a in hit.items()},
                    metrics={k: a.metrics for k, a in hit.items()}))
                self.log(f"[{node.name}] cached ({fingerprint[:12]})")
                continue
            # --only runs one component; the others must come from the cache.
            record.set_component(node.name, ComponentRecord(status="skipped"))
        record.finish("succeeded")
        return RunResult(run_dir, "succeeded", executed, cached, None, produced)

    def _cached(self, run_dir: Path, node: Node, fingerprint: str, forced: set[str]) -> dict[str, Artifact] | None:
        if node.name in forced:
            return None
        return self.cache.lookup(fingerprint, node.component.outputs) or self._reuse_in_place(run_dir, node,
                                                                                              fingerprint)

    def _run_component(self, run_dir, node, node_params, inputs, input_fps, fingerprint, record):
        """Execute one component and record it; its artifacts, or the error it failed with."""
        self.log(f"[{node.name}] running")
        started = time.monotonic()
        record.set_component(node.name, ComponentRecord(status="running", fingerprint=fingerprint))
        try:
            artifacts = self._execute(node, node_params, inputs, input_fps, fingerprint, run_dir)
            self.cache.store(fingerprint, artifacts)
        except BaseException as error:  # noqa: BLE001 - recorded, then re-raised or reported
            reported = storage_error(error, run_dir / node.name) or error
            with contextlib.suppress(OSError):  # on a full disk the record may not be writable either
                (run_dir / "error.log").write_text(traceback.format_exc())
            record.set_component(node.name, ComponentRecord(
                status="failed", fingerprint=fingerprint, duration_s=time.monotonic() - started,
                error=f"{type(reported).__name__}: {reported}"))
            if not isinstance(error, Exception):  # Ctrl-C, SystemExit: recorded, never turned into a result
                record.finish("failed")
                raise
            return reported
        record.set_component(node.name, ComponentRecord(
            status="done", fingerprint=fingerprint, duration_s=round(time.monotonic() - started, 3),
            artifacts={k: str(a.uri) for k, a in artifacts.items()},
            metrics={k: a.metrics for k, a in artifacts.items()}))
        self.log(f"[{node.name}] done in {time.monotonic() - started:.1f}s")
        return artifacts

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
            if artifact is None or artifact.fingerprint != fingerprint or artifact.damaged_file() is not None:
                return None
            found[output_name] = artifact
        return found

    def _execute(self, node, node_params, inputs, input_fps, fingerprint, run_dir) -> dict[str, Artifact]:
        component_dir = run_dir / node.name
        component_dir.mkdir(parents=True, exist_ok=True)
        tmp_dirs = {}
        remove_stale_temporaries(run_dir, node)
        for output_name in node.component.outputs:
            tmp = component_dir / f".tmp-{output_name}-{os.getpid()}"
            tmp.mkdir()
            tmp_dirs[output_name] = tmp
        ctx = ExecutionContext(node.component, node_params, inputs, run_dir, tmp_dirs, self.log, fingerprint)
        artifacts = {}
        try:
            metrics = node.component.execute(ctx) or {}
            for output_name, artifact_type in node.component.outputs.items():
                artifact = Artifact(
                    type=artifact_type, uri=tmp_dirs[output_name], producer=node.name,
                    fingerprint=fingerprint, parameters=params_to_dict(node_params),
                    input_fingerprints=input_fps, metrics=metrics.get(output_name, {}),
                    created_at=utc_now(), component_version=node.component.version)
                artifact.record_files()
                artifact.write()
                artifacts[output_name] = artifact
        except BaseException:  # the component, or writing its record, failed: no temporary folder stays
            for tmp in tmp_dirs.values():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        for output_name, artifact in artifacts.items():
            final = component_dir / output_name
            if final.exists():  # an older, different artifact (e.g. --force): replace it whole
                stale = component_dir / f".stale-{output_name}-{os.getpid()}"
                os.replace(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp_dirs[output_name], final)
            artifact.uri = final
        shutil.rmtree(component_dir / f".work-{fingerprint[:16]}", ignore_errors=True)
        return artifacts
